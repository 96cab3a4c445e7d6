"""Backbone checkpoint loader: accepted formats, chunked <-> flat conversion, strict errors."""

import argparse
import copy

import pytest
import timm
import torch

from dinov2.models.vision_transformer import DinoVisionTransformer
from dinov2.utils.checkpoint import (
    CheckpointFormatError,
    CheckpointMismatchError,
    convert_chunked_to_flat,
    convert_flat_to_chunked,
    load_backbone_state_dict,
    load_pretrained_backbone,
)


def tiny(seed: int = 0, **kwargs) -> DinoVisionTransformer:
    settings = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, init_values=1e-5)
    settings.update(kwargs)
    torch.manual_seed(seed)
    return DinoVisionTransformer(**settings)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    flat_a, flat_b = convert_chunked_to_flat(a.state_dict()), convert_chunked_to_flat(b.state_dict())
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        assert torch.equal(flat_a[key], flat_b[key]), key


@pytest.mark.parametrize("depth, chunks", [(4, 2), (5, 2), (4, 4), (6, 4)])
def test_chunked_flat_round_trip_is_strict(depth, chunks):
    chunked_model = tiny(depth=depth, block_chunks=chunks)
    flat_model = tiny(seed=1, depth=depth, block_chunks=0)
    chunked_sd = chunked_model.state_dict()
    flat_sd = convert_chunked_to_flat(chunked_sd)
    assert list(flat_sd) == list(flat_model.state_dict())
    flat_model.load_state_dict(flat_sd, strict=True)
    assert_same_weights(flat_model, chunked_model)
    back = convert_flat_to_chunked(flat_sd, block_chunks=chunks, depth=depth)
    assert list(back) == list(chunked_sd)
    assert all(back[k] is chunked_sd[k] for k in back)
    assert convert_chunked_to_flat(flat_sd) == flat_sd  # idempotent
    assert convert_flat_to_chunked(chunked_sd, block_chunks=chunks, depth=depth).keys() == chunked_sd.keys()
    assert convert_flat_to_chunked(chunked_sd, block_chunks=0, depth=depth).keys() == flat_sd.keys()


def test_conversion_key_examples():
    sd = {"blocks.1.6.attn.qkv.weight": torch.zeros(1), "norm.weight": torch.zeros(1)}
    assert list(convert_chunked_to_flat(sd)) == ["blocks.6.attn.qkv.weight", "norm.weight"]
    flat = {"blocks.23.ls2.gamma": torch.zeros(1), "blocks.5.mlp.fc1.bias": torch.zeros(1)}
    assert list(convert_flat_to_chunked(flat, block_chunks=4, depth=24)) == [
        "blocks.3.23.ls2.gamma",
        "blocks.0.5.mlp.fc1.bias",
    ]
    with pytest.raises(ValueError, match="block_chunks=5"):
        convert_flat_to_chunked(flat, block_chunks=5, depth=4)


def test_hub_style_flat_file_loads(tmp_path):
    source = tiny(num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True)
    path = tmp_path / "dinov2_vitx14_reg4_pretrain.pth"
    torch.save(source.state_dict(), path)
    target = tiny(seed=3, num_register_tokens=4)
    load_pretrained_backbone(target, path)
    assert_same_weights(target, source)


def test_teacher_checkpoint_with_chunked_keys_loads_into_flat_model(tmp_path):
    source = tiny(block_chunks=2, num_register_tokens=2)
    teacher = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    teacher["dino_head.mlp.0.weight"] = torch.randn(8, 32)
    teacher["dino_head.last_layer.weight_g"] = torch.randn(16, 1)
    teacher["ibot_head.mlp.0.weight"] = torch.randn(8, 32)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": teacher}, path)
    state = load_backbone_state_dict(path)
    assert not any("head" in k for k in state) and "blocks.1.3.norm1.weight" in state
    flat_model = tiny(seed=5, num_register_tokens=2)
    load_pretrained_backbone(flat_model, path)
    assert_same_weights(flat_model, source)
    rechunked = tiny(seed=6, num_register_tokens=2, block_chunks=4)
    load_pretrained_backbone(rechunked, path)
    assert_same_weights(rechunked, source)


def test_model_wrapper_and_compile_ddp_prefixes(tmp_path):
    source = tiny()
    wrapped = {"model": {f"_orig_mod.module.backbone.{k}": v for k, v in source.state_dict().items()}}
    path = tmp_path / "simdino.pth"
    torch.save(wrapped, path)
    target = tiny(seed=1)
    load_pretrained_backbone(target, path)
    assert_same_weights(target, source)


def test_meta_architecture_state_dict_takes_the_teacher(tmp_path):
    teacher, student = tiny(seed=1), tiny(seed=2)
    model_sd = {f"teacher.backbone.{k}": v for k, v in teacher.state_dict().items()}
    model_sd.update({f"student.backbone.{k}": v for k, v in student.state_dict().items()})
    path = tmp_path / "model_final.pth"
    torch.save({"model": model_sd}, path)
    target = tiny(seed=3)
    load_pretrained_backbone(target, path)
    assert_same_weights(target, teacher)


def test_truncated_and_non_torch_files(tmp_path):
    path = tmp_path / "full.pth"
    torch.save(tiny().state_dict(), path)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        load_backbone_state_dict(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointFormatError, match="weights_only=True"):
        load_backbone_state_dict(garbage)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_backbone_state_dict(tmp_path / "missing.pth")


class _Arbitrary:
    """A class that weights_only=True must refuse to unpickle."""


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"model": tiny().state_dict(), "extra": _Arbitrary()}, path)
    with pytest.raises(CheckpointFormatError, match="weights_only=True"):
        load_backbone_state_dict(path)


def test_dino_v1_checkpoint_with_namespace_args_loads(tmp_path):
    # SimDINO v1 / DINO-v1 checkpoint.pth: compiled teacher and DDP student, argparse.Namespace args, epoch.
    source = tiny(init_values=None)
    backbone = {k: v for k, v in source.state_dict().items() if k != "mask_token"}
    head = {"head.mlp.0.weight": torch.zeros(8, 32), "head.mlp.0.bias": torch.zeros(8)}
    checkpoint = {
        "student": {f"_orig_mod.module.backbone.{k}": v + 1 for k, v in backbone.items()},
        "teacher": {**{f"_orig_mod.backbone.{k}": v for k, v in backbone.items()},
                    **{f"_orig_mod.{k}": v for k, v in head.items()}},
        "args": argparse.Namespace(arch="vit_small", patch_size=16),
        "epoch": 100,
    }  # fmt: skip
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    target = tiny(seed=1, init_values=None)
    load_pretrained_backbone(target, path, allowed_missing=["mask_token"])
    for key, value in backbone.items():
        assert torch.equal(target.state_dict()[key], value), key


def test_foreign_checkpoints(tmp_path):
    resnet_like = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7), "fc.bias": torch.zeros(10)}, resnet_like)
    with pytest.raises(CheckpointFormatError, match="no DINOv2 backbone keys.*conv1.weight"):
        load_backbone_state_dict(resnet_like)
    with_metadata = tmp_path / "meta.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 32), "epoch": 3}, with_metadata)
    with pytest.raises(CheckpointFormatError, match="'epoch' is a int"):
        load_backbone_state_dict(with_metadata)
    # A timm ViT of the same shape: no mask token and no LayerScale, a classifier head.
    timm_vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2,
        num_classes=10,
    )  # fmt: skip
    timm_path = tmp_path / "timm.pth"
    torch.save(timm_vit.state_dict(), timm_path)
    target = tiny()
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(CheckpointMismatchError) as info:
        load_pretrained_backbone(target, timm_path)
    message = str(info.value)
    assert "nothing was loaded" in message and "mask_token" in message and "blocks.0.ls1.gamma" in message
    assert "unexpected keys (2): head.weight, head.bias" in message and "LayerScale" in message
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key]), "a failed load must leave the model untouched"


@pytest.mark.parametrize(
    "source_kwargs, target_kwargs, hint",
    [
        (dict(patch_size=4, img_size=16), dict(), "patch size: checkpoint 4, model 8"),
        (dict(num_register_tokens=4), dict(), "register tokens: checkpoint 4, model 0"),
        (dict(), dict(num_register_tokens=2), "register tokens: checkpoint 0, model 2"),
        (dict(embed_dim=48, num_heads=2), dict(), "embedding size: checkpoint 48, model 32"),
        (dict(img_size=64), dict(), "position embedding: checkpoint 65 rows, model 17"),
        (dict(depth=6), dict(), "depth: checkpoint 6 blocks, model 4"),
        (dict(ffn_layer="swiglufused"), dict(), "FFN: checkpoint uses w12, model fc1"),
    ],
)
def test_each_mismatch_kind_is_named(tmp_path, source_kwargs, target_kwargs, hint):
    path = tmp_path / "source.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in tiny(**source_kwargs).state_dict().items()}}, path)
    target = tiny(seed=1, **target_kwargs)
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(CheckpointMismatchError, match="nothing was loaded") as info:
        load_pretrained_backbone(target, path)
    assert hint in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_shape_mismatch_lists_the_key(tmp_path):
    path = tmp_path / "source.pth"
    torch.save(tiny(embed_dim=48, num_heads=2).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"pos_embed: checkpoint \(1, 17, 48\) vs model \(1, 17, 32\)"):
        load_pretrained_backbone(tiny(), path)


def test_allowed_missing_mask_token(tmp_path):
    source = tiny()
    sd = {k: v for k, v in source.state_dict().items() if k != "mask_token"}
    path = tmp_path / "dino_v1_like.pth"
    torch.save({"teacher": {f"_orig_mod.backbone.{k}": v for k, v in sd.items()}}, path)
    target = tiny(seed=1)
    with pytest.raises(CheckpointMismatchError, match="missing keys \\(1\\): mask_token"):
        load_pretrained_backbone(target, path)
    load_pretrained_backbone(target, path, allowed_missing=["mask_token"])
    assert torch.equal(target.pos_embed, source.pos_embed)


@pytest.mark.parametrize(
    "entry_point, patch_hint, register_hint",
    [
        ("eval", "(set --patch-size)", "(set --num-register-tokens)"),
        ("train", "(set student.patch_size", "(set student.num_register_tokens)"),
        ("hub", "(set the hub entry point / --arch name (dinov2_*14: patch 14", "or num_register_tokens=)"),
    ],
)
def test_hints_name_what_applies_at_the_entry_point(tmp_path, entry_point, patch_hint, register_hint):
    """A train.py or torch.hub user is never told to pass --patch-size / --num-register-tokens."""
    path = tmp_path / "source.pth"
    torch.save(tiny(patch_size=4, img_size=16, num_register_tokens=4).state_dict(), path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_pretrained_backbone(tiny(), path, entry_point=entry_point)
    message = str(info.value)
    assert patch_hint in message and register_hint in message
    if entry_point != "eval":
        assert "--patch-size" not in message and "--num-register-tokens" not in message
