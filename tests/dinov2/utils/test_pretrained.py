"""Released weights into a training run: every format with its real key layout, FlexiViT and grid resizes."""

import argparse
import pathlib

import pytest
import torch
import torch.nn.functional as F

from dinov2.hub.backbones import dinov2_vitb14_reg, dinov2_vits14
from dinov2.models import build_model_from_cfg
from dinov2.models.vision_transformer import DinoVisionTransformer, vit_base
from dinov2.utils.checkpoint import (
    CheckpointFormatError,
    CheckpointMismatchError,
    convert_flat_to_chunked,
    extract_backbone_state_dict,
    load_backbone_state_dict,
)
from dinov2.utils.config import load_config
from dinov2.utils.pretrained import (
    checkpoint_geometry,
    convert_pretrained_state_dict,
    load_pretrained_weights,
    resize_patch,
    resize_patch_embed_kernel,
    resize_pos_embed,
)

ROOT = pathlib.Path(__file__).parents[3]
RECIPES = ROOT / "configs" / "continue"


def recipe_backbone(name: str, *overrides: str) -> DinoVisionTransformer:
    """The student backbone a configs/continue recipe trains, on the meta device (real shapes, no memory)."""
    cfg = load_config(RECIPES / name, list(overrides))
    with torch.device("meta"):
        student, _, _ = build_model_from_cfg(cfg)  # type: ignore[misc]
    return student


def simdinov2_vitb16_teacher_checkpoint() -> dict:
    """Layout of a released SimDINOv2 ViT-B/16 teacher file: chunked backbone keys, 4 registers, head MLP only."""
    with torch.device("meta"):
        backbone = vit_base(patch_size=16, num_register_tokens=4, img_size=224, init_values=0.1, block_chunks=4)
    teacher = {f"backbone.{key}": value for key, value in backbone.state_dict().items()}
    for index, (n_in, n_out) in enumerate([(768, 2048), (2048, 2048), (2048, 256)]):
        teacher[f"dino_head.mlp.{2 * index}.weight"] = torch.empty(n_out, n_in, device="meta")
        teacher[f"dino_head.mlp.{2 * index}.bias"] = torch.empty(n_out, device="meta")
    return {"teacher": teacher}


def simdino_v1_vitb16_checkpoint() -> dict:
    """Layout of a SimDINO (v1) checkpoint.pth: DINO-v1 ViT (no registers, LayerScale, mask token) compiled."""
    with torch.device("meta"):
        backbone = vit_base(patch_size=16, img_size=224, init_values=None)
    state = {key: value for key, value in backbone.state_dict().items() if key != "mask_token"}
    head = {
        "head.mlp.0.weight": torch.empty(2048, 768, device="meta"),
        "head.mlp.4.bias": torch.empty(256, device="meta"),
    }
    return {
        "teacher": {**{f"_orig_mod.backbone.{k}": v for k, v in state.items()},
                    **{f"_orig_mod.{k}": v for k, v in head.items()}},
        "student": {f"_orig_mod.module.backbone.{k}": v for k, v in state.items()},
        "epoch": 100,
    }  # fmt: skip


@pytest.mark.parametrize("recipe", ["simdinov2_from_dinov2_vitb14.yaml", "dinov2_from_dinov2_vitb14.yaml"])
def test_dinov2_hub_file_layout_converts_into_the_recipes(recipe):
    with torch.device("meta"):
        hub = dinov2_vitb14_reg(pretrained=False).state_dict()
    assert hub["pos_embed"].shape == (1, 1 + 37 * 37, 768) and "register_tokens" in hub
    backbone = recipe_backbone(recipe)
    converted, geometry = convert_pretrained_state_dict(
        backbone, extract_backbone_state_dict(hub), pretrained_img_size=518, pretrained_patch_size=14
    )
    assert (geometry.patch_size, geometry.grid_size, geometry.img_size) == (14, 37, 518)
    assert set(converted) == set(backbone.state_dict())  # flat hub keys -> the recipe's chunked keys
    assert converted["pos_embed"].shape == (1, 1 + 16 * 16, 768)


def test_dinov2_hub_file_into_a_patch16_run():
    with torch.device("meta"):
        hub = dinov2_vitb14_reg(pretrained=False).state_dict()
    backbone = recipe_backbone(
        "simdinov2_from_dinov2_vitb14.yaml", "student.patch_size=16", "crops.local_crops_size=96"
    )
    converted, _ = convert_pretrained_state_dict(backbone, extract_backbone_state_dict(hub))
    assert converted["patch_embed.proj.weight"].shape == (768, 3, 16, 16)
    assert converted["pos_embed"].shape == (1, 1 + 14 * 14, 768)


def test_simdinov2_release_layout_converts_into_its_recipe():
    state = extract_backbone_state_dict(simdinov2_vitb16_teacher_checkpoint())
    assert not any(key.startswith("dino_head") for key in state)
    backbone = recipe_backbone("simdinov2_from_simdinov2_vitb16.yaml")
    converted, geometry = convert_pretrained_state_dict(
        backbone, state, pretrained_img_size=224, pretrained_patch_size=16
    )
    assert (geometry.patch_size, geometry.grid_size) == (16, 14)
    assert set(converted) == set(backbone.state_dict())


def test_simdino_v1_layout_needs_no_layerscale_and_misses_the_mask_token():
    state = extract_backbone_state_dict(simdino_v1_vitb16_checkpoint())
    backbone = recipe_backbone(
        "simdinov2_from_simdinov2_vitb16.yaml", "student.layerscale=0", "student.num_register_tokens=0",
        "student.interpolate_offset=0.1", "student.interpolate_antialias=false",
    )  # fmt: skip
    converted, geometry = convert_pretrained_state_dict(backbone, state)
    assert not geometry.has_mask_token
    assert set(backbone.state_dict()) - set(converted) == {"mask_token"}
    with pytest.raises(CheckpointMismatchError, match=r"LayerScale: checkpoint lacks.*student.layerscale"):
        convert_pretrained_state_dict(
            recipe_backbone("simdinov2_from_simdinov2_vitb16.yaml", "student.num_register_tokens=0"), state
        )


@pytest.mark.parametrize(
    "override, hint",
    [
        ("student.num_register_tokens=0", "register tokens: checkpoint 4, model 0 (set student.num_register_tokens)"),
        ("student.arch=vit_small", "embedding size: checkpoint 768, model 384 (choose student.arch)"),
        ("student.depth=6", "depth: checkpoint 12 blocks, model 6 (set student.arch / student.depth)"),
    ],
)
def test_register_width_depth_mismatches_stay_errors_naming_config_keys(override, hint):
    with torch.device("meta"):
        hub = dinov2_vitb14_reg(pretrained=False).state_dict()
    with pytest.raises(CheckpointMismatchError) as error:
        convert_pretrained_state_dict(recipe_backbone("simdinov2_from_dinov2_vitb14.yaml", override), hub)
    assert hint in str(error.value)
    assert "--" not in str(error.value), "train.py has no such flags: the hints name config keys"


def test_declared_pretrained_geometry_is_checked():
    with torch.device("meta"):
        hub = dinov2_vits14(pretrained=False).state_dict()
    backbone = recipe_backbone("simdinov2_from_dinov2_vits14.yaml", "student.num_register_tokens=0")
    with pytest.raises(ValueError, match="student.pretrained_patch_size=16 but .* holds 14"):
        convert_pretrained_state_dict(backbone, hub, pretrained_patch_size=16)
    with pytest.raises(ValueError, match="student.pretrained_img_size=224 but .* holds 518"):
        convert_pretrained_state_dict(backbone, hub, pretrained_img_size=224)


def test_unknown_format_lists_the_accepted_ones(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(2, 3, 7, 7)}}, path)
    with pytest.raises(CheckpointFormatError, match="Accepted formats: an official DINOv2 hub file.*teacher export"):
        load_backbone_state_dict(path)
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointFormatError, match="not a training checkpoint.*Accepted formats"):
        load_backbone_state_dict(tmp_path / "folder")


# ---------------------------------------------------------------------------------------------------------
# FlexiViT patch-embedding resize and position-embedding resize
# ---------------------------------------------------------------------------------------------------------
def test_flexivit_resize_gives_the_same_token_on_a_repeated_patch():
    """The property FlexiViT proves for upsampling: <x, w> = <B x, pinv(B^T) w> for every patch x."""
    torch.manual_seed(0)
    kernel, bias = torch.randn(16, 3, 14, 14, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    patch = torch.randn(3, 14, 14, dtype=torch.float64)
    image = patch.repeat(1, 3, 3)[None]  # 42 x 42: one patch repeated on a 3 x 3 grid
    resized_image = resize_patch(patch, 16).repeat(1, 3, 3)[None]  # 48 x 48: the resized patch, same grid
    tokens = F.conv2d(image, kernel, bias, stride=14)
    resized_tokens = F.conv2d(resized_image, resize_patch_embed_kernel(kernel, 16), bias, stride=16)
    assert resized_tokens.shape == tokens.shape == (1, 16, 3, 3)
    torch.testing.assert_close(resized_tokens, tokens, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(tokens[..., 0, 0], tokens[..., 2, 1])  # every grid cell holds the same token


def test_flexivit_round_trip_14_16_14_is_close_for_smooth_kernels():
    """Down-sizing is a least-squares fit, so the round trip is close (not exact) for the smooth kernels ViTs learn."""
    torch.manual_seed(0)
    kernel = F.interpolate(torch.randn(64, 3, 5, 5), size=(14, 14), mode="bicubic")
    round_trip = resize_patch_embed_kernel(resize_patch_embed_kernel(kernel, 16), 14)
    assert round_trip.shape == kernel.shape and round_trip.dtype == kernel.dtype
    assert (round_trip - kernel).norm() / kernel.norm() < 0.05
    patches = F.interpolate(torch.randn(32, 3, 5, 5), size=(14, 14), mode="bicubic")
    tokens, round_trip_tokens = patches.flatten(1) @ kernel.flatten(1).T, patches.flatten(1) @ round_trip.flatten(1).T
    assert (round_trip_tokens - tokens).norm() / tokens.norm() < 0.05


@pytest.mark.parametrize("offset, antialias", [(0.0, True), (0.1, False)])
def test_resized_position_embedding_reproduces_on_the_fly_interpolation(offset, antialias):
    """A model whose table was resized to grid G computes what the source model computes at G patches."""
    settings = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, init_values=0.1, num_register_tokens=2,
                    interpolate_offset=offset, interpolate_antialias=antialias)  # fmt: skip
    torch.manual_seed(0)
    source = DinoVisionTransformer(img_size=64, **settings).eval()  # 8 x 8 grid
    target = DinoVisionTransformer(img_size=32, **settings).eval()  # 4 x 4 grid
    state = source.state_dict()
    state["pos_embed"] = resize_pos_embed(
        state["pos_embed"], 4, interpolate_offset=offset, interpolate_antialias=antialias
    )
    target.load_state_dict(state)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target(images), source(images))


def test_patch_and_grid_change_loads_from_a_file(tmp_path):
    torch.manual_seed(0)
    source = DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2, init_values=0.1)
    path = tmp_path / "hub_like.pth"
    torch.save(source.state_dict(), path)
    target = DinoVisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, init_values=0.1)
    geometry = load_pretrained_weights(target, path, pretrained_img_size=56, pretrained_patch_size=14)
    assert (geometry.patch_size, geometry.grid_size) == (14, 4)
    assert checkpoint_geometry(target.state_dict()).patch_size == 16
    torch.testing.assert_close(target.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight, rtol=0, atol=0)
    torch.testing.assert_close(
        target.patch_embed.proj.weight, resize_patch_embed_kernel(source.patch_embed.proj.weight, 16), rtol=0, atol=0
    )


def test_simdino_v1_file_with_namespace_args_loads_and_keeps_the_zero_mask_token(tmp_path):
    torch.manual_seed(0)
    settings = dict(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, init_values=None)
    source = DinoVisionTransformer(**settings)
    state = {k: v for k, v in source.state_dict().items() if k != "mask_token"}
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {f"_orig_mod.backbone.{k}": v for k, v in state.items()},
                "args": argparse.Namespace(arch="vit_base"), "epoch": 3}, path)  # fmt: skip
    target = DinoVisionTransformer(**settings)
    load_pretrained_weights(target, path)
    assert torch.equal(target.mask_token, torch.zeros(1, 32))
    assert all(torch.equal(target.state_dict()[k], v) for k, v in state.items())


def test_chunked_teacher_export_loads_into_a_flat_run(tmp_path):
    torch.manual_seed(0)
    source = DinoVisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, init_values=0.1)
    path = tmp_path / "teacher_checkpoint.pth"
    chunked = convert_flat_to_chunked(source.state_dict(), block_chunks=2, depth=4)
    torch.save({"teacher": {**{f"backbone.{k}": v for k, v in chunked.items()},
                            "dino_head.mlp.0.weight": torch.zeros(4, 32)}}, path)  # fmt: skip
    target = DinoVisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, init_values=0.1)
    load_pretrained_weights(target, path)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())


@pytest.mark.parametrize(
    "recipe, objective",
    [
        ("simdinov2_from_dinov2_vits14.yaml", "SimDINOMetaArch"),
        ("simdinov2_from_dinov2_vitb14.yaml", "SimDINOMetaArch"),
        ("simdinov2_from_simdinov2_vitb16.yaml", "SimDINOMetaArch"),
        ("dinov2_from_dinov2_vitb14.yaml", "SSLMetaArch"),
    ],
)
def test_recipes_select_their_objective_and_warm_up_after_the_frozen_epochs(recipe, objective):
    from simdinov2.train.build import select_meta_arch

    cfg = load_config(RECIPES / recipe)
    assert select_meta_arch(cfg).__name__ == objective  # also runs the SimDINO config checks
    assert 0 < cfg.student.freeze_backbone_epochs < cfg.optim.warmup_epochs < cfg.optim.epochs
    for size in (cfg.crops.global_crops_size, cfg.crops.local_crops_size):
        assert size % cfg.student.patch_size == 0
