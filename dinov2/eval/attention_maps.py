"""CLS-token self-attention maps of the last block (the SimDINO paper's Figure 5, after DINO).

`cls_attention_maps` averages the last block's softmax attention of the CLS query over the heads and keeps
the patch keys only (the CLS and register keys are dropped, so a map sums to the CLS token's attention
mass on the patches, below 1 when the CLS token attends to itself or to registers).
"""

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms import functional as TF

from dinov2.data.decoding import to_rgb
from dinov2.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from dinov2.models.vision_transformer import DinoVisionTransformer


def prepare_image(image: Image.Image, size: int, patch_size: int) -> tuple[Tensor, Image.Image]:
    """Resize the shorter side to `size` (bicubic), center-crop both sides to a multiple of `patch_size`.

    Returns the normalised tensor [3, H, W] (ImageNet mean / std, H and W multiples of `patch_size`) and the
    RGB image it was made from (H x W pixels), for overlays that line up with the patches.
    """
    if size < patch_size:
        raise ValueError(f"image size {size} is smaller than the patch size {patch_size}; pass --image-size >= it")
    resized = TF.resize(to_rgb(image), size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    width, height = resized.size
    cropped = TF.center_crop(resized, [height - height % patch_size, width - width % patch_size])
    return TF.normalize(TF.to_tensor(cropped), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD), cropped


def image_to_tensor(image: Image.Image, size: int, patch_size: int) -> Tensor:
    """The tensor of `prepare_image`: [3, H, W] float32, H and W multiples of `patch_size`."""
    return prepare_image(image, size, patch_size)[0]


@torch.no_grad()
def cls_attention_maps(model: DinoVisionTransformer, images: Tensor) -> Tensor:
    """Mean over heads of the last block's CLS -> patch attention, registers excluded.

    images: [B, 3, H, W] normalised, H and W multiples of the patch size.
    Returns [B, H / p, W / p]; each map sums to the CLS token's attention mass on the patches (<= 1).
    """
    patch = model.patch_size
    if images.shape[-2] % patch or images.shape[-1] % patch:
        raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {patch}")
    attention = model.get_last_selfattention(images)  # [B, heads, N, N], N = 1 + R + P
    first_patch = 1 + model.num_register_tokens
    cls_to_patches = attention[:, :, 0, first_patch:].mean(dim=1)  # [B, P]
    grid_h, grid_w = images.shape[-2] // patch, images.shape[-1] // patch
    return cls_to_patches.reshape(-1, grid_h, grid_w)


def upsample_maps(maps: Tensor, height: int, width: int) -> Tensor:
    """Nearest-neighbour upsampling of [B, h, w] maps to [B, height, width], rescaled to [0, 1] per map
    (a constant map becomes all zeros)."""
    upsampled = F.interpolate(maps[:, None], size=(height, width), mode="nearest")[:, 0]
    low = upsampled.flatten(1).min(dim=1).values[:, None, None]
    high = upsampled.flatten(1).max(dim=1).values[:, None, None]
    return (upsampled - low) / (high - low).clamp_min(1e-12)


def attention_overlays(
    model: DinoVisionTransformer, images: list[Image.Image], *, size: int, device: torch.device
) -> list[tuple[Image.Image, Tensor]]:
    """(shown image, heat map [H, W] in [0, 1] on the CPU) of every image, at the model's resolution `size`.

    The heat map is the upsampled `cls_attention_maps` of the image prepared by `prepare_image`; the shown
    image is that same resized, cropped image, so patches and pixels line up.
    """
    overlays = []
    for image in images:
        tensor, shown = prepare_image(image, size, model.patch_size)
        maps = cls_attention_maps(model, tensor[None].to(device))
        overlays.append((shown, upsample_maps(maps, tensor.shape[1], tensor.shape[2])[0].float().cpu()))
    return overlays


def save_attention_figure(
    rows: list[tuple[str, list[tuple[Image.Image, Tensor]]]],
    column_titles: list[str],
    path: str,
    *,
    title: str | None = None,
    show_images: bool = False,
) -> None:
    """Write a PNG grid: one row per model (`(row title, attention_overlays(...))`), one column per image,
    each cell the image with its heat map on top (inferno, alpha 0.6). `show_images` adds a first row with the
    plain images (taken from the first model's overlays)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows or any(len(cells) != len(column_titles) for _, cells in rows):
        raise ValueError(f"every row needs one overlay per column ({len(column_titles)} columns)")
    n_rows = len(rows) + int(show_images)
    figure, axes = plt.subplots(
        n_rows, len(column_titles), figsize=(2.6 * len(column_titles), 2.6 * n_rows), squeeze=False
    )
    if show_images:
        for axis, (shown, _), name in zip(axes[0], rows[0][1], column_titles, strict=True):
            axis.imshow(shown)
            axis.set_title(name, fontsize=9)
    for row_index, (row_title, cells) in enumerate(rows):
        for column, (shown, heat) in enumerate(cells):
            axis = axes[row_index + int(show_images), column]
            axis.imshow(shown)
            axis.imshow(heat.numpy(), cmap="inferno", alpha=0.6)
            if column == 0:
                axis.set_ylabel(row_title, fontsize=9)
            if row_index == 0 and not show_images:
                axis.set_title(column_titles[column], fontsize=9)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def save_image_and_attention(shown: Image.Image, heat: Tensor, path: str, *, title: str | None = None) -> None:
    """Write a PNG of the image (left) and the image with its heat map [H, W] on top (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 4.4))
    left.imshow(shown)
    left.set_title("image")
    right.imshow(shown)
    right.imshow(heat.numpy(), cmap="inferno", alpha=0.6)
    right.set_title("CLS attention, mean over heads")
    for axis in (left, right):
        axis.axis("off")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
