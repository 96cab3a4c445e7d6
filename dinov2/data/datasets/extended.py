"""Base class of the file-backed datasets: decode bytes into RGB images and skip unreadable ones.

Bad input. A sample whose bytes cannot be read or decoded (missing, truncated, not an image) is skipped:
a warning names the file, the next index is tried instead, and the failure is counted in
`dataset.bad_images` (a BadImageCounter shared with the DataLoader workers). When the failures exceed
`max_bad_image_fraction * max(decodes attempted, len(dataset))`, loading stops with BadImageError
(config key `train.max_bad_image_fraction`). The dataset size in that bound keeps a few early failures
from stopping a run before the rate is meaningful.

Reading the counter (training loop, main process): `n_attempted, n_failed = dataset.bad_images.totals()`.
"""

import logging
from typing import Any, Callable

import torch
from PIL import Image
from torchvision.datasets import VisionDataset

from dinov2.data.decoding import decode_image

logger = logging.getLogger(__name__)


class BadImageError(RuntimeError):
    """Too many images of a dataset could not be decoded."""


class BadImageCounter:
    """Decode attempts and failures, summed over the main process and its DataLoader workers.

    Counts live in a shared-memory tensor with one row per process (row 0: main process, row 1 + i:
    worker i), so workers never write the same memory and the main process reads exact totals.
    """

    def __init__(self, *, max_workers: int = 1023) -> None:
        self._counts = torch.zeros(max_workers + 1, 2, dtype=torch.int64).share_memory_()

    def _row(self) -> int:
        worker_info = torch.utils.data.get_worker_info()
        row = 0 if worker_info is None else worker_info.id + 1
        if row >= len(self._counts):
            raise RuntimeError(
                f"BadImageCounter has room for {len(self._counts) - 1} workers, worker id {row - 1} is too large; "
                "lower train.num_workers"
            )
        return row

    def record(self, *, failed: bool) -> None:
        row = self._row()
        self._counts[row, 0] += 1
        if failed:
            self._counts[row, 1] += 1

    def totals(self) -> tuple[int, int]:
        """(decodes attempted, decodes failed) over all processes."""
        n_attempted, n_failed = self._counts.sum(dim=0).tolist()
        return int(n_attempted), int(n_failed)

    def reset(self) -> None:
        self._counts.zero_()


class ExtendedVisionDataset(VisionDataset):
    """Subclasses implement `get_image_data(i) -> bytes`, `get_target(i)`, `describe(i)`, `__len__`."""

    def __init__(
        self,
        root: str,
        transforms: Callable | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        *,
        max_bad_image_fraction: float = 0.01,
    ) -> None:
        super().__init__(root, transforms, transform, target_transform)
        if not 0.0 <= max_bad_image_fraction <= 1.0:
            raise ValueError(
                f"max_bad_image_fraction={max_bad_image_fraction} is not in [0, 1]; fix train.max_bad_image_fraction"
            )
        self.max_bad_image_fraction = max_bad_image_fraction
        self.bad_images = BadImageCounter()

    def get_image_data(self, index: int) -> bytes:
        raise NotImplementedError(f"{type(self).__name__} must implement get_image_data")

    def get_target(self, index: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement get_target")

    def describe(self, index: int) -> str:
        """Human-readable location of sample `index` (a file path) for warnings."""
        return f"sample {index}"

    def _check_failure_budget(self) -> None:
        n_attempted, n_failed = self.bad_images.totals()
        allowed = self.max_bad_image_fraction * max(n_attempted, len(self))
        if n_failed > allowed:
            raise BadImageError(
                f"{n_failed} of {n_attempted} image decodes failed in {type(self).__name__} at {self.root}, more "
                f"than train.max_bad_image_fraction={self.max_bad_image_fraction} of max(attempts, dataset size "
                f"{len(self)}); check the dataset or raise train.max_bad_image_fraction"
            )

    def _load_image(self, index: int) -> tuple[Image.Image, int]:
        """Decode sample `index`, or the first readable sample after it; returns (image, index used)."""
        n_samples = len(self)
        for offset in range(n_samples):
            current = (index + offset) % n_samples
            try:
                image = decode_image(self.get_image_data(current))
            except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
                self.bad_images.record(failed=True)
                logger.warning("skipping unreadable image %s: %s", self.describe(current), err)
                self._check_failure_budget()
                continue
            self.bad_images.record(failed=False)
            return image, current
        raise BadImageError(f"no image of {type(self).__name__} at {self.root} could be decoded")

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, used_index = self._load_image(index)
        target = self.get_target(used_index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
