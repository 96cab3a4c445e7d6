"""The ADE20K folder layout that `tools/eval_segmentation.py` reads (mmsegmentation's `ADE20KDataset`)::

    DATA_ROOT/                                  (ADEChallengeData2016 in the official release)
      images/training/<stem>.jpg                RGB images
      images/validation/<stem>.jpg
      annotations/training/<stem>.png           single-channel label maps, same stem as the image
      annotations/validation/<stem>.png

Label values: 0 = "other" (ignored: mmseg's `reduce_zero_label` maps it to 255), 1..150 = the ADE20K classes
(class k is predicted as k - 1). `check_ade20k_layout` checks this before anything is built; the builder
`tools/make_ade20k_layout.py` writes it from your own images and label maps.
"""

from pathlib import Path

from PIL import Image

SPLITS = ("training", "validation")
IMAGE_SUFFIX = ".jpg"
LABEL_SUFFIX = ".png"
NUM_CLASSES = 150


def check_ade20k_layout(data_root: str | Path) -> dict[str, int]:
    """Check the layout above at `data_root`; returns the number of image / label pairs per split.

    Raises FileNotFoundError naming what is missing (folder, or the label map of an image) and ValueError for
    an empty split or a label map that is not a single-channel image of its image's size.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"--data-root {root} is not a folder; it must hold images/{{training,validation}}/*.jpg and "
            "annotations/{training,validation}/*.png (tools/make_ade20k_layout.py writes this from your own data)"
        )
    counts: dict[str, int] = {}
    for split in SPLITS:
        image_dir, label_dir = root / "images" / split, root / "annotations" / split
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"--data-root {root} has no {folder.relative_to(root)}/ folder")
        images = sorted(image_dir.glob(f"*{IMAGE_SUFFIX}"))
        if not images:
            raise ValueError(f"no {IMAGE_SUFFIX} images in {image_dir}")
        missing = [path.name for path in images if not (label_dir / (path.stem + LABEL_SUFFIX)).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} images in {image_dir} have no label map {label_dir}/<stem>{LABEL_SUFFIX}, "
                f"e.g. {missing[:3]}"
            )
        with Image.open(images[0]) as image, Image.open(label_dir / (images[0].stem + LABEL_SUFFIX)) as label:
            if label.mode not in ("L", "P"):
                raise ValueError(
                    f"label map of {images[0].name} has PIL mode {label.mode!r}; label maps must be single-channel "
                    "('L' or 'P') PNGs whose pixel values are class indices 0..150"
                )
            if label.size != image.size:
                raise ValueError(f"label map of {images[0]} is {label.size}, its image is {image.size} (W, H)")
        counts[split] = len(images)
    return counts
