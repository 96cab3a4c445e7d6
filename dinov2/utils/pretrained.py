"""Released weights into a training run: geometry of a checkpoint, FlexiViT patch resize, position-embedding resize.

`load_pretrained_weights(backbone, path, ...)` is what `student.pretrained_weights` does: it reads any format
of `dinov2.utils.checkpoint.ACCEPTED_FORMATS`, converts the patch-embedding kernel to the run's patch size
(FlexiViT pseudo-inverse resize, Beyer et al. 2023, "FlexiViT: One Model for All Patch Sizes", eq. 4) and the
position embedding to the run's grid (bicubic, the backbone's own interpolation rule), then loads strictly.
Width, depth, register count, LayerScale and FFN type are never converted: a difference stays a
`CheckpointMismatchError` naming it.
"""

import dataclasses
import logging
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2.utils.checkpoint import check_backbone_state_dict, load_backbone_state_dict

logger = logging.getLogger(__name__)

# The FlexiViT resize operator: bicubic with antialiasing (as the official SimDINO fork resizes patch kernels).
_PATCH_RESIZE_MODE = "bicubic"


@dataclasses.dataclass(frozen=True)
class CheckpointGeometry:
    """Shapes read from a backbone state dict: patch size p, position-embedding grid side M (img size = M p)."""

    patch_size: int
    grid_size: int
    has_mask_token: bool

    @property
    def img_size(self) -> int:
        return self.patch_size * self.grid_size


def checkpoint_geometry(state_dict: dict[str, Tensor], source: str = "checkpoint") -> CheckpointGeometry:
    """Patch size (from `patch_embed.proj.weight` [D, C, p, p]) and grid side (from `pos_embed` [1, 1 + M^2, D])."""
    for key in ("patch_embed.proj.weight", "pos_embed"):
        if key not in state_dict:
            raise ValueError(f"{source} has no {key!r}: cannot read its patch size and grid")
    kernel = state_dict["patch_embed.proj.weight"]
    if kernel.ndim != 4 or kernel.shape[-1] != kernel.shape[-2]:
        raise ValueError(f"{source}: patch_embed.proj.weight has shape {tuple(kernel.shape)}, not [D, C, p, p]")
    n_grid = state_dict["pos_embed"].shape[1] - 1
    side = math.isqrt(n_grid)
    if side * side != n_grid:
        raise ValueError(f"{source}: pos_embed holds {n_grid} patch rows, not a square grid")
    return CheckpointGeometry(patch_size=kernel.shape[-1], grid_size=side, has_mask_token="mask_token" in state_dict)


def _resize_matrix(old_size: int, new_size: int) -> Tensor:
    """The linear resize operator B [new^2, old^2] (float64): B @ patch.flatten() = resize(patch).flatten()."""
    basis = torch.eye(old_size * old_size, dtype=torch.float64).reshape(-1, 1, old_size, old_size)
    resized = F.interpolate(basis, size=(new_size, new_size), mode=_PATCH_RESIZE_MODE, antialias=True)
    return resized.reshape(old_size * old_size, new_size * new_size).T


def resize_patch_embed_kernel(kernel: Tensor, new_patch_size: int) -> Tensor:
    """FlexiViT pseudo-inverse resize of a patch-embedding kernel [D, C, p, p] -> [D, C, p', p'].

    Solves <x, w> = <B x, w'> for every patch x in the least-squares sense, where B is the bicubic
    (antialiased) resize p x p -> p' x p': w' = pinv(B^T) w. For p' >= p, B has full column rank and a
    resized patch gives exactly the original token; for p' < p the tokens are the closest possible.
    Computed in float64, returned in the kernel's dtype.
    """
    old_size = kernel.shape[-1]
    if old_size == new_patch_size:
        return kernel
    resize = _resize_matrix(old_size, new_patch_size)  # B [p'^2, p^2]
    flat = kernel.detach().to(torch.float64).reshape(-1, old_size * old_size)  # rows are w^T
    resized = flat @ torch.linalg.pinv(resize)  # (pinv(B^T) w)^T = w^T pinv(B)
    return resized.reshape(*kernel.shape[:2], new_patch_size, new_patch_size).to(kernel.dtype)


def resize_patch(patch: Tensor, new_patch_size: int) -> Tensor:
    """The resize operator B applied to patches [..., C, p, p] -> [..., C, p', p'] (float64 maths)."""
    old_size = patch.shape[-1]
    flat = patch.to(torch.float64).reshape(-1, old_size * old_size)
    resized = flat @ _resize_matrix(old_size, new_patch_size).T
    return resized.reshape(*patch.shape[:-2], new_patch_size, new_patch_size).to(patch.dtype)


def resize_pos_embed(
    pos_embed: Tensor, new_grid_size: int, *, interpolate_offset: float, interpolate_antialias: bool
) -> Tensor:
    """Position embedding [1, 1 + M^2, D] -> [1, 1 + G^2, D] by bicubic interpolation of the patch rows.

    The same rule `DinoVisionTransformer.interpolate_pos_encoding` applies on the fly (float32; scale
    factor `(G + offset) / M` when `interpolate_offset` != 0, else the explicit size G), so a model with
    the resized table computes at its own grid what the checkpoint's model computed at that resolution.
    The CLS row is kept.
    """
    n_grid = pos_embed.shape[1] - 1
    side = math.isqrt(n_grid)
    if side == new_grid_size:
        return pos_embed
    dim = pos_embed.shape[-1]
    patch_rows = pos_embed[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if interpolate_offset:
        scale = (new_grid_size + interpolate_offset) / side
        resized = F.interpolate(
            patch_rows, scale_factor=(scale, scale), mode="bicubic", antialias=interpolate_antialias
        )
    else:
        resized = F.interpolate(
            patch_rows, size=(new_grid_size, new_grid_size), mode="bicubic", antialias=interpolate_antialias
        )
    assert resized.shape[-2:] == (new_grid_size, new_grid_size), f"resized grid {tuple(resized.shape[-2:])}"
    resized = resized.permute(0, 2, 3, 1).reshape(1, new_grid_size * new_grid_size, dim)
    return torch.cat([pos_embed[:, :1].float(), resized], dim=1).to(pos_embed.dtype)


def convert_pretrained_state_dict(
    backbone: nn.Module,
    state_dict: dict[str, Tensor],
    *,
    pretrained_img_size: int | None = None,
    pretrained_patch_size: int | None = None,
    source: str = "checkpoint",
) -> tuple[dict[str, Tensor], CheckpointGeometry]:
    """Backbone tensors of a checkpoint converted to `backbone`'s patch size and grid, checked strictly.

    Args:
        backbone: the run's DinoVisionTransformer (patch size and grid from `student.patch_size` and
            `crops.global_crops_size`); not modified.
        state_dict: backbone tensors as `dinov2.utils.checkpoint.load_backbone_state_dict` returns them.
        pretrained_img_size, pretrained_patch_size: what the file is expected to hold
            (`student.pretrained_img_size` / `student.pretrained_patch_size`, e.g. 518 / 14 for the DINOv2 hub
            files); None reads them from the file. A file that disagrees is refused (ValueError).
        source: how errors name the file.

    The patch-embedding kernel [D, C, p, p] is converted to the backbone's patch size with the FlexiViT
    pseudo-inverse resize and the position embedding [1, 1 + M^2, D] to its grid by bicubic interpolation.
    Everything else must match exactly (CheckpointMismatchError naming the config keys otherwise); a
    missing mask token (SimDINO v1 / DINO-v1 layout) is allowed. Returns the state dict keyed like
    `backbone.state_dict()` and the geometry of the file.
    """
    geometry = checkpoint_geometry(state_dict, source)
    declared = {
        "student.pretrained_patch_size": (pretrained_patch_size, geometry.patch_size),
        "student.pretrained_img_size": (pretrained_img_size, geometry.img_size),
    }
    for key, (expected, found) in declared.items():
        if expected is not None and expected != found:
            raise ValueError(
                f"{key}={expected} but {source} holds {found} (patch {geometry.patch_size}, grid "
                f"{geometry.grid_size}x{geometry.grid_size}); fix {key} or set it to null to read it from the file"
            )
    patch_size = int(backbone.patch_size)  # type: ignore[arg-type]
    grid_size = math.isqrt(backbone.pos_embed.shape[1] - 1)  # type: ignore[union-attr, operator]
    converted = dict(state_dict)
    if geometry.patch_size != patch_size:
        converted["patch_embed.proj.weight"] = resize_patch_embed_kernel(
            state_dict["patch_embed.proj.weight"], patch_size
        )
    if geometry.grid_size != grid_size:
        converted["pos_embed"] = resize_pos_embed(
            state_dict["pos_embed"],
            grid_size,
            interpolate_offset=float(backbone.interpolate_offset),  # type: ignore[arg-type]
            interpolate_antialias=bool(backbone.interpolate_antialias),
        )
    allowed_missing = () if geometry.has_mask_token else ("mask_token",)
    checked = check_backbone_state_dict(
        backbone, converted, allowed_missing=allowed_missing, source=source, entry_point="train"
    )
    return checked, geometry


def load_pretrained_weights(
    backbone: nn.Module,
    path: str | os.PathLike,
    *,
    pretrained_img_size: int | None = None,
    pretrained_patch_size: int | None = None,
) -> CheckpointGeometry:
    """`student.pretrained_weights`: read `path` (any of `ACCEPTED_FORMATS`), convert, load into `backbone`.

    See `convert_pretrained_state_dict` for the conversion and the checks; the backbone is untouched on any
    error. A checkpoint without a mask token keeps the backbone's zero-initialised one. Returns the
    geometry (patch size, grid) of the file.
    """
    source = f"student.pretrained_weights={os.fspath(path)}"
    checked, geometry = convert_pretrained_state_dict(
        backbone,
        load_backbone_state_dict(path),
        pretrained_img_size=pretrained_img_size,
        pretrained_patch_size=pretrained_patch_size,
        source=source,
    )
    incompatible = backbone.load_state_dict(checked, strict=geometry.has_mask_token)
    assert not incompatible.unexpected_keys, f"unexpected keys after checking: {incompatible.unexpected_keys}"
    patch_size = int(backbone.patch_size)  # type: ignore[arg-type]
    grid_size = math.isqrt(backbone.pos_embed.shape[1] - 1)  # type: ignore[union-attr, operator]
    logger.info(
        "loaded %d backbone tensors from %s: patch %d -> %d, grid %dx%d -> %dx%d%s",
        len(checked),
        source,
        geometry.patch_size,
        patch_size,
        geometry.grid_size,
        geometry.grid_size,
        grid_size,
        grid_size,
        "; no mask token in the file (DINO-v1 layout): kept the zero init" if not geometry.has_mask_token else "",
    )
    return geometry
