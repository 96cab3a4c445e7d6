"""dinov2.eval.setup: flags -> eval-mode backbone with weights from a config run, an arch or a hub name."""

import argparse

import pytest
import torch
from omegaconf import OmegaConf

from dinov2.eval.setup import add_backbone_args, backbone_from_args, build_backbone_for_eval
from dinov2.models import build_model_from_cfg
from dinov2.utils.checkpoint import CheckpointMismatchError
from dinov2.utils.config import load_config

RUN_CONFIG = {
    "student": {"arch": "vit_tiny", "depth": 2, "patch_size": 8, "block_chunks": 2, "num_register_tokens": 2,
                "interpolate_offset": 0.0, "interpolate_antialias": True, "layerscale": 0.1},
    "crops": {"global_crops_size": 32},
}  # fmt: skip


def write_run(tmp_path):
    config_path = tmp_path / "config.yaml"
    OmegaConf.save(OmegaConf.create(RUN_CONFIG), config_path)
    torch.manual_seed(0)
    _, teacher, _ = build_model_from_cfg(load_config(config_path))
    export = {f"backbone.{k}": v for k, v in teacher.state_dict().items()}
    export["dino_head.mlp.0.weight"] = torch.zeros(4, 192)
    weights_path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": export}, weights_path)
    return config_path, weights_path, teacher


def test_config_file_builds_teacher_and_loads_chunked_export(tmp_path):
    config_path, weights_path, teacher = write_run(tmp_path)
    args = add_backbone_args(argparse.ArgumentParser()).parse_args(
        ["--config-file", str(config_path), "--pretrained-weights", str(weights_path)]
    )
    model = backbone_from_args(args)
    assert not model.training and model.chunked_blocks and model.pos_embed.shape == (1, 17, 192)
    assert all(b.sample_drop_ratio == 0.0 for b in model.iter_blocks())
    for key, value in teacher.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), teacher.eval()(images))


def test_arch_mode_uses_config_defaults_plus_flags(tmp_path):
    config_path, weights_path, teacher = write_run(tmp_path)
    flat = build_backbone_for_eval(
        arch="vit_tiny", patch_size=8, num_register_tokens=2, weights=weights_path,
        opts=["student.depth=2", "crops.global_crops_size=32", "student.layerscale=0.1"],
    )  # fmt: skip
    assert not flat.chunked_blocks and flat.num_register_tokens == 2
    assert torch.equal(flat.blocks[1].mlp.fc1.weight, teacher.blocks[1][1].mlp.fc1.weight)
    with pytest.raises(CheckpointMismatchError, match="register tokens: checkpoint 2, model 0"):
        build_backbone_for_eval(arch="vit_tiny", patch_size=8, weights=weights_path,
                                opts=["student.depth=2", "crops.global_crops_size=32"])  # fmt: skip


def test_hub_name_mode(tmp_path):
    torch.manual_seed(0)
    random_model = build_backbone_for_eval(arch="dinov2_vits14_reg")
    assert random_model.num_register_tokens == 4 and random_model.pos_embed.shape == (1, 1370, 384)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(random_model.state_dict(), path)
    loaded = build_backbone_for_eval(arch="dinov2_vits14_reg", pretrained_weights=path)
    assert torch.equal(loaded.blocks[11].ls2.gamma, random_model.blocks[11].ls2.gamma)
    with pytest.raises(ValueError, match="fixes the released architecture.*--patch-size=16"):
        build_backbone_for_eval(arch="dinov2_vits14_reg", patch_size=16)


def test_invalid_flag_combinations():
    with pytest.raises(ValueError, match="exactly one of --config-file and --arch"):
        build_backbone_for_eval()
    with pytest.raises(ValueError, match="exactly one of --config-file and --arch"):
        build_backbone_for_eval(config_file="a.yaml", arch="vit_small")
    with pytest.raises(ValueError, match="pass only one"):
        build_backbone_for_eval(arch="vit_small", weights="a.pth", pretrained_weights="b.pth")
    with pytest.raises(ValueError, match="'vit_huge' is not one of"):
        build_backbone_for_eval(arch="vit_huge")


def test_parser_flags():
    args = add_backbone_args(argparse.ArgumentParser()).parse_args(
        ["--arch", "vit_small", "--patch-size", "14", "--num-register-tokens", "4", "--opts", "student.depth=2"]
    )
    assert (args.arch, args.patch_size, args.num_register_tokens, args.opts) == (
        "vit_small",
        14,
        4,
        ["student.depth=2"],
    )
    assert args.config_file is None and args.weights is None and args.pretrained_weights is None
