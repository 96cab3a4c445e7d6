"""Dataset wrappers."""

from typing import Any

import numpy as np
from torch.utils.data import Dataset


class DatasetWithEnumeratedTargets(Dataset):
    """Wrap a dataset so that sample i is `(image, (i, target))`; a None target (unlabeled split) becomes i."""

    def __init__(self, dataset: Dataset) -> None:
        self._dataset = dataset

    @property
    def bad_images(self) -> Any:
        """The wrapped dataset's BadImageCounter, or None for datasets without one."""
        return getattr(self._dataset, "bad_images", None)

    def get_image_data(self, index: int) -> bytes:
        return self._dataset.get_image_data(index)  # type: ignore[attr-defined]

    def get_target(self, index: int) -> tuple[int, Any]:
        return index, self._dataset.get_target(index)  # type: ignore[attr-defined]

    def get_targets(self) -> np.ndarray | None:
        return self._dataset.get_targets()  # type: ignore[attr-defined]

    def __getitem__(self, index: int) -> tuple[Any, tuple[int, Any]]:
        image, target = self._dataset[index]
        target = index if target is None else target
        return image, (index, target)

    def __len__(self) -> int:
        return len(self._dataset)  # type: ignore[arg-type]
