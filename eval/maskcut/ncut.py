"""Patch-level MaskCut: iterated Normalized Cut on a binary cosine-affinity graph of ViT patch features.

Written from the definitions in the MaskCut paper (Wang et al., "Cut and Learn for Unsupervised Object
Detection and Instance Segmentation", CVPR 2023) and TokenCut (Wang et al., CVPR 2022); the seed and corner
rules, drop rules and painting follow CutLER's `maskcut.py` (github.com/facebookresearch/CutLER), as
docs/maskcut.md describes.

One iteration on a grid of P = h * w patches with features F [P, D]:

1. rows of F are l2-normalised (zero rows stay zero), S = F Fᵀ;
2. A_ij = 1 if S_ij > tau else eps; d_i = sum_j A_ij;
3. v = generalised eigenvector of (D - A) v = λ D v for the second smallest λ (scaled so vᵀ D v = 1,
   as scipy's `eigh(D - A, D)` returns it; the sign is arbitrary);
4. fg = v > mean(v); the side and the seed follow `choose_foreground`;
5. the mask is the 4-connected component of fg that contains the seed.

Iterations 1..N-1 first zero the features of every patch covered by an earlier kept mask ("painting"),
then drop the new mask when its IoU with the previous kept mask is > 0.5 or it covers <= 1% of the grid.
"""

import logging
import time

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

logger = logging.getLogger(__name__)


def affinity_graph(features: Tensor, *, tau: float, eps: float = 1e-5) -> Tensor:
    """Binary cosine affinity: features [B, P, D] -> A [B, P, P] with 1 where cos > tau, else eps.

    Computed in float64 on the features' device. A zero feature row (a painted patch) has cosine 0 with
    everything, itself included, so its row and column are eps unless tau < 0.
    """
    unit = torch.nn.functional.normalize(features.to(torch.float64), dim=-1)
    similarity = unit @ unit.transpose(-1, -2)
    one = torch.ones((), dtype=similarity.dtype, device=similarity.device)
    return torch.where(similarity > tau, one, one * eps)


def second_smallest_eigenvectors(affinity: Tensor) -> Tensor:
    """Generalised NCut eigenvector of (D - A) v = λ D v for the second smallest λ; A [B, P, P] -> v [B, P].

    Solved batched on the affinity's device through the symmetric form
    L = I - D^-1/2 A D^-1/2, L u = λ u, v = D^-1/2 u; with |u| = 1 this gives vᵀ D v = 1, the
    normalisation of `scipy.linalg.eigh(D - A, D)`. The sign of each v is arbitrary.
    """
    if affinity.dim() != 3 or affinity.shape[-1] != affinity.shape[-2]:
        raise ValueError(f"affinity must be [B, P, P], got shape {tuple(affinity.shape)}")
    if affinity.shape[-1] < 2:
        raise ValueError(f"NCut needs at least 2 patches, got P={affinity.shape[-1]}")
    inv_sqrt_degree = affinity.sum(dim=-1).rsqrt()  # [B, P]
    normalized = affinity * inv_sqrt_degree[:, :, None] * inv_sqrt_degree[:, None, :]
    identity = torch.eye(affinity.shape[-1], dtype=affinity.dtype, device=affinity.device)
    _, eigenvectors = torch.linalg.eigh(identity - normalized)  # ascending eigenvalues
    return eigenvectors[..., 1] * inv_sqrt_degree


def estimate_eigensolve_seconds(n_patches: int, device: torch.device | str, *, calibration_size: int = 1024) -> float:
    """Seconds that one `second_smallest_eigenvectors` solve of a P x P graph takes on `device`, estimated.

    Times one dense float64 `eigh` of `calibration_size` (or P, when smaller) on `device` and scales it by the
    solver's cubic cost, (P / calibration_size) ** 3. A MaskCut image costs `n_masks` such solves. Measured
    against real solves (benchmarks/maskcut_eigensolve.py): within 10 % on one CPU thread up to P = 2,304; an
    upper bound with many threads or on a GPU, where larger solves run more efficiently (measured / estimate at
    P = 3,600: 0.5 on 16 CPU threads, 0.2 on an H100).
    """
    size = min(n_patches, calibration_size)
    generator = torch.Generator().manual_seed(0)
    matrix = torch.rand(size, size, dtype=torch.float64, generator=generator).to(device)
    matrix = matrix + matrix.T
    float(torch.linalg.eigh(matrix).eigenvalues[0])  # warm-up: the first calls set up the solver and workspace
    start = time.perf_counter()
    eigenvalues = torch.linalg.eigh(matrix).eigenvalues
    float(eigenvalues[0])  # waits for an asynchronous device
    return (time.perf_counter() - start) * (n_patches / size) ** 3


def choose_foreground(eigenvector: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Bipartition of the grid and the seed patch; eigenvector [h, w] -> (fg bool [h, w], (row, col)).

    fg = v > mean(v). With seed0 = argmax |v| and nc = number of the 4 grid corners inside fg, the sides
    are swapped when nc >= 3, or else when seed0 is outside fg. The seed is argmax(v), or argmax(-v) after
    a swap, so it always lies inside the returned foreground.
    """
    if eigenvector.ndim != 2:
        raise ValueError(f"eigenvector must be a [h, w] grid, got shape {eigenvector.shape}")
    foreground = eigenvector > eigenvector.mean()
    seed0 = np.unravel_index(np.argmax(np.abs(eigenvector)), eigenvector.shape)
    n_corners = int(foreground[0, 0]) + int(foreground[0, -1]) + int(foreground[-1, 0]) + int(foreground[-1, -1])
    reverse = n_corners >= 3 or not foreground[seed0]
    if reverse:
        foreground = ~foreground
        seed = np.unravel_index(np.argmax(-eigenvector), eigenvector.shape)
    else:
        seed = np.unravel_index(np.argmax(eigenvector), eigenvector.shape)
    return foreground, (int(seed[0]), int(seed[1]))


def seed_component(foreground: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The 4-connected component of foreground [h, w] (bool) that contains `seed` -> bool [h, w]."""
    if not foreground[seed]:
        raise ValueError(f"seed {seed} lies outside the foreground; choose_foreground always returns one inside")
    labels, _ = ndimage.label(foreground)  # default structure: 4-connectivity
    return labels == labels[seed]


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    if union == 0:
        return float("nan")
    return float(np.logical_and(a, b).sum() / union)


def ncut_patch_masks(
    features: Tensor,
    grid_size: tuple[int, int],
    *,
    tau: float = 0.15,
    n_masks: int = 3,
    eps: float = 1e-5,
    max_iou_with_previous: float = 0.5,
    min_area_ratio: float = 0.01,
) -> np.ndarray:
    """Run the N MaskCut iterations on a batch of patch features; [B, P, D] -> kept masks bool [B, N, h, w].

    The eigen-solves of one iteration run batched on the features' device; the bipartition rules run on
    the CPU. A dropped iteration yields an all-False mask (always N masks per image). Masks of different
    iterations may overlap at patch level; `emit_image_masks` makes them disjoint at pixel level.
    """
    n_images, n_patches, _ = features.shape
    height, width = grid_size
    if height * width != n_patches:
        raise ValueError(f"grid_size {grid_size} has {height * width} patches but features have P={n_patches}")
    if n_masks < 1:
        raise ValueError(f"n_masks must be >= 1, got {n_masks}; set --n-masks to a positive count")
    kept = np.zeros((n_images, n_masks, height, width), dtype=bool)
    painted = torch.zeros(n_images, n_patches, dtype=torch.bool, device=features.device)
    for iteration in range(n_masks):
        if iteration > 0:
            painted |= torch.from_numpy(kept[:, iteration - 1].reshape(n_images, n_patches)).to(features.device)
        current = features.masked_fill(painted[:, :, None], 0.0)
        start = time.perf_counter()
        eigenvectors = second_smallest_eigenvectors(affinity_graph(current, tau=tau, eps=eps))
        eigenvectors_np = eigenvectors.cpu().numpy().reshape(n_images, height, width)
        logger.info(
            "NCut iteration %d/%d: %d eigen-solve%s of %d patches in %.2f s",
            iteration + 1,
            n_masks,
            n_images,
            "s" if n_images > 1 else "",
            n_patches,
            time.perf_counter() - start,
        )
        for index in range(n_images):
            foreground, seed = choose_foreground(eigenvectors_np[index])
            mask = seed_component(foreground, seed)
            if iteration > 0:
                previous = kept[index, iteration - 1]
                too_similar = _mask_iou(previous, mask) > max_iou_with_previous  # NaN compares False
                too_small = mask.sum() / (height * width) <= min_area_ratio
                if too_similar or too_small:
                    logger.debug(
                        "image %d iteration %d dropped (similar=%s, small=%s)", index, iteration, too_similar, too_small
                    )
                    continue
            kept[index, iteration] = mask
    return kept


def emit_image_masks(patch_masks: np.ndarray, patch_size: int) -> np.ndarray:
    """Upsample kept patch masks [N, h, w] (nearest, factor patch_size) -> disjoint masks bool [N, h*p, w*p].

    Each mask loses the pixels of all masks emitted before it, so later masks never overlap earlier ones
    (a mask repeated after a dropped iteration comes out empty).
    """
    upsampled = patch_masks.repeat(patch_size, axis=1).repeat(patch_size, axis=2)
    emitted = np.zeros_like(upsampled)
    taken = np.zeros(upsampled.shape[1:], dtype=bool)
    for index, mask in enumerate(upsampled):
        emitted[index] = mask & ~taken
        taken |= emitted[index]
    return emitted
