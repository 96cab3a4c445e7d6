"""`build_meta_arch`: the one selector (dino.use_mcr / ibot.use_mcr) and its errors."""

import pathlib

import pytest
import torch

from dinov2.train.ssl_meta_arch import SSLMetaArch
from dinov2.utils.config import load_config
from simdinov2.train.build import build_meta_arch, select_meta_arch
from simdinov2.train.meta_arch import SimDINOMetaArch

CONFIGS = pathlib.Path(__file__).parents[3] / "configs"
DINOV2_TINY = CONFIGS / "tiny" / "dinov2_test.yaml"
SIMDINO_TINY = CONFIGS / "tiny" / "simdinov2_test.yaml"


def test_the_selector_builds_each_objective():
    torch.manual_seed(0)
    dinov2 = build_meta_arch(load_config(DINOV2_TINY))
    simdino = build_meta_arch(load_config(SIMDINO_TINY))
    assert type(dinov2) is SSLMetaArch and type(simdino) is SimDINOMetaArch
    assert "last_layer.weight_g" in dict(dinov2.student["dino_head"].named_parameters())
    assert simdino.student["dino_head"].last_layer is None
    assert set(dinov2.loss_weights) == {"dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss"}
    assert set(simdino.loss_weights) == {"dino_mcr_loss", "ibot_comp_loss"}


@pytest.mark.parametrize(
    "recipe, expected",
    [
        ("simdinov2_vitl16.yaml", SimDINOMetaArch),
        ("simdinov2_vitb16.yaml", SimDINOMetaArch),
        ("simdino_vitb16.yaml", SimDINOMetaArch),
        ("simdino_vitl16.yaml", SimDINOMetaArch),
        ("dino_vitb16.yaml", SSLMetaArch),
        ("tiny/simdinov2_digits.yaml", SimDINOMetaArch),
        ("tiny/simdinov2_digits_demo.yaml", SimDINOMetaArch),
        ("tiny/simdino_digits.yaml", SimDINOMetaArch),
        ("dinov2_vitl16.yaml", SSLMetaArch),
    ],
)
def test_every_recipe_loads_and_selects_its_objective(recipe, expected):
    """Loads strictly and passes the consistency checks (the full-size models are not built)."""
    assert select_meta_arch(load_config(CONFIGS / recipe)) is expected


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["dino.use_mcr=true"], r"\(dino.use_mcr, ibot.use_mcr\)=\(True, False\) is not one of"),
        (["ibot.use_mcr=true"], r"\(dino.use_mcr, ibot.use_mcr\)=\(False, True\) is not one of"),
        (["dino.use_mcr=1", "ibot.use_mcr=1"], r"dino.use_mcr=1: expected true or false"),
        (["dino.remove_last_layer=true"], r"dino.remove_last_layer=True only applies to SimDINO"),
        (["ibot.remove_last_layer=true"], r"ibot.remove_last_layer=True only applies to SimDINO"),
    ],
)
def test_inconsistent_dinov2_settings_name_the_keys(overrides, match):
    with pytest.raises(ValueError, match=match):
        build_meta_arch(load_config(DINOV2_TINY, overrides))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["dino.remove_last_layer=false"], r"dino.remove_last_layer=false.*set dino.remove_last_layer=true"),
        (["train.centering=sinkhorn_knopp"], r"train.centering='sinkhorn_knopp'.*only valid value is 'none'"),
        (["dino.koleo_loss_weight=0.1"], r"dino.koleo_loss_weight=0.1.*only valid value is 0"),
        (["dino.head_normalize=false"], r"dino.head_normalize=false.*unit features"),
        (["ibot.separate_head=true", "ibot.remove_last_layer=false"], r"ibot.remove_last_layer=false"),
        (["dino.mcr.expa_type=2"], r"dino.mcr.expa_type=2: expected one of \[0, 1\]"),
    ],
)
def test_inconsistent_simdino_settings_name_the_keys(overrides, match):
    with pytest.raises(ValueError, match=match):
        build_meta_arch(load_config(SIMDINO_TINY, overrides))


def test_dinov2_head_normalize_false_drops_the_normalisation_before_the_prototypes():
    """Table 5's "no last-layer normalization" perturbation is a valid DINOv2 config."""
    model = build_meta_arch(load_config(DINOV2_TINY, ["dino.head_normalize=false"]))
    assert model.student["dino_head"].normalize is False and model.teacher["dino_head"].normalize is False
    assert build_meta_arch(load_config(DINOV2_TINY)).student["dino_head"].normalize is True
