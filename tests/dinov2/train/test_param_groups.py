import pytest
import torch

from dinov2.layers.dino_head import DINOHead
from dinov2.models.vision_transformer import vit_small
from dinov2.utils.param_groups import fuse_params_groups, get_params_groups_with_decay


def _by_name(module, **kwargs):
    return {g["name"]: g for g in get_params_groups_with_decay(module, **kwargs)}


@pytest.mark.parametrize("block_chunks", [0, 4])
def test_vit_small_multipliers_match_spec_6_2(block_chunks):
    with torch.device("meta"):
        backbone = vit_small(patch_size=16, block_chunks=block_chunks, init_values=1e-5)
    groups = _by_name(backbone, lr_decay_rate=0.9, patch_embed_lr_mult=0.2)
    block = "blocks.0.0" if block_chunks else "blocks.0"
    last_block = "blocks.3.11" if block_chunks else "blocks.11"
    assert groups["cls_token"]["lr_multiplier"] == pytest.approx(0.25419, abs=1e-5)
    assert groups["pos_embed"]["lr_multiplier"] == pytest.approx(0.25419, abs=1e-5)
    assert groups["patch_embed.proj.weight"]["lr_multiplier"] == pytest.approx(0.05084, abs=1e-5)
    assert groups[f"{block}.attn.qkv.weight"]["lr_multiplier"] == pytest.approx(0.28243, abs=1e-5)
    assert groups[f"{last_block}.mlp.fc2.weight"]["lr_multiplier"] == pytest.approx(0.9)
    assert groups["norm.weight"]["lr_multiplier"] == 1.0
    # weight decay: none on biases, norms, LayerScale gammas; tokens and pos_embed are decayed (KEEP)
    assert groups[f"{block}.attn.qkv.bias"]["wd_multiplier"] == 0.0
    assert groups[f"{block}.norm1.weight"]["wd_multiplier"] == 0.0
    assert groups[f"{block}.ls1.gamma"]["wd_multiplier"] == 0.0
    assert groups["cls_token"]["wd_multiplier"] == 1.0
    assert groups["mask_token"]["wd_multiplier"] == 1.0
    assert not any(g["is_last_layer"] for g in groups.values())


def test_head_multipliers_and_last_layer_flag():
    head = DINOHead(32, 64, hidden_dim=16, bottleneck_dim=8)
    groups = _by_name(head, lr_decay_rate=0.9, patch_embed_lr_mult=0.2)
    assert all(g["lr_multiplier"] == 1.0 for g in groups.values())
    assert groups["last_layer.weight_g"]["wd_multiplier"] == 1.0  # KEEP: weight_g is decayed
    assert groups["last_layer.weight_g"]["is_last_layer"] and groups["last_layer.weight_v"]["is_last_layer"]
    assert not groups["mlp.0.weight"]["is_last_layer"]
    assert groups["mlp.0.bias"]["wd_multiplier"] == 0.0


def test_fusing_groups_by_identical_multipliers():
    head = DINOHead(32, 64, hidden_dim=16, bottleneck_dim=8)
    fused = fuse_params_groups(get_params_groups_with_decay(head))
    keys = {(g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"]) for g in fused}
    assert keys == {(1.0, 1.0, False), (1.0, 0.0, False), (1.0, 1.0, True)}
    assert sum(len(g["params"]) for g in fused) == len(list(head.parameters()))
