"""DAVIS-2017 region (J) and boundary (F) measures and their per-object statistics.

Written from the published definitions of the DAVIS-2017 semi-supervised benchmark (Pont-Tuset et al.,
"The 2017 DAVIS Challenge on Video Object Segmentation"; Perazzi et al., CVPR 2016):

* J, region similarity: |P ∩ G| / |P ∪ G|, 1 when the union is empty.
* F, contour accuracy: boundary precision / recall with a tolerance of ceil(0.008 · image diagonal) pixels
  (8 px at 480x854), boundaries being one-pixel maps, and F = 2PR / (P + R).
* Per object over its evaluated frames: mean, recall (fraction of frames scoring strictly above 0.5) and
  decay (mean of the first quarter of the frames minus the mean of the last quarter).

Masks are boolean arrays [H, W] (one frame) or [T, H, W] (T frames). `void` marks pixels to ignore; the
semi-supervised benchmark passes none (void pixels count as background there).
"""

import logging
import math

import cv2
import numpy as np

logger = logging.getLogger(__name__)

BOUNDARY_TOLERANCE = 0.008  # fraction of the image diagonal (a value >= 1 is taken as pixels)


def region_jaccard(annotation: np.ndarray, segmentation: np.ndarray, void: np.ndarray | None = None) -> np.ndarray:
    """J per frame: annotation, segmentation, void bool [..., H, W] -> float64 [...] (1 where the union is empty)."""
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation shape {annotation.shape} differs from segmentation shape {segmentation.shape}")
    annotation = annotation.astype(bool)
    segmentation = segmentation.astype(bool)
    valid = np.ones_like(annotation) if void is None else ~void.astype(bool)
    intersection = np.sum(annotation & segmentation & valid, axis=(-2, -1))
    union = np.sum((annotation | segmentation) & valid, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        jaccard = np.where(union == 0, 1.0, intersection / np.maximum(union, 1))
    return np.asarray(jaccard, dtype=np.float64)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary mask: bool [H, W] -> bool [H, W].

    A pixel is on the boundary when it differs from its east, south or south-east neighbour, pixels outside
    the image being background. The boundary therefore sits half a pixel toward the origin. On the last row
    only the east neighbour is compared, on the last column only the south one, and the bottom-right pixel
    is never a boundary. A k x l rectangle away from the border has 2k + 2l boundary pixels.
    """
    mask = mask.astype(bool)
    east = np.zeros_like(mask)
    south = np.zeros_like(mask)
    south_east = np.zeros_like(mask)
    east[:, :-1] = mask[:, 1:]
    south[:-1, :] = mask[1:, :]
    south_east[:-1, :-1] = mask[1:, 1:]
    boundary = (mask ^ east) | (mask ^ south) | (mask ^ south_east)
    boundary[-1, :] = mask[-1, :] ^ east[-1, :]
    boundary[:, -1] = mask[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def disk(radius: int) -> np.ndarray:
    """Disk structuring element: uint8 [2r+1, 2r+1], 1 where x² + y² <= r² (197 ones for r = 8)."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def boundary_tolerance_pixels(height: int, width: int, bound_th: float = BOUNDARY_TOLERANCE) -> int:
    """Boundary match radius: `bound_th` pixels if >= 1, else ceil(bound_th · sqrt(H² + W²))."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(height, width)))


def _dilate(boundary: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.dilate(boundary.astype(np.uint8), kernel) > 0


def boundary_f_measure_frame(
    annotation: np.ndarray,
    segmentation: np.ndarray,
    void: np.ndarray | None = None,
    *,
    bound_th: float = BOUNDARY_TOLERANCE,
) -> float:
    """F of one frame: annotation, segmentation, void bool [H, W] -> float.

    Precision = |B(S) ∩ dil(B(G))| / |B(S)|, recall = |B(G) ∩ dil(B(S))| / |B(G)|, with B the boundary map
    and dil a dilation by a disk of `boundary_tolerance_pixels` radius. An empty boundary on one side gives
    (P, R) = (1, 0) (empty prediction) or (0, 1) (empty annotation); both empty give (1, 1).
    """
    if annotation.ndim != 2 or annotation.shape != segmentation.shape:
        raise ValueError(f"expected two [H, W] masks of one shape, got {annotation.shape} and {segmentation.shape}")
    annotation = annotation.astype(bool)
    segmentation = segmentation.astype(bool)
    if void is not None:
        annotation = annotation & ~void.astype(bool)
        segmentation = segmentation & ~void.astype(bool)
    kernel = disk(boundary_tolerance_pixels(*annotation.shape, bound_th=bound_th))
    segmentation_boundary = boundary_map(segmentation)
    annotation_boundary = boundary_map(annotation)
    n_segmentation = int(segmentation_boundary.sum())
    n_annotation = int(annotation_boundary.sum())
    if n_segmentation == 0 and n_annotation == 0:
        precision, recall = 1.0, 1.0
    elif n_segmentation == 0:
        precision, recall = 1.0, 0.0
    elif n_annotation == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = float((segmentation_boundary & _dilate(annotation_boundary, kernel)).sum()) / n_segmentation
        recall = float((annotation_boundary & _dilate(segmentation_boundary, kernel)).sum()) / n_annotation
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def boundary_f_measure(
    annotation: np.ndarray,
    segmentation: np.ndarray,
    void: np.ndarray | None = None,
    *,
    bound_th: float = BOUNDARY_TOLERANCE,
) -> np.ndarray:
    """F per frame: annotation, segmentation, void bool [T, H, W] (or [H, W]) -> float64 [T] (or [])."""
    if annotation.shape != segmentation.shape:
        raise ValueError(f"annotation shape {annotation.shape} differs from segmentation shape {segmentation.shape}")
    if annotation.ndim == 2:
        return np.asarray(boundary_f_measure_frame(annotation, segmentation, void, bound_th=bound_th))
    return np.array(
        [
            boundary_f_measure_frame(
                annotation[t], segmentation[t], None if void is None else void[t], bound_th=bound_th
            )
            for t in range(annotation.shape[0])
        ],
        dtype=np.float64,
    )


def decay_bin_edges(n_frames: int, n_bins: int = 4) -> np.ndarray:
    """Frame indices bounding the decay bins: round(linspace(1, n, n_bins + 1)) - 1 (48 -> 0, 12, 24, 35, 47)."""
    return (np.round(np.linspace(1, n_frames, n_bins + 1) + 1e-10) - 1).astype(np.int64)


def sequence_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame scores, float [n] -> three floats.

    mean = nanmean(v); recall = mean(v > 0.5) (NaN counts as a miss); decay = nanmean(v[e0 : e1 + 1]) -
    nanmean(v[e3 : e4 + 1]) with the edges e of `decay_bin_edges` (neighbouring bins share an endpoint).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"expected a non-empty 1-D array of per-frame scores, got shape {values.shape}")
    mean = float(np.nanmean(values))
    recall = float(np.nanmean(values > 0.5))
    edges = decay_bin_edges(values.size)
    first_bin = values[edges[0] : edges[1] + 1]
    last_bin = values[edges[3] : edges[4] + 1]
    decay = float(np.nanmean(first_bin) - np.nanmean(last_bin))
    return mean, recall, decay
