"""Semi-supervised video object segmentation by label propagation (the DINO DAVIS protocol).

Per sequence, with the backbone's last-block patch features (after the final norm):

1. every frame is resized so that its short side is 480 px and its long side is floor(480 · ratio / 64) · 64
   px (OpenCV bilinear), normalised with mean (0.485, 0.456, 0.406) and std (0.228, 0.224, 0.225), and
   cut at the bottom / right to a multiple of the patch size;
2. the first annotation is downsampled (nearest) to the patch grid and one-hot encoded;
3. frame t's soft labels are a weighted sum of the labels of the context: frame 0 (one-hot) and the
   `n_last_frames` most recent predicted frames (soft). The weights are exp(cos(f_target, f_source) / 0.1),
   restricted to sources within `size_mask_neighborhood` patches (square window) of the target patch,
   then only the `topk` largest over the whole context are kept (ties at the k-th value kept) and the rest
   renormalised to sum to one;
4. the soft labels are upsampled by the patch size (bilinear), each channel with a positive maximum is
   min-max normalised, and the argmax is resized (nearest) to the frame's original size and written as a
   palette PNG under `output_dir/<seq>/<frame>.png`. Frame 0's output is the given annotation.

Deviations from DINO's script (results are equal on DAVIS): features are computed `batch_size` frames at
a time; a void label (255) in the first annotation is mapped to background before the one-hot encoding;
the annotation's grid uses the same size rule as the frames (DINO's two rules disagree only for square
frames); frame sizes that the patch size does not divide are cut to a multiple (DINO needs a patch size
dividing 480 and 64); the short side is an argument (default 480).
"""

import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from dinov2.data.decoding import decode_image
from eval.davis.layout import (
    VOID_LABEL,
    annotation_paths,
    frame_paths,
    read_label_map,
    read_sequence_names,
    write_label_map,
)

logger = logging.getLogger(__name__)

FRAME_MEAN = (0.485, 0.456, 0.406)
FRAME_STD = (0.228, 0.224, 0.225)  # DINO's value (0.228, not ImageNet's 0.229), kept for parity
SIZE_MULTIPLE = 64  # the long side is rounded down to a multiple of this


class PatchBackbone(Protocol):
    """What propagation needs from a backbone (DinoVisionTransformer provides it)."""

    patch_size: int

    def get_intermediate_layers(self, x: Tensor, n: int = 1, *, norm: bool = True) -> tuple[Any, ...]:
        """x [B, 3, H, W] -> tuple of n patch-token tensors [B, (H/p)·(W/p), D] (no class/register tokens)."""
        ...


@dataclass(frozen=True, kw_only=True)
class PropagationConfig:
    """Label propagation settings; the defaults are DINO's."""

    n_last_frames: int = 7  # predicted frames kept as context besides frame 0
    size_mask_neighborhood: int = 12  # window radius in patches; 0 disables the window
    topk: int = 5  # weights kept per target patch, jointly over all context frames
    temperature: float = 0.1  # affinity = exp(cosine / temperature)
    short_side: int = 480  # frames are resized to this short side
    batch_size: int = 8  # frames per backbone forward

    def __post_init__(self) -> None:
        checks = {
            "n_last_frames": self.n_last_frames >= 0,
            "size_mask_neighborhood": self.size_mask_neighborhood >= 0,
            "topk": self.topk >= 1,
            "temperature": self.temperature > 0,
            "short_side": self.short_side >= SIZE_MULTIPLE,
            "batch_size": self.batch_size >= 1,
        }
        bounds = {
            "n_last_frames": ">= 0",
            "size_mask_neighborhood": ">= 0",
            "topk": ">= 1",
            "temperature": "> 0",
            "short_side": f">= {SIZE_MULTIPLE}",
            "batch_size": ">= 1",
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"{key}={getattr(self, key)!r} must be {bounds[key]}; fix --{key.replace('_', '-')}")


def resized_frame_size(height: int, width: int, short_side: int = 480) -> tuple[int, int]:
    """(th, tw) of DINO's frame resizing: short side -> `short_side`, long side rounded down to a multiple of 64.

    480x854 -> (480, 832); 854x480 -> (832, 480); 480x1152 -> (480, 1152).
    """
    if height > width:
        return int((short_side * height / width) // SIZE_MULTIPLE * SIZE_MULTIPLE), short_side
    return short_side, int((short_side * width / height) // SIZE_MULTIPLE * SIZE_MULTIPLE)


def patch_grid(height: int, width: int, *, patch_size: int, short_side: int = 480) -> tuple[int, int]:
    """Patch grid (h, w) of a frame of original size (height, width) after resizing."""
    resized_height, resized_width = resized_frame_size(height, width, short_side)
    return resized_height // patch_size, resized_width // patch_size


def read_frame(path: str | Path, *, patch_size: int, short_side: int = 480) -> tuple[Tensor, tuple[int, int]]:
    """Read and normalise one frame -> (float32 [3, h·p, w·p], original (H, W))."""
    image = np.asarray(decode_image(path))  # RGB uint8 [H, W, 3]
    height, width = image.shape[:2]
    resized_height, resized_width = resized_frame_size(height, width, short_side)
    image = cv2.resize(image, (resized_width, resized_height), interpolation=cv2.INTER_LINEAR)
    grid_height, grid_width = resized_height // patch_size, resized_width // patch_size
    image = image[: grid_height * patch_size, : grid_width * patch_size]
    frame = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(FRAME_MEAN).view(3, 1, 1)
    std = torch.tensor(FRAME_STD).view(3, 1, 1)
    return (frame - mean) / std, (height, width)


def first_frame_labels(annotation: np.ndarray, grid: tuple[int, int]) -> Tensor:
    """One-hot labels of the first annotation on the patch grid: uint8 [H, W] -> float32 [C, h, w].

    C = (largest object index) + 1; void (255) counts as background. The downsampling is PIL NEAREST.
    """
    labels = np.where(annotation == VOID_LABEL, 0, annotation).astype(np.uint8)
    n_channels = int(labels.max()) + 1
    grid_height, grid_width = grid
    small = np.array(Image.fromarray(labels).resize((grid_width, grid_height), Image.NEAREST))
    one_hot = F.one_hot(torch.from_numpy(small).long(), n_channels)  # [h, w, C]
    return one_hot.permute(2, 0, 1).float()


def neighborhood_mask(height: int, width: int, radius: int, *, device: torch.device | None = None) -> Tensor:
    """bool [h·w (target), h·w (source)]: True where |Δrow| <= radius and |Δcol| <= radius."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= radius
    near_cols = (cols[:, None] - cols[None, :]).abs() <= radius
    return near_rows & near_cols


def propagate_labels(
    target_features: Tensor,
    context_features: Tensor,
    context_labels: Tensor,
    *,
    topk: int,
    temperature: float,
    neighborhood: Tensor | None = None,
) -> Tensor:
    """Soft labels of one target frame from its context.

    target_features: [P, D] and context_features: [N, P, D], both L2-normalised per patch;
    context_labels: [N, C, P] (one-hot or soft, each patch summing to 1);
    neighborhood: bool [P (target), P (source)] or None for no window.
    Returns [C, P]: for each target patch, the weighted mean of the context labels with the weights
    exp(cos / temperature) (zero outside the window), of which only the `topk` largest over all N·P sources
    are kept (ties at the k-th value kept), renormalised to sum to one.
    """
    n_context, n_patches, _ = context_features.shape
    if topk > n_context * n_patches:
        raise ValueError(f"topk={topk} exceeds the {n_context * n_patches} context patches; lower --topk")
    sources_features = context_features.reshape(n_context * n_patches, -1)  # [N·P, D], frame-major
    affinity = (target_features @ sources_features.T).div_(temperature).exp_()  # [P target, N·P source]
    if neighborhood is not None:
        affinity.view(n_patches, n_context, n_patches).mul_(neighborhood[:, None, :])
    kth_largest = torch.topk(affinity, k=topk, dim=1).values[:, -1:]
    affinity.masked_fill_(affinity < kth_largest, 0.0)
    weights = affinity.div_(affinity.sum(dim=1, keepdim=True))
    sources = context_labels.permute(0, 2, 1).reshape(n_context * n_patches, -1)  # [N·P, C]
    return (weights @ sources).T.contiguous()


def soft_labels_to_index_map(labels: Tensor, *, patch_size: int) -> Tensor:
    """Soft labels [C, h, w] -> int64 index map [h·p, w·p].

    Bilinear upsampling by the patch size, then each channel whose maximum is positive is min-max
    normalised, then argmax over channels. As in DINO, a channel that is constant and positive becomes
    NaN (0/0) and wins the argmax.
    """
    upsampled = F.interpolate(
        labels[None], scale_factor=patch_size, mode="bilinear", align_corners=False, recompute_scale_factor=False
    )[0]
    shifted = upsampled - upsampled.amin(dim=(1, 2), keepdim=True)
    normalised = torch.where(
        upsampled.amax(dim=(1, 2), keepdim=True) > 0, shifted / shifted.amax(dim=(1, 2), keepdim=True), upsampled
    )
    return torch.max(normalised, dim=0).indices


@torch.inference_mode()
def extract_patch_features(model: PatchBackbone, frames: Tensor) -> Tensor:
    """Last-block patch features, L2-normalised: frames [B, 3, h·p, w·p] -> [B, h·w, D]."""
    features = model.get_intermediate_layers(frames, n=1, norm=True)[0]
    expected = (frames.shape[-2] // model.patch_size) * (frames.shape[-1] // model.patch_size)
    if features.ndim != 3 or features.shape[1] != expected:
        raise ValueError(
            f"backbone returned patch features of shape {tuple(features.shape)} for frames "
            f"{tuple(frames.shape)}; expected [B, {expected}, D] (patch tokens only, patch size {model.patch_size})"
        )
    return F.normalize(features.float(), dim=-1, p=2)


def _sequence_features(
    model: PatchBackbone, paths: Sequence[Path], *, config: PropagationConfig, device: torch.device
) -> Iterator[tuple[Tensor, tuple[int, int]]]:
    """Yield (normalised features [h·w, D] on `device`, original (H, W)) per frame, computed in batches."""
    for start in range(0, len(paths), config.batch_size):
        batch = [
            read_frame(path, patch_size=model.patch_size, short_side=config.short_side)
            for path in paths[start : start + config.batch_size]
        ]
        sizes = {size for _, size in batch}
        if len(sizes) != 1:
            raise ValueError(f"frames {paths[start]} .. have different sizes {sorted(sizes)}; a sequence needs one")
        features = extract_patch_features(model, torch.stack([frame for frame, _ in batch]).to(device))
        for frame_features, (_, size) in zip(features, batch, strict=True):
            yield frame_features, size


@torch.inference_mode()
def propagate_sequence(
    model: PatchBackbone,
    frame_files: Sequence[Path],
    first_annotation: np.ndarray,
    *,
    config: PropagationConfig,
    device: torch.device,
) -> Iterator[np.ndarray]:
    """Yield the uint8 [H, W] index map of every frame; frame 0's is `first_annotation` itself."""
    first_height, first_width = first_annotation.shape
    grid = patch_grid(first_height, first_width, patch_size=model.patch_size, short_side=config.short_side)
    first_labels = first_frame_labels(first_annotation, grid).flatten(1).to(device)  # [C, P]
    neighborhood = None
    if config.size_mask_neighborhood > 0:
        neighborhood = neighborhood_mask(*grid, config.size_mask_neighborhood, device=device)
    queue: deque[tuple[Tensor, Tensor]] = deque(maxlen=config.n_last_frames)
    first_features: Tensor | None = None
    for index, (features, (height, width)) in enumerate(
        _sequence_features(model, frame_files, config=config, device=device)
    ):
        if (height, width) != (first_height, first_width):
            raise ValueError(
                f"frame {frame_files[index]} is {height}x{width} but the first annotation is "
                f"{first_height}x{first_width}; frames and annotations of a sequence must share one size"
            )
        if first_features is None:
            first_features = features
            yield first_annotation
            continue
        context_features = torch.stack([first_features] + [item[0] for item in queue])  # [N, P, D]
        context_labels = torch.stack([first_labels] + [item[1] for item in queue])  # [N, C, P]
        labels = propagate_labels(
            features,
            context_features,
            context_labels,
            topk=config.topk,
            temperature=config.temperature,
            neighborhood=neighborhood,
        )  # [C, P]
        if config.n_last_frames > 0:
            queue.append((features, labels))
        index_map = soft_labels_to_index_map(labels.view(-1, *grid), patch_size=model.patch_size)
        small = index_map.to(device="cpu", dtype=torch.uint8).numpy()
        yield np.array(Image.fromarray(small).resize((width, height), Image.NEAREST))


def run_label_propagation(
    model: PatchBackbone,
    davis_root: str | Path,
    output_dir: str | Path,
    *,
    config: PropagationConfig,
    device: torch.device,
    split: str = "val",
    year: str = "2017",
    resolution: str = "480p",
    sequences: Sequence[str] | None = None,
) -> list[str]:
    """Propagate the first annotation of every sequence and write `output_dir/<seq>/<frame>.png`.

    `model` must already be on `device` and in eval mode. Returns the sequence names processed.
    """
    names = read_sequence_names(davis_root, split=split, year=year) if sequences is None else list(sequences)
    output_dir = Path(output_dir)
    logger.info(
        "label propagation over %d sequences of %s (%s), %s, on %s", len(names), davis_root, split, config, device
    )
    for number, sequence in enumerate(names, start=1):
        start = time.perf_counter()
        files = frame_paths(davis_root, sequence, resolution=resolution)
        first_annotation = read_label_map(annotation_paths(davis_root, sequence, resolution=resolution)[0])
        for path, index_map in zip(
            files,
            propagate_sequence(model, files, first_annotation, config=config, device=device),
            strict=True,
        ):
            write_label_map(output_dir / sequence / f"{path.stem}.png", index_map)
        logger.info(
            "propagation [%d/%d] %s: %d frames, %d objects (%.1f s)",
            number,
            len(names),
            sequence,
            len(files),
            int(np.where(first_annotation == VOID_LABEL, 0, first_annotation).max()),
            time.perf_counter() - start,
        )
    return names
