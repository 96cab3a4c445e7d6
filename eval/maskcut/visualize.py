"""Overlay of MaskCut masks on the original image, for visual inspection."""

import numpy as np
from PIL import Image

from dinov2.data.decoding import to_rgb

# Distinct colours, one per mask in iteration order (cycled when there are more masks).
MASK_COLORS = np.array(
    [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)], dtype=np.float64
)


def overlay_masks(image: Image.Image, masks: np.ndarray, *, alpha: float = 0.5) -> Image.Image:
    """Blend masks bool [N, H, W] over an RGB image of size (W, H) -> RGB image; mask i gets colour i."""
    rgb = np.asarray(to_rgb(image), dtype=np.float64)
    if masks.shape[1:] != rgb.shape[:2]:
        raise ValueError(f"masks of size {masks.shape[1:]} do not match the image size {rgb.shape[:2]}")
    for index, mask in enumerate(masks):
        color = MASK_COLORS[index % len(MASK_COLORS)]
        rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * color
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
