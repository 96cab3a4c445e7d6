"""mmsegmentation modules of the DINOv2 linear segmentation protocol: a frozen ViT backbone and `BNHead`.

Importing this module registers `DinoVisionTransformerBackbone` and `BNHead` in `mmseg.registry.MODELS` and
`LoadRGBImageFromFile` in `mmseg.registry.TRANSFORMS` (mmseg's plugin mechanism: configs name it in
`custom_imports`). Registration needs `mmseg.models`, which
imports `mmcv.ops`, so the import first makes sure `mmcv._ext` is importable: the stand-in of
`eval.segmentation.mmcv_ext` is registered when (and only when) no compiled mmcv extension exists. These
registrations are the module's only import-time effects.
"""

import logging
import math
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eval.segmentation.mmcv_ext import install_mmcv_ext_standin

install_mmcv_ext_standin()

from mmcv.cnn import build_norm_layer  # noqa: E402
from mmcv.transforms import BaseTransform  # noqa: E402
from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: E402
from mmseg.registry import MODELS, TRANSFORMS  # noqa: E402

from dinov2.data.decoding import decode_image  # noqa: E402
from dinov2.eval.setup import build_backbone_for_eval  # noqa: E402

logger = logging.getLogger(__name__)


def center_pad_to_multiple(images: Tensor, multiple: int) -> Tensor:
    """Zero-pad `images` [B, C, H, W] to [B, C, ceil(H/m)*m, ceil(W/m)*m], the extra rows/columns split
    evenly with the odd one at the bottom/right (DINOv2's `CenterPadding`)."""
    height, width = images.shape[-2:]
    pad_h = math.ceil(height / multiple) * multiple - height
    pad_w = math.ceil(width / multiple) * multiple - width
    if pad_h == 0 and pad_w == 0:
        return images
    return F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


def resolve_block_indices(out_indices: Sequence[int], n_blocks: int) -> list[int]:
    """Map block indices that may count from the end (-1 = last block) to 0-based indices, checking range."""
    resolved = [index + n_blocks if index < 0 else index for index in out_indices]
    bad = [index for index, block in zip(out_indices, resolved, strict=True) if not 0 <= block < n_blocks]
    if bad or not resolved:
        raise ValueError(
            f"model.backbone.out_indices={list(out_indices)} must be a non-empty list of block indices in "
            f"[-{n_blocks}, {n_blocks - 1}] for this {n_blocks}-block backbone (out of range: {bad}); "
            "use (-1,) for the last block or (-4, -3, -2, -1) for the last four"
        )
    return resolved


@TRANSFORMS.register_module()
class LoadRGBImageFromFile(BaseTransform):
    """mmcv's `LoadImageFromFile` through `dinov2.data.decoding.decode_image`, so 16-bit, float, CMYK and
    transparent images are converted as in training. Sets `img` (uint8 [H, W, 3] in BGR order, the layout
    the segmentation data preprocessor's `bgr_to_rgb` expects), `img_shape` and `ori_shape`."""

    def transform(self, results: dict) -> dict:
        image = np.ascontiguousarray(np.asarray(decode_image(results["img_path"]))[..., ::-1])
        results["img"] = image
        results["img_shape"] = image.shape[:2]
        results["ori_shape"] = image.shape[:2]
        return results


@MODELS.register_module()
class DinoVisionTransformerBackbone(nn.Module):
    """Frozen project ViT giving LayerNorm-ed patch-token maps of selected blocks (mmseg backbone).

    The ViT is built and its weights loaded by `dinov2.eval.setup.build_backbone_for_eval`, so every checkpoint
    format the shared loader accepts works: a training config plus `teacher_checkpoint.pth`, or hub-format
    weights described by `arch`, `patch_size` and `num_register_tokens`. Every ViT parameter has
    `requires_grad=False`, the ViT runs under `torch.no_grad()` and stays in eval mode when the segmentor is put
    in training mode. The module has no `init_weights`, so mmengine's weight initialisation (run by
    `Runner.train`) never touches the loaded weights.

    Args:
        config_file, pretrained_weights, arch, patch_size, num_register_tokens, weights, opts: passed to
            `build_backbone_for_eval` (see `dinov2.eval.setup.add_backbone_args` for their meaning).
        out_indices: blocks whose outputs are returned, negative values counting from the end. (-1,) is the
            DINOv2 linear protocol (its head reads the last block only), (-4, -3, -2, -1) the "+ms" one.
    """

    def __init__(
        self,
        *,
        config_file: str | None = None,
        pretrained_weights: str | None = None,
        arch: str | None = None,
        patch_size: int | None = None,
        num_register_tokens: int | None = None,
        weights: str | None = None,
        opts: Sequence[str] = (),
        out_indices: Sequence[int] = (-1,),
    ) -> None:
        super().__init__()
        self.vit = build_backbone_for_eval(
            config_file=config_file,
            pretrained_weights=pretrained_weights,
            arch=arch,
            patch_size=patch_size,
            num_register_tokens=num_register_tokens,
            weights=weights,
            opts=tuple(opts),
        )
        self.vit.requires_grad_(False)
        self.vit.eval()
        self.block_indices = resolve_block_indices(out_indices, self.vit.n_blocks)
        self.patch_size: int = self.vit.patch_size
        self.embed_dim: int = self.vit.embed_dim
        logger.info(
            "OPTIONS -- segmentation backbone: %d blocks, width %d, patch %d, %d register tokens, frozen; "
            "returning blocks %s",
            self.vit.n_blocks,
            self.embed_dim,
            self.patch_size,
            self.vit.num_register_tokens,
            self.block_indices,
        )

    def train(self, mode: bool = True) -> "DinoVisionTransformerBackbone":
        """Set the wrapper's mode; the frozen ViT always stays in eval mode."""
        super().train(mode)
        self.vit.eval()
        return self

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """images: [B, 3, H, W] normalised -> one [B, D, ceil(H/p), ceil(W/p)] map per selected block.

        The input is centre-padded with zeros to a multiple of the patch size; each map holds the patch
        tokens (class and register tokens removed) after the ViT's final LayerNorm.
        """
        padded = center_pad_to_multiple(images, self.patch_size)
        with torch.no_grad():
            maps = self.vit.get_intermediate_layers(padded, n=self.block_indices, reshape=True, norm=True)
        return tuple(maps)


@MODELS.register_module()
class BNHead(BaseDecodeHead):
    """DINOv2's linear segmentation head: selected maps resized to the first one and concatenated, then
    BatchNorm and a 1x1 convolution to the class logits (`conv_seg`, initialised Normal(0, 0.01)).

    inputs: tuple of [B, D_i, h, w] maps -> logits [B, num_classes, h, w]. Trainable parameters:
    2*C (BatchNorm affine) + C*num_classes + num_classes (convolution), with C = sum of the selected D_i.

    Args:
        in_channels: channels of the selected maps (one entry per `in_index`).
        channels: channels after concatenation; must equal sum(in_channels) (DINOv2 config key).
        num_classes: number of classes (150 for ADE20K).
        in_index: which backbone outputs the head reads.
        norm_cfg: mmcv norm layer config; `SyncBN` as in DINOv2 (mmengine reverts it to BN when a run is not
            distributed), `BN` for single-process use.
        dropout_ratio: dropout before the convolution (0 in DINOv2's configs).
        input_transform, align_corners, loss_decode, ignore_index: as in mmseg's `BaseDecodeHead`.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        in_index: Sequence[int],
        norm_cfg: dict | None = None,
        dropout_ratio: float = 0.0,
        input_transform: Literal["resize_concat"] = "resize_concat",
        align_corners: bool = False,
        loss_decode: dict | None = None,
        ignore_index: int = 255,
    ) -> None:
        if input_transform != "resize_concat":
            raise ValueError(
                f"model.decode_head.input_transform={input_transform!r} is not one of ['resize_concat']; "
                "BNHead concatenates the selected maps"
            )
        if channels != sum(in_channels):
            raise ValueError(
                f"model.decode_head.channels={channels} must equal sum(in_channels)={sum(in_channels)} "
                f"(in_channels={list(in_channels)}): BNHead normalises the concatenated maps directly"
            )
        super().__init__(
            list(in_channels),
            channels,
            num_classes=num_classes,
            in_index=list(in_index),
            input_transform=input_transform,
            dropout_ratio=dropout_ratio,
            norm_cfg=norm_cfg or dict(type="SyncBN", requires_grad=True),
            align_corners=align_corners,
            loss_decode=loss_decode or dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
            ignore_index=ignore_index,
        )
        self.bn = build_norm_layer(self.norm_cfg, self.in_channels)[1]

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """inputs: backbone maps [B, D_i, h, w] -> logits [B, num_classes, h, w]."""
        features = self._transform_inputs(inputs)
        return self.cls_seg(self.bn(features))
