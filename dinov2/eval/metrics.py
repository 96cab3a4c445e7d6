"""Top-k classification metrics accumulated over batches and summed over ranks.

The official evaluation uses torchmetrics; this module computes the same quantities with plain counters so
that the sums can be all-reduced with `dinov2.distributed.all_reduce_sum_` (identity without a process group):

* `mean_accuracy`: micro top-k accuracy (fraction of samples whose target is among the k best scores).
* `mean_per_class_accuracy`: macro top-k accuracy, the mean of the per-class accuracies over the classes that
  have at least one sample.
* `per_class_accuracy`: the per-class top-k accuracies, a tensor `[C]` (NaN for classes without samples).
* `imagenet_real_accuracy`: multi-label targets `[B, L]` padded with -1 (ImageNet-ReaL); a sample counts as a
  hit when any of its k best predictions is one of its labels; samples without any label are ignored.
"""

import logging
from typing import Literal, get_args

import torch
from torch import Tensor

from dinov2.distributed import all_reduce_sum_

logger = logging.getLogger(__name__)

MetricType = Literal["mean_accuracy", "mean_per_class_accuracy", "per_class_accuracy", "imagenet_real_accuracy"]
METRIC_TYPES: tuple[str, ...] = get_args(MetricType)
DEFAULT_TOPK: tuple[int, ...] = (1, 5)


def check_metric_type(metric_type: str, flag: str) -> MetricType:
    """Return `metric_type` when it is one of `METRIC_TYPES`, else raise naming the flag to change."""
    if metric_type not in METRIC_TYPES:
        raise ValueError(f"{flag}={metric_type!r} is not one of {list(METRIC_TYPES)}; change {flag}")
    return metric_type  # type: ignore[return-value]


def usable_topk(num_classes: int, topk: tuple[int, ...] = DEFAULT_TOPK) -> tuple[int, ...]:
    """The k of `topk` that do not exceed `num_classes` (top-5 of a 2-class problem is meaningless)."""
    kept = tuple(k for k in topk if k <= num_classes)
    if len(kept) != len(topk):
        logger.info("only %d classes: reporting top-%s accuracy, not top-%s", num_classes, kept, topk)
    return kept


class ClassificationMetric:
    """Accumulates top-k hits of `scores [B, C]` against targets and reduces them over ranks.

    Targets are class indices `[B]` (int64), or for `imagenet_real_accuracy` label sets `[B, L]` padded with -1.
    `compute()` returns `{"top-1": value, "top-5": value}` as fractions in [0, 1]: a 0-dim tensor for every
    type but `per_class_accuracy`, whose values are `[C]` tensors.
    """

    def __init__(self, *, metric_type: MetricType, num_classes: int, topk: tuple[int, ...] = DEFAULT_TOPK) -> None:
        check_metric_type(metric_type, "metric_type")
        if any(k > num_classes for k in topk):
            raise ValueError(f"topk={topk} exceeds num_classes={num_classes}; pass usable_topk(num_classes)")
        self.metric_type = metric_type
        self.num_classes = num_classes
        self.topk = topk
        # hits[i, c] = samples of class c whose target is in the top-topk[i]; counts[c] = samples of class c.
        self.hits = torch.zeros(len(topk), num_classes, dtype=torch.float64)
        self.counts = torch.zeros(num_classes, dtype=torch.float64)
        self._reduced = False

    def update(self, scores: Tensor, targets: Tensor) -> None:
        """Add a batch: `scores [B, C]` (any float dtype) and targets `[B]` or, for ReaL, `[B, L]`."""
        if scores.ndim != 2 or scores.shape[1] != self.num_classes:
            raise ValueError(f"scores must be [B, {self.num_classes}], got {tuple(scores.shape)}")
        scores = scores.detach().float().cpu()
        targets = targets.detach().cpu().long()
        best = scores.topk(max(self.topk), dim=1).indices  # [B, kmax], best first
        if self.metric_type == "imagenet_real_accuracy":
            if targets.ndim == 1:
                targets = targets[:, None]
            labelled = (targets >= 0).any(dim=1)
            # in_set[b, j] = prediction j of sample b is one of its labels
            in_set = (best[:, :, None] == targets[:, None, :]).any(dim=2) & labelled[:, None]
            for i, k in enumerate(self.topk):
                self.hits[i, 0] += in_set[:, :k].any(dim=1).sum()
            self.counts[0] += labelled.sum()
            return
        if targets.ndim != 1:
            raise ValueError(f"{self.metric_type} needs targets [B], got {tuple(targets.shape)}")
        correct = best == targets[:, None]  # [B, kmax]
        for i, k in enumerate(self.topk):
            self.hits[i].index_add_(0, targets, correct[:, :k].any(dim=1).double())
        self.counts.index_add_(0, targets, torch.ones_like(targets, dtype=torch.float64))

    def reduce(self, device: torch.device) -> None:
        """Sum the counters over ranks (once) on `device` (the process group's, see
        `dinov2.eval.utils.communication_device`); a no-op without a process group."""
        assert not self._reduced, "ClassificationMetric.reduce() called twice"
        packed = torch.cat([self.hits.flatten(), self.counts]).to(device)
        all_reduce_sum_(packed)
        packed = packed.cpu()
        self.hits = packed[: self.hits.numel()].view_as(self.hits)
        self.counts = packed[self.hits.numel() :]
        self._reduced = True

    def compute(self) -> dict[str, Tensor]:
        """Top-k accuracies (fractions); call `reduce()` first when running on several ranks."""
        results: dict[str, Tensor] = {}
        for i, k in enumerate(self.topk):
            if self.metric_type in ("mean_accuracy", "imagenet_real_accuracy"):
                value = self.hits[i].sum() / self.counts.sum().clamp(min=1)
            else:
                per_class = self.hits[i] / self.counts
                if self.metric_type == "per_class_accuracy":
                    value = per_class
                else:
                    value = per_class[self.counts > 0].mean()
            results[f"top-{k}"] = value.float()
        return results
