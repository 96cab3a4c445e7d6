"""DAVIS-2017 folder layout: sequence lists, frame and annotation paths, palette PNG reading and writing.

Layout of a DAVIS root and of a results folder (the names the official evaluation expects)::

    DAVIS_ROOT/
      JPEGImages/<resolution>/<seq>/00000.jpg, 00001.jpg, ...
      Annotations/<resolution>/<seq>/00000.png, ...     palette PNGs, pixel = object index
      ImageSets/<year>/<split>.txt                      one sequence name per line
    RESULTS/
      <seq>/00000.png, 00001.png, ...                   palette PNGs, same names as the annotations

Annotation pixel values are object indices: 0 background, 1..K objects, 255 void. Reading a palette PNG
with `np.asarray(Image.open(path))` gives the indices, not the colours.
"""

import logging
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

VOID_LABEL = 255


def read_sequence_names(davis_root: str | Path, *, split: str = "val", year: str = "2017") -> list[str]:
    """Sequence names of `ImageSets/<year>/<split>.txt`, in file order, blank lines skipped."""
    list_file = Path(davis_root) / "ImageSets" / year / f"{split}.txt"
    if not list_file.is_file():
        raise FileNotFoundError(
            f"sequence list {list_file} does not exist; check --davis-root (the folder holding JPEGImages/, "
            f"Annotations/ and ImageSets/) and --split (got {split!r})"
        )
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"sequence list {list_file} is empty")
    return names


def frame_paths(davis_root: str | Path, sequence: str, *, resolution: str = "480p") -> list[Path]:
    """Sorted `JPEGImages/<resolution>/<sequence>/*.jpg`; raises when the folder holds none."""
    folder = Path(davis_root) / "JPEGImages" / resolution / sequence
    paths = sorted(folder.glob("*.jpg"))
    if not paths:
        raise FileNotFoundError(f"no .jpg frames in {folder} (sequence {sequence!r}, resolution {resolution!r})")
    return paths


def annotation_paths(davis_root: str | Path, sequence: str, *, resolution: str = "480p") -> list[Path]:
    """Sorted `Annotations/<resolution>/<sequence>/*.png`; raises when the folder holds none."""
    folder = Path(davis_root) / "Annotations" / resolution / sequence
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"no .png annotations in {folder} (sequence {sequence!r}, resolution {resolution!r})")
    return paths


def read_label_map(path: str | Path) -> np.ndarray:
    """Read an index PNG (mode "P" or "L") as a uint8 array [H, W] of object indices."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(
                f"{path} has PIL mode {image.mode!r}; label PNGs must be palette ('P') or grey ('L') images "
                "whose pixel values are object indices"
            )
        return np.array(image, dtype=np.uint8)


def voc_palette() -> list[int]:
    """The PASCAL-VOC colour map used by DAVIS, flattened to 768 ints (R, G, B for indices 0..255).

    Index i gets its colour by spreading its bits: for j = 0..7, bits 0/1/2 of (i >> 3j) become bit 7-j of
    R/G/B, so 0 -> (0, 0, 0), 1 -> (128, 0, 0), 2 -> (0, 128, 0), 3 -> (128, 128, 0), 4 -> (0, 0, 128).
    """
    palette: list[int] = []
    for index in range(256):
        red = green = blue = 0
        bits = index
        for shift in range(7, -1, -1):
            red |= (bits & 1) << shift
            green |= ((bits >> 1) & 1) << shift
            blue |= ((bits >> 2) & 1) << shift
            bits >>= 3
        palette.extend((red, green, blue))
    return palette


def write_label_map(path: str | Path, labels: np.ndarray) -> None:
    """Write `labels` (uint8 [H, W] object indices) as a palette PNG with the VOC colours."""
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"labels must be a uint8 [H, W] array, got dtype {labels.dtype} shape {labels.shape}")
    height, width = labels.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(labels).tobytes())
    image.putpalette(voc_palette())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
