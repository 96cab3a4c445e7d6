"""Turn an image file (or a PIL image of any mode) into 8-bit RGB: the one decoding path of training and evaluation.

`PIL.Image.convert("RGB")` is wrong for several modes: it clips 16-bit and 32-bit values to [0, 255] (a 16-bit
PNG becomes black and white), clips float images, and ignores transparency. `to_rgb` maps each mode as follows:

* 8-bit modes `1`, `L`, `P`, `RGB`, `RGBX`, `CMYK`, `YCbCr`, `LAB`, `HSV`: Pillow's own conversion
  (`1` -> 0 / 255; CMYK -> R = (255 - C)(255 - K) / 255, rounded).
* 16-bit gray (`I;16`, `I;16L`, `I;16B`, `I;16N`): each value v becomes its high byte, v // 256. Pillow decodes
  16-bit RGB(A) and gray-alpha PNGs to 8 bits the same way, and OpenCV does so for every 16-bit image, so a
  16-bit pixel gets the same 8-bit value whatever the channel count.
* `I` (32-bit signed integers): read as 16-bit data, the range of the integer scans stored in this mode:
  v is clipped to [0, 65535] and becomes v // 256.
* `F` (32-bit float): read as intensities in [0, 1]: v is clipped to [0, 1] and becomes round(255 v); NaN -> 0.
* Transparency (an alpha channel in `LA`, `La`, `PA`, `RGBA`, `RGBa`, or a transparent palette entry / colour
  key in the file's `transparency` info): composited over a white background,
  out = round((c a + 255 (255 - a)) / 255) with a the 8-bit alpha, so fully transparent pixels are white
  whatever colour they hide, as an image viewer shows them on a white page.
* Any other mode raises ValueError naming it (a bad image to the training datasets, see
  dinov2/data/datasets/extended.py), never a silent guess.

Multi-frame files (GIF, TIFF stacks) give their first frame. EXIF orientation is not applied (as upstream).
"""

import io
import os

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_PILLOW_RGB_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
BACKGROUND = 255  # white, the value of every channel behind transparent pixels


def _composite_on_background(rgba: np.ndarray) -> Image.Image:
    """uint8 [H, W, 4] -> RGB image with the colour composited over BACKGROUND by alpha."""
    alpha = rgba[..., 3:].astype(np.uint32)
    color = rgba[..., :3].astype(np.uint32)
    blended = (color * alpha + BACKGROUND * (255 - alpha) + 127) // 255
    return Image.fromarray(blended.astype(np.uint8), mode="RGB")


def _gray_to_rgb(gray: np.ndarray, opaque: np.ndarray | None) -> Image.Image:
    """uint8 gray [H, W] (and bool opacity [H, W] or None) -> RGB image."""
    if opaque is None:
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2), mode="RGB")
    alpha = np.where(opaque, 255, 0).astype(np.uint8)
    return _composite_on_background(np.stack([gray, gray, gray, alpha], axis=2))


def _wide_gray_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float gray -> RGB (mapping in the module docstring)."""
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        gray = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        raw = np.asarray(image)
    else:
        raw = np.asarray(image).astype(np.int64)  # I;16* as uint16, I as int32
        gray = (np.clip(raw, 0, 65535) >> 8).astype(np.uint8)
    transparent_value = image.info.get("transparency")
    opaque = None if transparent_value is None else raw != transparent_value
    return _gray_to_rgb(gray, opaque)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> a new, fully loaded 8-bit RGB image of the same size (mode mapping in the module doc).

    Raises ValueError for a mode without a defined mapping, and what Pillow raises for truncated data.
    """
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _wide_gray_to_rgb(image)
    if mode in _ALPHA_MODES or (mode in _PILLOW_RGB_MODES and image.has_transparency_data):
        rgba = image.convert("LA").convert("RGBA") if mode == "La" else image.convert("RGBA")
        return _composite_on_background(np.asarray(rgba))
    if mode in _PILLOW_RGB_MODES:
        return image.convert("RGB")
    raise ValueError(f"image mode {mode!r} has no defined conversion to 8-bit RGB (see dinov2/data/decoding.py)")


def decode_image(source: bytes | str | os.PathLike) -> Image.Image:
    """Encoded image bytes or an image file path -> fully loaded 8-bit RGB PIL image (see `to_rgb`).

    Raises what Pillow raises for unreadable, truncated or non-image data (OSError, ValueError, ...).
    """
    opened = Image.open(io.BytesIO(source)) if isinstance(source, bytes) else Image.open(source)
    with opened as image:
        return to_rgb(image)
