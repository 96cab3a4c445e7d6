"""scikit-learn's bundled handwritten digits as a tiny real image dataset for CPU demos and tests.

1,797 real 8x8 digits (10 classes), split with a stratified `train_test_split(test_size=397,
random_state=0)` into TRAIN (1,400) and VAL (397). Each image (values 0-16) is scaled to uint8
(x 255 / 16, rounded), resized to 32x32 with PIL bicubic and converted to RGB. Deterministic: no
randomness besides the fixed split seed, nothing downloaded.
"""

import logging
from enum import Enum
from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from dinov2.data.decoding import to_rgb

logger = logging.getLogger(__name__)

DIGITS_IMAGE_SIZE = 32
_N_HELD_OUT = 397


class DigitsSplit(Enum):
    TRAIN = "train"
    VAL = "val"


class Digits(Dataset):
    """Sample i: (RGB PIL image 32x32, digit class 0-9)."""

    Split = DigitsSplit

    def __init__(
        self,
        *,
        split: DigitsSplit,
        transforms: Callable | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if transforms is not None and (transform is not None or target_transform is not None):
            raise ValueError("pass either `transforms` or `transform`/`target_transform`, not both")
        digits = load_digits()
        images_train, images_val, targets_train, targets_val = train_test_split(
            digits.images, digits.target, test_size=_N_HELD_OUT, random_state=0, stratify=digits.target
        )
        images, targets = (images_train, targets_train) if split == DigitsSplit.TRAIN else (images_val, targets_val)
        pixels = np.round(images * 255.0 / 16.0).astype(np.uint8)
        self._images = [
            to_rgb(Image.fromarray(digit).resize((DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE), Image.BICUBIC))
            for digit in pixels
        ]
        self._targets = np.asarray(targets, dtype=np.int64)
        self.split = split
        self.transforms = transforms
        self.transform = transform
        self.target_transform = target_transform

    def get_target(self, index: int) -> int:
        return int(self._targets[index])

    def get_targets(self) -> np.ndarray:
        return self._targets

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image: Any = self._images[index].copy()
        target: Any = int(self._targets[index])
        if self.transforms is not None:
            return self.transforms(image, target)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target
