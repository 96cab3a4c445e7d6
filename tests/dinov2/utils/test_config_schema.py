"""Every config key has a type and allowed values (dinov2/configs/schema.py) that load_config enforces.

Probes of the fault, each accepted by load_config before the schema and failing later, unnamed or not at all:
`train.batch_size_per_gpu=abc` (TypeError in training), `=-4` (math domain error), `optim.base_lr=abc`
(TypeError), `student.patch_size=0` (ZeroDivisionError), and silently accepted `optim.base_lr=-1`,
`checkpointing.period_iterations=-1`, `train.max_bad_image_fraction=2`.
"""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dinov2.configs import load_packaged_config
from dinov2.configs import schema as config_schema
from dinov2.utils.config import ConfigError, _leaves, load_config

ROOT = Path(__file__).resolve().parents[3]
RECIPES = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs" / "tiny").glob("*.yaml"))


def test_schema_covers_exactly_the_default_keys() -> None:
    default_keys = set(_leaves(OmegaConf.to_container(load_packaged_config("ssl_default_config"))))
    without_rule = sorted(default_keys - set(config_schema.SCHEMA))
    assert not without_rule, f"add a rule for each of {without_rule} to SCHEMA in dinov2/configs/schema.py"
    stale = sorted(set(config_schema.SCHEMA) - default_keys)
    assert not stale, f"SCHEMA in dinov2/configs/schema.py has rules for keys the defaults lack: {stale}"


def test_a_default_key_without_rule_fails_every_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(config_schema.SCHEMA, "optim.clip_grad")
    with pytest.raises(ConfigError, match=r"optim.clip_grad: no schema entry; add its rule to dinov2/configs/schema"):
        load_config(None)


PROBES = [
    ("train.batch_size_per_gpu=abc", "train.batch_size_per_gpu='abc': expected an integer >= 1"),
    ("train.batch_size_per_gpu=-4", "train.batch_size_per_gpu=-4: expected an integer >= 1"),
    ("optim.base_lr=abc", "optim.base_lr='abc': expected a number >= 0"),
    ("student.patch_size=0", "student.patch_size=0: expected an integer >= 1"),
    ("optim.base_lr=-1", "optim.base_lr=-1: expected a number >= 0"),
    ("checkpointing.period_iterations=-1", "checkpointing.period_iterations=-1: expected an integer >= 0"),
    ("train.max_bad_image_fraction=2", "train.max_bad_image_fraction=2: expected a number in [0, 1]"),
]


@pytest.mark.parametrize(("override", "message"), PROBES)
def test_issue_probes_name_key_value_and_allowed(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, [override])
    assert message in str(raised.value)


def test_bad_values_in_a_recipe_file_are_all_named(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("student:\n  patch_size: 0\noptim:\n  base_lr: -1\n")
    with pytest.raises(ConfigError, match=r"3 invalid config value") as raised:
        load_config(recipe, ["train.centering=center"])
    text = str(raised.value)
    assert "student.patch_size=0: expected an integer >= 1" in text
    assert "optim.base_lr=-1: expected a number >= 0" in text
    assert "train.centering='center': expected one of ['centering', 'sinkhorn_knopp', 'none']" in text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("student.depth=0", "student.depth=0: expected null or an integer >= 1"),
        ("crops.global_crops_scale=[0.5,0.2]", "ascending order"),
        ("crops.local_crops_scale=[0.1]", "a list of 2 items, each a number in (0, 1]"),
        ("ibot.mask_ratio_min_max=[0.1,1.5]", "ibot.mask_ratio_min_max=[0.1, 1.5]"),
        ("student.arch=vit_huge", "expected one of ['vit_base', 'vit_giant2', 'vit_large', 'vit_small', 'vit_tiny']"),
        ("student.ffn_layer=gelu", "student.ffn_layer='gelu': expected one of ['mlp', 'swiglu'"),
        ("compute_precision.student.backbone.mixed_precision.param_dtype=fp8", "one of ['fp32', 'fp16', 'bf16']"),
        ("compute_precision.teacher.dino_head.sharding_strategy=HYBRID", "'NO_SHARD', 'SHARD_GRAD_OP', 'FULL_SHARD'"),
        ("student.qkv_bias=1", "student.qkv_bias=1: expected true or false"),
        ("dino.mcr.expa_type=true", "dino.mcr.expa_type=True: expected one of [0, 1]"),
        ("optim.base_lr=.nan", "optim.base_lr=nan: expected a number >= 0"),
        ("optim.epochs=2.5", "optim.epochs=2.5: expected an integer >= 1"),
        ("teacher.teacher_temp=0", "teacher.teacher_temp=0: expected a number > 0"),
        ("optim.layerwise_decay=0", "optim.layerwise_decay=0: expected a number in (0, 1]"),
        ("train.dataset_path=3", "train.dataset_path=3: expected a string"),
    ],
)
def test_rule_kinds_reject_with_the_allowed_values(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, [override])
    assert message in str(raised.value)


def test_valid_edge_values_load() -> None:
    cfg = load_config(
        None,
        [
            "student.depth=null", "student.layerscale=null", "optim.base_lr=0", "optim.base_lr=1",
            "train.max_bad_image_fraction=1", "train.OFFICIAL_EPOCH_LENGTH=-1", "teacher.final_momentum_teacher=1",
            "ibot.mask_ratio_min_max=[0.3,0.3]", "dino.mcr.expa_type=1", "student.arch=vit_giant2",
        ],
    )  # fmt: skip
    assert cfg.student.depth is None and cfg.optim.base_lr == 1


@pytest.mark.parametrize("recipe", RECIPES, ids=[f"{path.parent.name}/{path.name}" for path in RECIPES])
def test_every_recipe_loads(recipe: Path) -> None:
    assert len(RECIPES) >= 14
    load_config(recipe)


def test_training_fails_before_building_anything(tmp_path: Path) -> None:
    from dinov2.train.train import get_args_parser, main

    output_dir = tmp_path / "run"
    args = ["--config-file", str(ROOT / "configs" / "tiny" / "dinov2_test.yaml"), "--output-dir", str(output_dir)]
    with pytest.raises(ConfigError, match=r"train.batch_size_per_gpu='abc': expected an integer >= 1"):
        main(get_args_parser().parse_args([*args, "train.batch_size_per_gpu=abc"]))
    assert not (output_dir / "checkpoints").exists()
