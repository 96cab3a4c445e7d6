"""A folder of images that needs no metadata preparation.

Class = sub-folder of `root` (sorted names, index in that order; images anywhere below a class folder
belong to it). A flat folder (images directly in `root`, no sub-folders with images) is valid and
unlabeled: every target is -1. Both at once is ambiguous and rejected.
"""

import logging
import os
from typing import Callable

import numpy as np

from dinov2.data.datasets.extended import ExtendedVisionDataset

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
UNLABELED_TARGET = -1


def _is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(path)


def _images_below(directory: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames.sort()
        found.extend(
            os.path.join(dirpath, name) for name in sorted(filenames) if name.lower().endswith(IMAGE_EXTENSIONS)
        )
    return found


class ImageFolder(ExtendedVisionDataset):
    """Sample i: (RGB PIL image, class index or -1 for a flat folder)."""

    def __init__(
        self,
        *,
        root: str,
        transforms: Callable | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        max_bad_image_fraction: float = 0.01,
    ) -> None:
        super().__init__(root, transforms, transform, target_transform, max_bad_image_fraction=max_bad_image_fraction)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"ImageFolder root {root!r} is not a directory; fix root= in the dataset string")
        top_level = sorted(
            os.path.join(root, name) for name in os.listdir(root) if _is_image_file(os.path.join(root, name))
        )
        subdirs = sorted(name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name)))
        per_class = [(name, _images_below(os.path.join(root, name))) for name in subdirs]
        per_class = [(name, files) for name, files in per_class if files]
        if top_level and per_class:
            raise ValueError(
                f"ImageFolder root {root!r} has both images at the top level ({os.path.basename(top_level[0])}, ...) "
                f"and class sub-folders ({per_class[0][0]}, ...); use one layout"
            )
        if per_class:
            self.classes = [name for name, _ in per_class]
            self._paths = [path for _, files in per_class for path in files]
            targets = [index for index, (_, files) in enumerate(per_class) for _ in files]
        else:
            self.classes = []
            self._paths = top_level
            targets = [UNLABELED_TARGET] * len(top_level)
        if not self._paths:
            raise FileNotFoundError(
                f"ImageFolder root {root!r} contains no image files ({', '.join(IMAGE_EXTENSIONS)})"
            )
        self._targets = np.asarray(targets, dtype=np.int64)

    @property
    def is_labeled(self) -> bool:
        return bool(self.classes)

    def describe(self, index: int) -> str:
        return self._paths[index]

    def get_image_data(self, index: int) -> bytes:
        with open(self._paths[index], "rb") as f:
            return f.read()

    def get_target(self, index: int) -> int:
        return int(self._targets[index])

    def get_targets(self) -> np.ndarray:
        return self._targets

    def __len__(self) -> int:
        return len(self._paths)
