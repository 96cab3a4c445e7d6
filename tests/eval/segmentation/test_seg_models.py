"""The registered mmseg modules: frozen ViT backbone wrapper and BNHead."""

import pytest
import torch
import torch.nn.functional as F
from mmseg.registry import MODELS

from eval.segmentation.models import (
    BNHead,
    DinoVisionTransformerBackbone,
    center_pad_to_multiple,
    resolve_block_indices,
)


@pytest.fixture(scope="module")
def backbone(tiny_backbone_kwargs: dict) -> DinoVisionTransformerBackbone:
    return MODELS.build(dict(type="DinoVisionTransformerBackbone", **tiny_backbone_kwargs, out_indices=(-2, -1)))


def test_center_padding_splits_the_extra_rows_and_columns() -> None:
    images = torch.ones(1, 1, 301, 296)
    padded = center_pad_to_multiple(images, 8)
    assert padded.shape == (1, 1, 304, 296)
    # 3 extra rows: 1 on top, 2 at the bottom; the width is already a multiple of 8.
    assert padded[0, 0, :1].sum() == 0 and padded[0, 0, 1:302].min() == 1 and padded[0, 0, 302:].sum() == 0
    assert torch.equal(center_pad_to_multiple(torch.ones(1, 1, 16, 24), 8), torch.ones(1, 1, 16, 24))


def test_block_indices_count_from_the_end_and_are_checked() -> None:
    assert resolve_block_indices((-1,), 12) == [11]
    assert resolve_block_indices((-4, -3, -2, -1), 12) == [8, 9, 10, 11]
    assert resolve_block_indices((3,), 12) == [3]
    with pytest.raises(ValueError, match=r"out_indices=\[-4, -3, -2, -1\].*2-block.*out of range: \[-4, -3\]"):
        resolve_block_indices((-4, -3, -2, -1), 2)


def test_backbone_returns_normed_patch_maps_of_the_selected_blocks(backbone: DinoVisionTransformerBackbone) -> None:
    images = torch.randn(2, 3, 60, 70)
    maps = backbone(images)
    assert len(maps) == 2
    assert all(m.shape == (2, backbone.embed_dim, 8, 9) for m in maps)  # ceil(60/8) x ceil(70/8)
    # Same as running the ViT on the centre-padded input (60 -> 64: 2 rows top and bottom; 70 -> 72: 1 + 1).
    padded = F.pad(images, (1, 1, 2, 2))
    expected = backbone.vit.get_intermediate_layers(padded, n=[0, 1], reshape=True, norm=True)
    for got, want in zip(maps, expected, strict=True):
        torch.testing.assert_close(got, want)
    unnormed = backbone.vit.get_intermediate_layers(padded, n=[1], reshape=True, norm=False)[0]
    assert not torch.allclose(maps[1], unnormed)


def test_backbone_is_frozen_and_stays_in_eval_mode(backbone: DinoVisionTransformerBackbone) -> None:
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert backbone.training and not backbone.vit.training
    assert not any(m.training for m in backbone.vit.modules())
    maps = backbone(torch.randn(1, 3, 16, 16, requires_grad=True))
    assert not maps[0].requires_grad
    assert not hasattr(backbone, "init_weights")  # mmengine's init pass can never re-initialise the ViT


def test_backbone_loads_the_checkpoint(backbone: DinoVisionTransformerBackbone, tiny_backbone_kwargs: dict) -> None:
    saved = torch.load(tiny_backbone_kwargs["pretrained_weights"], map_location="cpu")
    loaded = backbone.vit.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[key], loaded[key]) for key in saved)


def test_backbone_rejects_out_indices_beyond_its_depth(tiny_backbone_kwargs: dict) -> None:
    with pytest.raises(ValueError, match="out_indices"):
        DinoVisionTransformerBackbone(**tiny_backbone_kwargs, out_indices=(-4, -3, -2, -1))


def test_bn_head_shapes_and_trainable_parameters() -> None:
    width, n_classes = 48, 150
    head = BNHead(in_channels=[width], channels=width, num_classes=n_classes, in_index=[0], norm_cfg=dict(type="BN"))
    logits = head((torch.randn(2, width, 32, 32),))
    assert logits.shape == (2, n_classes, 32, 32)
    n_trainable = sum(p.numel() for p in head.parameters() if p.requires_grad)
    assert n_trainable == n_classes * width + n_classes + 2 * width
    assert head.dropout is None


def test_bn_head_concatenates_the_selected_maps() -> None:
    width = 8
    head = BNHead(
        in_channels=[width] * 2, channels=2 * width, num_classes=5, in_index=[1, 2], norm_cfg=dict(type="BN")
    ).eval()
    maps = (torch.randn(1, width, 4, 4), torch.randn(1, width, 4, 4), torch.randn(1, width, 4, 4))
    expected = head.conv_seg(head.bn(torch.cat(maps[1:], dim=1)))
    torch.testing.assert_close(head(maps), expected)


def test_bn_head_rejects_channels_that_do_not_match() -> None:
    with pytest.raises(ValueError, match=r"channels=64 must equal sum\(in_channels\)=128"):
        BNHead(in_channels=[64, 64], channels=64, num_classes=150, in_index=[0, 1], norm_cfg=dict(type="BN"))
