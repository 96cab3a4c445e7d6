"""The lazily applied, asynchronously all-reduced EMA centre shared by DINOLoss and iBOTPatchLoss."""

import torch
import torch.distributed as dist
from torch import Tensor

from dinov2.loss.common import all_reduce_sum_async_, world_size


class PendingCenterUpdate:
    """A batch statistic whose all-reduce (sum) runs in the background until the centre is next needed.

    `start(batch_sum, n_groups)` launches the all-reduce; `apply_(center, momentum)` waits for it and sets
    `center <- momentum * center + (1 - momentum) * batch_sum_all_ranks / (n_groups * W)`. Holds no state
    that belongs in a checkpoint (the centre itself is a buffer of the owning loss).
    """

    def __init__(self) -> None:
        self._batch_sum: Tensor | None = None
        self._n_groups = 0
        self._handle: dist.Work | None = None

    @property
    def is_pending(self) -> bool:
        return self._batch_sum is not None

    def start(self, batch_sum: Tensor, n_groups: int) -> None:
        assert not self.is_pending, "apply_ the pending centre update before starting another one"
        self._batch_sum = batch_sum
        self._n_groups = n_groups
        self._handle = all_reduce_sum_async_(batch_sum)

    @torch.no_grad()
    def apply_(self, center: Tensor, momentum: float) -> None:
        """Fold the pending statistic into `center` in place; a no-op when nothing is pending."""
        if self._batch_sum is None:
            return
        if self._handle is not None:
            self._handle.wait()
        batch_center = self._batch_sum / (self._n_groups * world_size())
        center.copy_(center * momentum + batch_center * (1 - momentum))
        self._batch_sum = None
        self._handle = None
