"""Dense-CRF refinement of a binary mask (Krähenbühl & Koltun 2011) with MaskCut's settings.

Uses `pydensecrf` (installed by the `pydensecrf2==1.1` package, the `crf` extra). Settings from
CutLER's `maskcut.py` (github.com/facebookresearch/CutLER): unary = -log(clip(softmax([1 - m, m]), 1e-5)),
a Gaussian pairwise term (sxy 3, compat 7), a bilateral term (sxy 50, srgb 5, compat 10) on the resized
RGB image, 10 mean-field iterations, MAP labels, holes filled; the refined mask is discarded when its IoU
with the raw mask is below 0.5.
"""

import logging
import types

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)


def _densecrf_module() -> types.ModuleType:
    try:
        from pydensecrf import densecrf
    except ImportError as err:
        raise ImportError(
            "dense-CRF refinement needs pydensecrf: `pip install pydensecrf2==1.1` (or `pip install -e .[crf]`), "
            "or run without --crf"
        ) from err
    return densecrf


def densecrf_mask(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    n_iterations: int = 10,
    gaussian_sxy: float = 3.0,
    gaussian_compat: float = 7.0,
    bilateral_sxy: float = 50.0,
    bilateral_srgb: float = 5.0,
    bilateral_compat: float = 10.0,
) -> np.ndarray:
    """MAP labelling of a two-label dense CRF; image uint8 [H, W, 3], mask bool [H, W] -> bool [H, W] (holes filled).

    The unary comes from the softmax of the logits [1 - m, m] per pixel (0.7311 on the mask's label).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from the image size {image.shape[:2]}")
    height, width = mask.shape
    logits = np.stack([1.0 - mask, mask.astype(np.float64)])  # [2, H, W]
    exp = np.exp(logits - logits.max(axis=0, keepdims=True))
    probabilities = exp / exp.sum(axis=0, keepdims=True)
    unary = np.ascontiguousarray(-np.log(np.clip(probabilities, 1e-5, None)).reshape(2, -1), dtype=np.float32)
    densecrf = _densecrf_module()
    crf = densecrf.DenseCRF2D(width, height, 2)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(image), compat=bilateral_compat
    )
    marginals = np.asarray(crf.inference(n_iterations)).reshape(2, height, width)
    return ndimage.binary_fill_holes(marginals.argmax(axis=0) == 1)


def refine_mask(image: np.ndarray, mask: np.ndarray, *, min_iou: float = 0.5) -> np.ndarray:
    """CRF-refined mask, or an all-False mask when IoU(raw, refined) < min_iou; shapes as `densecrf_mask`.

    An empty raw mask is returned unchanged without running the CRF (its unary favours background
    everywhere, so the CRF would return it empty as well).
    """
    if not mask.any():
        return mask.copy()
    refined = densecrf_mask(image, mask)
    union = np.logical_or(mask, refined).sum()
    iou = np.logical_and(mask, refined).sum() / union
    if iou < min_iou:
        logger.debug("CRF mask discarded: IoU(raw, CRF) = %.3f < %.2f", iou, min_iou)
        return np.zeros_like(mask)
    return refined
