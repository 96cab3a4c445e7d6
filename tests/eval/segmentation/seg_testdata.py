"""Inputs of the segmentation tests: tiny ViT checkpoints and a generated ADE20K-layout dataset.

(A uniquely named module, not conftest.py, so that test modules can import it whatever other conftest
files the suite loads.)
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dinov2.eval.setup import build_backbone_for_eval

# ADE20K annotation values (0 = "other", ignored) and the colour each class is painted with. After
# reduce_zero_label the classes are 0 (wall), 2 (sky) and 4 (tree).
WALL, SKY, TREE = 1, 3, 5
CLASS_COLORS = {WALL: (128, 128, 128), SKY: (40, 90, 230), TREE: (30, 160, 40)}
IMAGE_SIZES = [(64, 80), (72, 64), (64, 64), (80, 72)]  # (height, width)


def tiny_backbone(*, patch_size: int = 8, depth: int = 2) -> dict:
    """`build_backbone_for_eval` arguments of a ViT-Ti (width 192) with `depth` blocks at 64 px."""
    return dict(arch="vit_tiny", patch_size=patch_size, opts=[f"student.depth={depth}", "crops.global_crops_size=64"])


def save_tiny_checkpoint(path: Path, **shape: int) -> dict:
    """Save hub-format weights (a plain backbone state dict) of a randomly initialised `tiny_backbone(**shape)`
    to `path`; returns the arguments that load them."""
    torch.manual_seed(0)
    kwargs = tiny_backbone(**shape)
    torch.save(build_backbone_for_eval(**kwargs).state_dict(), path)
    return dict(kwargs, pretrained_weights=str(path))


def _scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A wall with a sky rectangle and a tree disc, and a 2-pixel "other" (0) border; image [H, W, 3], labels."""
    labels = np.full((height, width), WALL, dtype=np.uint8)
    top, left = rng.integers(2, height // 3), rng.integers(2, width // 3)
    labels[top : top + height // 3, left : left + width // 2] = SKY
    cy, cx = rng.integers(height // 2, height - 12), rng.integers(12, width - 12)
    yy, xx = np.mgrid[:height, :width]
    labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 10**2] = TREE
    labels[:2] = 0
    image = np.zeros((height, width, 3), dtype=np.float64)
    for value, color in CLASS_COLORS.items():
        image[labels == value] = color
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_ade20k_like(root: Path, *, n_train: int = 4, n_val: int = 2, seed: int = 0) -> Path:
    """ADEChallengeData2016 layout: images/{training,validation}/*.jpg, annotations/.../*.png (same stems)."""
    rng = np.random.default_rng(seed)
    for split, count in (("training", n_train), ("validation", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for index in range(count):
            height, width = IMAGE_SIZES[index % len(IMAGE_SIZES)]
            image, labels = _scene(rng, height, width)
            stem = f"ADE_{split[:5]}_{index:08d}"
            Image.fromarray(image).save(root / "images" / split / f"{stem}.jpg", quality=95)
            Image.fromarray(labels).save(root / "annotations" / split / f"{stem}.png")
    return root
