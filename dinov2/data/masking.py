"""Block-wise (BEiT-style) patch masks for the iBOT objective (official DINOv2).

All randomness uses Python's `random` module, as officially; DataLoader seeds it in every worker.
"""

import logging
import math
import random

import numpy as np

logger = logging.getLogger(__name__)


def default_max_num_patches(global_crops_size: int, patch_size: int) -> int:
    """Largest block the training masks may add at once: half the patch grid, int(0.5 * (S // p) ** 2).

    The official expression `0.5 * S // p * S // p` evaluates left to right as ((0.5 S) // p * S) // p,
    which agrees for 224/16 (98) and 224/14 (128) but gives 666 instead of 684 for 518/14
    (an official DINOv2 bug); we use the intended value.
    """
    n_side = global_crops_size // patch_size
    return int(0.5 * n_side * n_side)


class MaskingGenerator:
    """Random union of rectangles on an (h, w) patch grid.

    `generator(n)` returns a bool ndarray [h, w] with at most `n` True entries: rectangles of area
    U(min_num_patches, budget) and aspect exp(U(log min_aspect, log max_aspect)) are added until `n` is
    reached or an attempt round of 10 tries adds nothing; `budget = min(n - count, max_num_patches)`
    and a rectangle is kept only if it adds between 1 and `budget` new cells.
    """

    def __init__(
        self,
        input_size: int | tuple[int, int],
        num_masking_patches: int | None = None,
        min_num_patches: int = 4,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.height, self.width = input_size
        self.num_patches = self.height * self.width
        self.num_masking_patches = num_masking_patches
        self.min_num_patches = min_num_patches
        self.max_num_patches = self.num_patches if max_num_patches is None else max_num_patches
        if min_aspect <= 0:
            raise ValueError(f"min_aspect={min_aspect} must be > 0")
        max_aspect = max_aspect if max_aspect is not None else 1.0 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def __repr__(self) -> str:
        return (
            f"MaskingGenerator(grid {self.height}x{self.width}, patches {self.min_num_patches}->"
            f"{self.max_num_patches}, log aspect {self.log_aspect_ratio[0]:.3f}..{self.log_aspect_ratio[1]:.3f})"
        )

    def get_shape(self) -> tuple[int, int]:
        return self.height, self.width

    def _add_block(self, mask: np.ndarray, budget: int) -> int:
        """Try up to 10 rectangles; set the first acceptable one in place; return the number of new cells."""
        for _ in range(10):
            area = random.uniform(self.min_num_patches, budget)
            aspect = math.exp(random.uniform(*self.log_aspect_ratio))
            block_h = int(round(math.sqrt(area * aspect)))
            block_w = int(round(math.sqrt(area / aspect)))
            if block_w < self.width and block_h < self.height:
                top = random.randint(0, self.height - block_h)
                left = random.randint(0, self.width - block_w)
                window = mask[top : top + block_h, left : left + block_w]
                n_new = block_h * block_w - int(window.sum())
                if 0 < n_new <= budget:
                    window[...] = True
                    return n_new
        return 0

    def __call__(self, num_masking_patches: int = 0) -> np.ndarray:
        """Bool mask [h, w] with at most `num_masking_patches` True cells."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masking_patches:
            budget = min(num_masking_patches - count, self.max_num_patches)
            added = self._add_block(mask, budget)
            if added == 0:
                break
            count += added
        return mask
