"""Hub constructors build the released architectures (official DINOv2 hubconf) and load local weights only."""

import importlib.util
import pathlib

import pytest
import torch
from omegaconf import OmegaConf

from dinov2.hub import backbones
from dinov2.hub.backbones import HUB_BACKBONES, dinov2_vits14, simdino_vitb16, simdinov2_vitb16, training_run
from dinov2.utils.checkpoint import CheckpointMismatchError

RELEASED = {  # name: (D, depth, heads, registers, ffn hidden key, ffn hidden width, keys)
    "dinov2_vits14": (384, 12, 6, 0, "mlp.fc1.weight", 1536, 12 * 14 + 7),
    "dinov2_vitb14": (768, 12, 12, 0, "mlp.fc1.weight", 3072, 12 * 14 + 7),
    "dinov2_vitl14": (1024, 24, 16, 0, "mlp.fc1.weight", 4096, 343),
    "dinov2_vitg14": (1536, 40, 24, 0, "mlp.w3.weight", 4096, 567),
    "dinov2_vits14_reg": (384, 12, 6, 4, "mlp.fc1.weight", 1536, 12 * 14 + 8),
    "dinov2_vitb14_reg": (768, 12, 12, 4, "mlp.fc1.weight", 3072, 12 * 14 + 8),
    "dinov2_vitl14_reg": (1024, 24, 16, 4, "mlp.fc1.weight", 4096, 344),
    "dinov2_vitg14_reg": (1536, 40, 24, 4, "mlp.w3.weight", 4096, 568),
}
SIMDINO_RELEASED = {  # name: (D, depth, registers, LayerScale, interpolate_offset, antialias)
    "simdino_vitb16": (768, 12, 0, False, 0.1, False),
    "simdino_vitl16": (1024, 24, 0, False, 0.1, False),
    "simdinov2_vitb16": (768, 12, 4, True, 0.0, True),
    "simdinov2_vitl16": (1024, 24, 4, True, 0.0, True),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_architecture(name):
    dim, depth, heads, regs, ffn_key, hidden, n_keys = RELEASED[name]
    with torch.device("meta"):
        model = HUB_BACKBONES[name](pretrained=False)
    sd = model.state_dict()
    assert len(sd) == n_keys
    assert (model.embed_dim, model.n_blocks, model.num_heads, model.num_register_tokens) == (dim, depth, heads, regs)
    assert sd["pos_embed"].shape == (1, 1370, dim) and sd["patch_embed.proj.weight"].shape == (dim, 3, 14, 14)
    assert sd["mask_token"].shape == (1, dim) and ("register_tokens" in sd) == bool(regs)
    assert f"blocks.{depth - 1}.ls2.gamma" in sd and f"blocks.{depth - 1}.attn.qkv.bias" in sd
    w = sd[f"blocks.0.{ffn_key}"]
    assert hidden in w.shape
    if regs:
        assert model.interpolate_antialias and model.interpolate_offset == 0.0
    else:
        assert not model.interpolate_antialias and model.interpolate_offset == 0.1
    assert not any(k.startswith("head.") for k in sd)


def test_pretrained_without_weights_names_the_official_file():
    with pytest.raises(ValueError, match="dinov2_vitl14_reg4_pretrain.pth"):
        HUB_BACKBONES["dinov2_vitl14_reg"]()
    with pytest.raises(ValueError, match="dinov2_vitg14_pretrain.pth"):
        HUB_BACKBONES["dinov2_vitg14"](pretrained=True)
    with pytest.raises(ValueError, match="pass pretrained=True"):
        dinov2_vits14(pretrained=False, weights="some.pth")
    assert backbones.official_weights_file_name("b", 0) == "dinov2_vitb14_pretrain.pth"


def test_local_weights_load_strictly(tmp_path):
    torch.manual_seed(0)
    source = dinov2_vits14(pretrained=False, depth=2)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(source.state_dict(), path)
    loaded = dinov2_vits14(weights=str(path), depth=2)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(CheckpointMismatchError, match="register tokens: checkpoint 0, model 4"):
        HUB_BACKBONES["dinov2_vits14_reg"](weights=path, depth=2)


@pytest.mark.parametrize("name", sorted(SIMDINO_RELEASED))
def test_simdino_release_architectures(name):
    dim, depth, regs, layerscale, offset, antialias = SIMDINO_RELEASED[name]
    with torch.device("meta"):
        model = HUB_BACKBONES[name](pretrained=False)
    sd = model.state_dict()
    assert (model.embed_dim, model.n_blocks, model.num_register_tokens, model.patch_size) == (dim, depth, regs, 16)
    assert sd["pos_embed"].shape == (1, 1 + 14 * 14, dim) and ("register_tokens" in sd) == bool(regs)
    assert ("blocks.0.ls1.gamma" in sd) == layerscale and "blocks.0.mlp.fc1.weight" in sd
    assert (model.interpolate_offset, model.interpolate_antialias) == (offset, antialias)
    with pytest.raises(ValueError, match="needs weights=.*never downloads.*SimDINO"):
        HUB_BACKBONES[name]()


def test_simdinov2_teacher_checkpoint_loads_strictly(tmp_path):
    torch.manual_seed(0)
    source = simdinov2_vitb16(pretrained=False, depth=2, block_chunks=2)  # the release's chunked keys
    path = tmp_path / "teacher_checkpoint.pth"
    teacher = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    torch.save({"teacher": {**teacher, "dino_head.mlp.0.weight": torch.zeros(8, 768)}}, path)
    loaded = simdinov2_vitb16(weights=path, depth=2)
    assert torch.equal(loaded.blocks[1].attn.qkv.weight, source.blocks[1][1].attn.qkv.weight)
    with pytest.raises(
        CheckpointMismatchError, match=r"register tokens: checkpoint 4, model 0 \(set the hub entry point"
    ):
        simdino_vitb16(weights=path, depth=2)


def test_simdino_v1_checkpoint_loads_strictly_without_mask_token(tmp_path):
    torch.manual_seed(0)
    source = simdino_vitb16(pretrained=False, depth=2)
    state = {k: v for k, v in source.state_dict().items() if k != "mask_token"}
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {f"_orig_mod.backbone.{k}": v for k, v in state.items()}, "epoch": 99}, path)
    loaded = simdino_vitb16(weights=path, depth=2)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(CheckpointMismatchError, match="LayerScale: checkpoint lacks"):
        simdinov2_vitb16(weights=path, depth=2, num_register_tokens=0)


def test_training_run_loads_the_newest_teacher_export(tmp_path):
    from dinov2.models import build_model_from_cfg
    from dinov2.utils.config import load_config

    tiny = pathlib.Path(__file__).resolve().parents[3] / "configs" / "tiny" / "dinov2_test.yaml"
    run_dir = tmp_path / "run"
    cfg = load_config(tiny)
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(FileNotFoundError, match="no eval/"):
        training_run(run_dir)
    teachers = {}
    for iteration in (9, 19):
        torch.manual_seed(iteration)
        teacher, _ = build_model_from_cfg(cfg, only_teacher=True)
        (run_dir / "eval" / f"training_{iteration}").mkdir()
        path = run_dir / "eval" / f"training_{iteration}" / "teacher_checkpoint.pth"
        torch.save({"teacher": {f"backbone.{k}": v for k, v in teacher.state_dict().items()}}, path)
        teachers[iteration] = teacher
    loaded = training_run(run_dir)
    assert not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in teachers[19].state_dict().items())
    earlier = training_run(run_dir, weights=run_dir / "eval" / "training_9" / "teacher_checkpoint.pth")
    assert all(torch.equal(earlier.state_dict()[k], v) for k, v in teachers[9].state_dict().items())
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        training_run(tmp_path)


def test_hubconf_reexports_every_backbone():
    path = pathlib.Path(__file__).resolve().parents[3] / "hubconf.py"
    spec = importlib.util.spec_from_file_location("hubconf_under_test", path)
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert hubconf.dependencies == ["torch"]
    for name, fn in HUB_BACKBONES.items():
        assert getattr(hubconf, name) is fn
    assert hubconf.training_run is training_run
