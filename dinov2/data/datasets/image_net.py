"""ImageNet-1k with the official `extra` metadata (see docs/data.md).

Layout under `root`: `train/<wnid>/<wnid>_<n>.JPEG`, `val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG`,
`test/ILSVRC2012_test_<8 digits>.JPEG` and `labels.txt` (CSV `wnid,name`). Metadata under `extra`,
written once per split by `dump_extra()` (see tools/prepare_imagenet.py) and memory-mapped:
`entries-<SPLIT>.npy` (structured: actual_index <u4, class_index <u4, class_id <U, class_name <U; one row
per image in sorted class-folder / sorted file order), `class-ids-<SPLIT>.npy`, `class-names-<SPLIT>.npy`
(not for TEST). The files are byte-compatible with the official ones.

Change from official: the split sizes are not asserted, so subsets work; a size that
differs from the full split is logged.
"""

import csv
import logging
import os
import re
from enum import Enum
from typing import Callable

import numpy as np

from dinov2.data.datasets.extended import ExtendedVisionDataset

logger = logging.getLogger(__name__)

_TEST_CLASS_INDEX = np.iinfo(np.uint32).max
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageNetSplit(Enum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"

    @property
    def length(self) -> int:
        """Images in the full official split."""
        return {ImageNetSplit.TRAIN: 1_281_167, ImageNetSplit.VAL: 50_000, ImageNetSplit.TEST: 100_000}[self]

    def get_dirname(self) -> str:
        return self.value

    def get_image_relpath(self, actual_index: int, class_id: str | None = None) -> str:
        """Path of an image relative to `root`, from its number and class folder."""
        if self == ImageNetSplit.TRAIN:
            basename = f"{class_id}_{actual_index}"
        elif self == ImageNetSplit.VAL:
            basename = f"ILSVRC2012_{self.value}_{actual_index:08d}"
        else:
            return os.path.join(self.get_dirname(), f"ILSVRC2012_{self.value}_{actual_index:08d}.JPEG")
        return os.path.join(self.get_dirname(), str(class_id), basename + ".JPEG")

    def parse_image_relpath(self, image_relpath: str) -> tuple[str, int]:
        """Inverse of `get_image_relpath` for TRAIN/VAL: (class_id, actual_index)."""
        if self == ImageNetSplit.TEST:
            raise ValueError("test images have no class folder")
        dirname, filename = os.path.split(image_relpath)
        return os.path.basename(dirname), _trailing_number(filename)


def _trailing_number(filename: str) -> int:
    """The image number at the end of an ImageNet file name (`n01440764_10026.JPEG` -> 10026)."""
    match = re.search(r"(\d+)\.[A-Za-z]+$", filename)
    if match is None:
        raise ValueError(f"cannot parse an image number from the file name {filename!r}")
    return int(match.group(1))


def _list_images(directory: str) -> list[str]:
    return sorted(
        name
        for name in os.listdir(directory)
        if name.lower().endswith(_IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(directory, name))
    )


class ImageNet(ExtendedVisionDataset):
    """ImageNet-1k sample i: (RGB PIL image, class index); target None for TEST."""

    Split = ImageNetSplit

    def __init__(
        self,
        *,
        split: ImageNetSplit,
        root: str,
        extra: str,
        transforms: Callable | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        max_bad_image_fraction: float = 0.01,
    ) -> None:
        super().__init__(root, transforms, transform, target_transform, max_bad_image_fraction=max_bad_image_fraction)
        self._extra_root = extra
        self._split = split
        self._entries: np.ndarray | None = None
        self._class_ids: np.ndarray | None = None
        self._class_names: np.ndarray | None = None

    @property
    def split(self) -> ImageNetSplit:
        return self._split

    def _extra_path(self, name: str) -> str:
        return os.path.join(self._extra_root, name)

    def _load_extra(self, name: str) -> np.ndarray:
        path = self._extra_path(name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"ImageNet metadata {path} is missing; write it with "
                f"`python tools/prepare_imagenet.py --root {self.root} --extra {self._extra_root}`"
            )
        return np.load(path, mmap_mode="r")

    @property
    def _entries_name(self) -> str:
        return f"entries-{self._split.value.upper()}.npy"

    @property
    def _class_ids_name(self) -> str:
        return f"class-ids-{self._split.value.upper()}.npy"

    @property
    def _class_names_name(self) -> str:
        return f"class-names-{self._split.value.upper()}.npy"

    def _get_entries(self) -> np.ndarray:
        if self._entries is None:
            self._entries = self._load_extra(self._entries_name)
        return self._entries

    def _get_class_ids(self) -> np.ndarray:
        if self._split == ImageNetSplit.TEST:
            raise ValueError("the TEST split has no class ids")
        if self._class_ids is None:
            self._class_ids = self._load_extra(self._class_ids_name)
        return self._class_ids

    def _get_class_names(self) -> np.ndarray:
        if self._split == ImageNetSplit.TEST:
            raise ValueError("the TEST split has no class names")
        if self._class_names is None:
            self._class_names = self._load_extra(self._class_names_name)
        return self._class_names

    def find_class_id(self, class_index: int) -> str:
        return str(self._get_class_ids()[class_index])

    def find_class_name(self, class_index: int) -> str:
        return str(self._get_class_names()[class_index])

    def _image_path(self, index: int) -> str:
        entry = self._get_entries()[index]
        relpath = self._split.get_image_relpath(int(entry["actual_index"]), str(entry["class_id"]))
        return os.path.join(self.root, relpath)

    def describe(self, index: int) -> str:
        return self._image_path(index)

    def get_image_data(self, index: int) -> bytes:
        with open(self._image_path(index), "rb") as f:
            return f.read()

    def get_target(self, index: int) -> int | None:
        if self._split == ImageNetSplit.TEST:
            return None
        return int(self._get_entries()[index]["class_index"])

    def get_targets(self) -> np.ndarray | None:
        if self._split == ImageNetSplit.TEST:
            return None
        return np.asarray(self._get_entries()["class_index"])

    def get_class_id(self, index: int) -> str | None:
        return None if self._split == ImageNetSplit.TEST else str(self._get_entries()[index]["class_id"])

    def get_class_name(self, index: int) -> str | None:
        return None if self._split == ImageNetSplit.TEST else str(self._get_entries()[index]["class_name"])

    def __len__(self) -> int:
        return len(self._get_entries())

    def _read_labels(self) -> dict[str, str]:
        path = os.path.join(self.root, "labels.txt")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} (CSV lines `wnid,class name`) is missing")
        labels: dict[str, str] = {}
        with open(path, newline="") as f:
            for line_number, row in enumerate(csv.reader(f), start=1):
                if len(row) != 2:
                    raise ValueError(f"{path}:{line_number}: expected `wnid,class name`, got {row}")
                labels[row[0]] = row[1]
        return labels

    def _dump_entries(self) -> None:
        split_dir = os.path.join(self.root, self._split.get_dirname())
        if not os.path.isdir(split_dir):
            raise FileNotFoundError(f"ImageNet split directory {split_dir} does not exist")
        rows: list[tuple[int, int, str, str]] = []
        if self._split == ImageNetSplit.TEST:
            for filename in _list_images(split_dir):
                rows.append((_trailing_number(filename), int(_TEST_CLASS_INDEX), "", ""))
        else:
            labels = self._read_labels()
            class_ids = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
            for class_index, class_id in enumerate(class_ids):
                if class_id not in labels:
                    raise ValueError(f"class folder {class_id} of {split_dir} is not listed in labels.txt")
                for filename in _list_images(os.path.join(split_dir, class_id)):
                    _, actual_index = self._split.parse_image_relpath(os.path.join(class_id, filename))
                    rows.append((actual_index, class_index, class_id, labels[class_id]))
        max_id_length = max([len(row[2]) for row in rows], default=0)
        max_name_length = max([len(row[3]) for row in rows], default=0)
        dtype = np.dtype(
            [
                ("actual_index", "<u4"),
                ("class_index", "<u4"),
                ("class_id", f"U{max(max_id_length, 1)}"),
                ("class_name", f"U{max(max_name_length, 1)}"),
            ]
        )
        entries = np.array(rows, dtype=dtype)
        os.makedirs(self._extra_root, exist_ok=True)
        np.save(self._extra_path(self._entries_name), entries)
        if len(entries) != self._split.length:
            logger.info("ImageNet %s: %d images (full split: %d)", self._split.name, len(entries), self._split.length)
        self._entries = None

    def _dump_class_ids_and_names(self) -> None:
        if self._split == ImageNetSplit.TEST:
            return
        entries = self._get_entries()
        n_classes = int(entries["class_index"].max()) + 1 if len(entries) else 0
        class_ids = [""] * n_classes
        class_names = [""] * n_classes
        for entry in entries:
            class_ids[int(entry["class_index"])] = str(entry["class_id"])
            class_names[int(entry["class_index"])] = str(entry["class_name"])
        np.save(self._extra_path(self._class_ids_name), np.array(class_ids, dtype=entries.dtype["class_id"]))
        np.save(self._extra_path(self._class_names_name), np.array(class_names, dtype=entries.dtype["class_name"]))
        self._class_ids = None
        self._class_names = None

    def dump_extra(self) -> None:
        """Scan `root` and write this split's metadata files into `extra`."""
        self._dump_entries()
        self._dump_class_ids_and_names()
