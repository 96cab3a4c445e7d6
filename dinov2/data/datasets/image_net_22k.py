"""ImageNet-22k read from one tarball per class (the official DINOv2 layout, see docs/data.md).

Layout under `root`: `<wnid>.tar` per class and `blocks/<wnid>.log`, the block listing of the tarball as
written by `tar -tRf <wnid>.tar > blocks/<wnid>.log` (lines `block N: <member name>`, ending with
`block N: ** Block of NULs **`). `dump_extra()` turns the listings into `extra/entries.npy` (fields
class_index <u4, class_id <U, start_offset <u8, end_offset <u8, filename <U; offsets in bytes of the
member's tar header and of the next header) and `extra/class-ids.npy`. An image is the slice
[start_offset + 512, end_offset) of a memory map of its tarball (the trailing tar padding is ignored by
the decoders); gzip-wrapped members (a few dozen in the official release) are recognised by their
magic bytes and decompressed.

Fixes over the official code: `dump_extra` works; offsets are 64-bit (the official
uint32 overflows for tarballs above 4 GiB, so files written by the official code must be regenerated);
the member `n06470073_47249.JPEG`, skipped officially, is left out of the entries as well.
"""

import logging
import mmap
import os
import re
import zlib
from functools import lru_cache
from typing import Callable

import numpy as np

from dinov2.data.datasets.extended import ExtendedVisionDataset

logger = logging.getLogger(__name__)

_TAR_HEADER_SIZE = 512
_END_MARKER = "** Block of NULs **"
_SKIPPED_MEMBERS = frozenset({"n06470073_47249.JPEG"})
_BLOCK_LINE = re.compile(r"^block (\d+): (.*)$")


@lru_cache(maxsize=16)
def _mmap_tarball(path: str) -> mmap.mmap:
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def parse_block_listing(path: str) -> list[tuple[str, int, int]]:
    """`tar -tR` listing -> [(member file name, header offset, next header offset)] in bytes."""
    blocks: list[tuple[int, str]] = []
    with open(path) as f:
        for line_number, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line:
                continue
            match = _BLOCK_LINE.match(line)
            if match is None:
                raise ValueError(f"{path}:{line_number}: expected `block N: name`, got {line!r}")
            blocks.append((int(match.group(1)), match.group(2)))
    if not blocks or blocks[-1][1] != _END_MARKER:
        raise ValueError(f"{path} does not end with `block N: {_END_MARKER}`; is it a complete `tar -tR` listing?")
    members = []
    for (block, name), (next_block, _) in zip(blocks[:-1], blocks[1:], strict=True):
        if name.endswith("/"):
            continue
        members.append((os.path.basename(name), block * _TAR_HEADER_SIZE, next_block * _TAR_HEADER_SIZE))
    return members


class ImageNet22k(ExtendedVisionDataset):
    """ImageNet-22k sample i: (RGB PIL image, class index)."""

    def __init__(
        self,
        *,
        root: str,
        extra: str,
        transforms: Callable | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        max_bad_image_fraction: float = 0.01,
    ) -> None:
        super().__init__(root, transforms, transform, target_transform, max_bad_image_fraction=max_bad_image_fraction)
        self._extra_root = extra
        self._entries: np.ndarray | None = None
        self._class_ids: np.ndarray | None = None

    def _load_extra(self, name: str) -> np.ndarray:
        path = os.path.join(self._extra_root, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"ImageNet-22k metadata {path} is missing; write it with ImageNet22k(root=..., extra=...).dump_extra()"
            )
        return np.load(path, mmap_mode="r")

    def _get_entries(self) -> np.ndarray:
        if self._entries is None:
            self._entries = self._load_extra("entries.npy")
        return self._entries

    def _get_class_ids(self) -> np.ndarray:
        if self._class_ids is None:
            self._class_ids = self._load_extra("class-ids.npy")
        return self._class_ids

    def find_class_id(self, class_index: int) -> str:
        return str(self._get_class_ids()[class_index])

    def get_class_id(self, index: int) -> str:
        return str(self._get_entries()[index]["class_id"])

    def _tarball_path(self, class_id: str) -> str:
        return os.path.join(self.root, f"{class_id}.tar")

    def describe(self, index: int) -> str:
        entry = self._get_entries()[index]
        return f"{self._tarball_path(str(entry['class_id']))}:{entry['filename']}"

    def get_image_data(self, index: int) -> bytes:
        entry = self._get_entries()[index]
        tarball = _mmap_tarball(self._tarball_path(str(entry["class_id"])))
        data = tarball[int(entry["start_offset"]) + _TAR_HEADER_SIZE : int(entry["end_offset"])]
        if data[:2] == b"\x1f\x8b":
            # One gzip member followed by tar padding: decompress the member, ignore what follows it.
            data = zlib.decompressobj(wbits=31).decompress(data)
        return data

    def get_target(self, index: int) -> int:
        return int(self._get_entries()[index]["class_index"])

    def get_targets(self) -> np.ndarray:
        return np.asarray(self._get_entries()["class_index"])

    def __len__(self) -> int:
        return len(self._get_entries())

    def dump_extra(self) -> None:
        """Read `root/blocks/*.log` and write `extra/entries.npy` and `extra/class-ids.npy`."""
        blocks_dir = os.path.join(self.root, "blocks")
        if not os.path.isdir(blocks_dir):
            raise FileNotFoundError(f"{blocks_dir} (one `tar -tR` listing per class tarball) does not exist")
        class_ids = sorted(name[: -len(".log")] for name in os.listdir(blocks_dir) if name.endswith(".log"))
        rows = []
        for class_index, class_id in enumerate(class_ids):
            for filename, start, end in parse_block_listing(os.path.join(blocks_dir, f"{class_id}.log")):
                if filename not in _SKIPPED_MEMBERS:
                    rows.append((class_index, class_id, start, end, filename))
        max_id_length = max([len(row[1]) for row in rows], default=1)
        max_filename_length = max([len(row[4]) for row in rows], default=1)
        dtype = np.dtype(
            [
                ("class_index", "<u4"),
                ("class_id", f"U{max_id_length}"),
                ("start_offset", "<u8"),
                ("end_offset", "<u8"),
                ("filename", f"U{max_filename_length}"),
            ]
        )
        os.makedirs(self._extra_root, exist_ok=True)
        np.save(os.path.join(self._extra_root, "entries.npy"), np.array(rows, dtype=dtype))
        np.save(os.path.join(self._extra_root, "class-ids.npy"), np.array(class_ids, dtype=f"U{max_id_length}"))
        self._entries = None
        self._class_ids = None
        logger.info("ImageNet-22k: %d images in %d classes", len(rows), len(class_ids))
