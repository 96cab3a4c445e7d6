"""Base class of the file-backed datasets: decode bytes into RGB images and skip unreadable ones.

Bad input. A sample whose bytes cannot be read or decoded (missing, truncated, not an image) is skipped: a
warning names the file, the file is remembered as failed in `dataset.bad_images` (a BadImageCounter shared by
the main process and its DataLoader workers) and is never read or counted again, and a replacement drawn at
random is returned instead. The replacement of sample i is the first readable sample of the fixed
pseudo-random sequence r(i, 1), r(i, 2), ... (numpy PCG64 seeded with (i, k)), so it depends neither on file
names nor on worker count or on which files were already known to fail: a resumed run draws the same images.
Loading stops with BadImageError (config key `train.max_bad_image_fraction`) when the number of distinct failed
files exceeds `max_bad_image_fraction * len(dataset)`, or when every file failed. Each process (rank) keeps its
own record.

Reading the counter (training loop, main process): `n_read, n_failed = dataset.bad_images.totals()` (distinct
files).
"""

import logging
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import VisionDataset

from dinov2.data.decoding import decode_image

logger = logging.getLogger(__name__)

# Replacement candidates tried per sample before giving up; at one readable file among N the chance that
# 20 N random draws all miss it is e^-20.
_REPLACEMENT_DRAWS_PER_SAMPLE = 20
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class BadImageError(RuntimeError):
    """Too many images of a dataset could not be decoded."""


class BadImageCounter:
    """Which samples of a dataset were read and which failed, shared by a process and its DataLoader workers.

    One shared-memory byte per sample (0 not read, 1 decoded, 2 failed); workers of one process see each
    other's marks, and a sample is counted once however often it is drawn.
    """

    UNREAD, DECODED, FAILED = 0, 1, 2

    def __init__(self, *, sample_count: int) -> None:
        self._states = torch.zeros(sample_count, dtype=torch.uint8).share_memory_()

    def is_failed(self, index: int) -> bool:
        return bool(self._states[index] == self.FAILED)

    def mark(self, index: int, *, failed: bool) -> None:
        self._states[index] = self.FAILED if failed else self.DECODED

    def totals(self) -> tuple[int, int]:
        """(distinct samples read, distinct samples that failed)."""
        return int(torch.count_nonzero(self._states)), int(torch.count_nonzero(self._states == self.FAILED))

    def reset(self) -> None:
        self._states.zero_()


def replacement_index(index: int, draw: int, sample_count: int) -> int:
    """Draw `draw` (1, 2, ...) of the fixed pseudo-random replacement sequence of sample `index`."""
    return int(np.random.default_rng((index, draw)).integers(sample_count))


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
        self._bad_images: BadImageCounter | None = None

    def get_image_data(self, index: int) -> bytes:
        raise NotImplementedError(f"{type(self).__name__} must implement get_image_data")

    def get_target(self, index: int) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement get_target")

    def describe(self, index: int) -> str:
        """Human-readable location of sample `index` (a file path) for warnings."""
        return f"sample {index}"

    @property
    def bad_images(self) -> BadImageCounter:
        """The shared record of read and failed samples; created on first access, which must happen before
        DataLoader workers start (make_data_loader does it), so that they share it."""
        if self._bad_images is None:
            self._bad_images = BadImageCounter(sample_count=len(self))
        return self._bad_images

    def _check_failure_budget(self) -> None:
        n_read, n_failed = self.bad_images.totals()
        if n_failed >= len(self):
            raise BadImageError(f"none of the {len(self)} images of {type(self).__name__} at {self.root} decodes")
        if n_failed > self.max_bad_image_fraction * len(self):
            raise BadImageError(
                f"{n_failed} of the {len(self)} images of {type(self).__name__} at {self.root} failed to decode "
                f"({n_read} read so far), more than train.max_bad_image_fraction={self.max_bad_image_fraction} of "
                "the dataset; check the dataset or raise train.max_bad_image_fraction"
            )

    def _load_image(self, index: int) -> tuple[Image.Image, int]:
        """Decode sample `index` or, if it fails, its first readable replacement; returns (image, index used)."""
        n_samples = len(self)
        candidate = index
        for draw in range(1, _REPLACEMENT_DRAWS_PER_SAMPLE * n_samples + 1):
            if not self.bad_images.is_failed(candidate):
                try:
                    image = decode_image(self.get_image_data(candidate))
                except _DECODE_ERRORS as err:
                    self.bad_images.mark(candidate, failed=True)
                    logger.warning("skipping unreadable image %s: %s", self.describe(candidate), err)
                    self._check_failure_budget()
                else:
                    self.bad_images.mark(candidate, failed=False)
                    return image, candidate
            candidate = replacement_index(index, draw, n_samples)
        raise BadImageError(
            f"no readable image of {type(self).__name__} at {self.root} among "
            f"{_REPLACEMENT_DRAWS_PER_SAMPLE * n_samples} random draws"
        )

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, used_index = self._load_image(index)
        target = self.get_target(used_index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target
