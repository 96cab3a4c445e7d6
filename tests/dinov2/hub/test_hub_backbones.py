"""Hub constructors build the released architectures (official DINOv2 hubconf) and load local weights only."""

import importlib.util
import pathlib

import pytest
import torch

from dinov2.hub import backbones
from dinov2.hub.backbones import HUB_BACKBONES, dinov2_vits14

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
    from dinov2.utils.checkpoint import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match="register tokens: checkpoint 0, model 4"):
        HUB_BACKBONES["dinov2_vits14_reg"](weights=path, depth=2)


def test_hubconf_reexports_every_backbone():
    path = pathlib.Path(__file__).resolve().parents[3] / "hubconf.py"
    spec = importlib.util.spec_from_file_location("hubconf_under_test", path)
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert hubconf.dependencies == ["torch"]
    for name, fn in HUB_BACKBONES.items():
        assert getattr(hubconf, name) is fn
