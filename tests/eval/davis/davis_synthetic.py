"""Synthetic DAVIS folders and feature extractors with known answers, shared by the DAVIS tests."""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from eval.davis.layout import write_label_map

Video = tuple[list[np.ndarray], list[np.ndarray]]  # RGB frames uint8 [H, W, 3], label maps uint8 [H, W]


def write_davis_sequence(root: Path, name: str, frames: list[np.ndarray], labels: list[np.ndarray]) -> None:
    """Write one sequence in the DAVIS layout: JPEG frames (quality 95, no chroma subsampling), palette PNGs."""
    frame_dir = root / "JPEGImages" / "480p" / name
    frame_dir.mkdir(parents=True, exist_ok=True)
    for index, (frame, label) in enumerate(zip(frames, labels, strict=True)):
        Image.fromarray(frame).save(frame_dir / f"{index:05d}.jpg", quality=95, subsampling=0)
        write_label_map(root / "Annotations" / "480p" / name / f"{index:05d}.png", label)


def write_sequence_list(root: Path, names: list[str], split: str = "val") -> None:
    list_dir = root / "ImageSets" / "2017"
    list_dir.mkdir(parents=True, exist_ok=True)
    (list_dir / f"{split}.txt").write_text("".join(f"{name}\n" for name in names))


def textured_background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Grey-green noise, blurred over 3x3 blocks so that it survives JPEG: uint8 [H, W, 3]."""
    noise = rng.uniform(60, 190, size=(height // 3 + 1, width // 3 + 1, 3))
    noise[..., 1] += 20
    return np.kron(noise, np.ones((3, 3, 1)))[:height, :width].clip(0, 255).astype(np.uint8)


def object_texture(height: int, width: int, kind: int) -> np.ndarray:
    """Object appearance: kind 1 = red with vertical stripes, kind 2 = blue checkerboard. uint8 [h, w, 3]."""
    rows, cols = np.mgrid[0:height, 0:width]
    texture = np.zeros((height, width, 3), dtype=np.float64)
    if kind == 1:
        stripe = (cols // 4) % 2
        texture[..., 0] = 230 - 40 * stripe
        texture[..., 1] = 30 + 20 * stripe
        texture[..., 2] = 40
    else:
        checker = ((rows // 5) + (cols // 5)) % 2
        texture[..., 0] = 30
        texture[..., 1] = 60 + 50 * checker
        texture[..., 2] = 220 - 30 * checker
    return texture.astype(np.uint8)


def translating_objects_video(
    *,
    n_frames: int,
    height: int,
    width: int,
    objects: list[tuple[int, int, int, int, int, int]],
    seed: int = 0,
) -> Video:
    """Objects (top, left, h, w, dy, dx per frame) of kinds 1, 2, ... moving over a static textured background."""
    rng = np.random.default_rng(seed)
    background = textured_background(height, width, rng)
    frames, labels = [], []
    for t in range(n_frames):
        frame = background.copy()
        label = np.zeros((height, width), dtype=np.uint8)
        for index, (top, left, obj_h, obj_w, dy, dx) in enumerate(objects, start=1):
            y, x = top + dy * t, left + dx * t
            frame[y : y + obj_h, x : x + obj_w] = object_texture(obj_h, obj_w, index)
            label[y : y + obj_h, x : x + obj_w] = index
        frames.append(frame)
        labels.append(label)
    return frames, labels


class PositionTextureBackbone(nn.Module):
    """Patch features = appearance of the patch (colour of its four quarter-patches) + a position code.

    Stands in for a trained ViT: patches of the same texture at nearby positions are similar, so label
    propagation can follow objects. Implements the `get_intermediate_layers` contract (patch tokens only).
    """

    def __init__(self, *, patch_size: int = 8, position_weight: float = 1.0) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.position_weight = position_weight

    def get_intermediate_layers(self, x: Tensor, n: int = 1, *, norm: bool = True) -> tuple[Tensor, ...]:
        batch, _, height, width = x.shape
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        quarters = F.avg_pool2d(x, self.patch_size // 2)  # [B, 3, 2h, 2w]
        appearance = F.pixel_unshuffle(quarters, 2)  # [B, 12, h, w]
        rows = torch.arange(grid_h, dtype=x.dtype).view(-1, 1).expand(grid_h, grid_w) / 8
        cols = torch.arange(grid_w, dtype=x.dtype).view(1, -1).expand(grid_h, grid_w) / 8
        position = torch.stack([rows.sin(), rows.cos(), cols.sin(), cols.cos()])  # [4, h, w]
        position = self.position_weight * position.expand(batch, -1, -1, -1)
        features = torch.cat([appearance, position], dim=1)  # [B, 16, h, w]
        return (features.flatten(2).transpose(1, 2),)


class ColourClassBackbone(nn.Module):
    """Oracle features: one-hot of the patch's dominant colour class (dark / bright), [B, P, 2]."""

    def __init__(self, *, patch_size: int = 8) -> None:
        super().__init__()
        self.patch_size = patch_size

    def get_intermediate_layers(self, x: Tensor, n: int = 1, *, norm: bool = True) -> tuple[Tensor, ...]:
        brightness = F.avg_pool2d(x.mean(dim=1, keepdim=True), self.patch_size)  # [B, 1, h, w]
        bright = (brightness > 0).float()
        features = torch.cat([bright, 1 - bright], dim=1)
        return (features.flatten(2).transpose(1, 2),)
