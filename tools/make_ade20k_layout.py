"""Turn your own images and label maps into an ADE20K folder that tools/eval_segmentation.py reads.

    python tools/make_ade20k_layout.py --images my_images/ --labels my_labels/ --out my_ade20k \
        [--val-fraction 0.25] [--seed 0] [--zero-based]

Input: images (any format PIL reads) and, with the same file stem, single-channel label maps (PNG, or any
lossless format PIL reads) of the same size whose pixel values are class indices. ADE20K's encoding, which
the evaluation expects, is 0 = "other" (ignored) and 1..150 = the classes; with `--zero-based` the label
maps hold 0..149 with 255 ignored, and are shifted by one. At most 150 classes (the head is ADE20K's).

Output (`--out`, which must not exist yet or be empty):

    OUT/images/{training,validation}/<stem>.jpg     RGB, JPEG quality 95
    OUT/annotations/{training,validation}/<stem>.png

A seeded `--val-fraction` of the pairs (at least one) goes to validation, the rest to training.
"""

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs without installing

from dinov2.data.decoding import decode_image  # noqa: E402
from eval.segmentation.layout import IMAGE_SUFFIX, LABEL_SUFFIX, NUM_CLASSES, check_ade20k_layout  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
ZERO_BASED_IGNORE = 255


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Build an ADE20K-layout folder from images and label maps")
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--labels", required=True, help="folder of label maps, same stems as the images")
    parser.add_argument("--out", required=True, help="folder to create (ADEChallengeData2016 layout)")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="share of pairs for validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train / validation split")
    parser.add_argument(
        "--zero-based", action="store_true", help="labels are 0..149 with 255 ignored (default: ADE20K's 0 = other)"
    )
    return parser


def _pairs(images_dir: Path, labels_dir: Path) -> list[tuple[Path, Path]]:
    for flag, folder in (("--images", images_dir), ("--labels", labels_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{flag} {folder} is not a folder")
    images = sorted(path for path in images_dir.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in --images {images_dir}")
    labels = {path.stem: path for path in labels_dir.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES}
    missing = [path.name for path in images if path.stem not in labels]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} images have no label map of the same stem in {labels_dir}: {missing[:3]}"
        )
    return [(path, labels[path.stem]) for path in images]


def ade20k_labels(path: Path, *, zero_based: bool) -> np.ndarray:
    """A label map -> uint8 [H, W] in ADE20K's encoding (0 other, 1..150 classes); raises on other values."""
    with Image.open(path) as image:
        if image.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(
                f"label map {path} has PIL mode {image.mode!r}; it must be single-channel, pixel = class index"
            )
        labels = np.array(image).astype(np.int64)
    if zero_based:
        ignored = labels == ZERO_BASED_IGNORE
        labels = np.where(ignored, 0, labels + 1)
    bad = np.unique(labels[(labels < 0) | (labels > NUM_CLASSES)])
    if bad.size:
        encoding = "0..149 and 255" if zero_based else "0 (other) and 1..150"
        raise ValueError(f"label map {path} holds values {bad[:5].tolist()} outside {encoding}; see --zero-based")
    return labels.astype(np.uint8)


def build(args: argparse.Namespace) -> dict[str, int]:
    """Write the layout into `args.out`; returns the number of pairs per split (checked by the evaluator's reader)."""
    if not 0.0 < args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction {args.val_fraction} must lie in (0, 1)")
    pairs = _pairs(Path(args.images), Path(args.labels))
    if len(pairs) < 2:
        raise ValueError(f"{len(pairs)} image / label pair: training and validation need at least one each")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} exists and is not empty; choose a new folder")
    order = np.random.default_rng(args.seed).permutation(len(pairs))
    n_val = min(len(pairs) - 1, max(1, round(args.val_fraction * len(pairs))))
    validation = set(order[:n_val].tolist())
    for index, (image_path, label_path) in enumerate(pairs):
        split = "validation" if index in validation else "training"
        labels = ade20k_labels(label_path, zero_based=args.zero_based)
        rgb = decode_image(image_path)
        if rgb.size != (labels.shape[1], labels.shape[0]):
            raise ValueError(
                f"{image_path} is {rgb.size} (W, H) but its label map {label_path} is {labels.shape[::-1]}"
            )
        for kind in ("images", "annotations"):
            (out / kind / split).mkdir(parents=True, exist_ok=True)
        rgb.save(out / "images" / split / f"{image_path.stem}{IMAGE_SUFFIX}", quality=95)
        Image.fromarray(labels).save(out / "annotations" / split / f"{image_path.stem}{LABEL_SUFFIX}")
    counts = check_ade20k_layout(out)
    print(f"wrote {counts['training']} training and {counts['validation']} validation pairs -> {out}")
    return counts


def cli(argv: Sequence[str] | None = None) -> int:
    build(get_args_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
