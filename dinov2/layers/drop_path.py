"""Stochastic depth: per-sample DropPath and the batch-subset residual used by DINOv2 blocks."""

from typing import Callable

import torch
from torch import Tensor, nn


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Zero whole samples of `x` [B, ...] with probability `drop_prob`, rescale the rest by 1 / (1 - drop_prob)."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = x.new_empty(mask_shape).bernoulli_(keep_prob)
    return x * keep.div_(keep_prob)


class DropPath(nn.Module):
    """Per-sample stochastic depth applied to a residual branch output [B, N, D] (identity in eval mode)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def add_residual_on_batch_subset(x: Tensor, residual_fn: Callable[[Tensor], Tensor], drop_ratio: float) -> Tensor:
    """DINOv2's batch-subset stochastic depth: `x + scale * residual_fn(x[subset])` on a random subset.

    A random subset of `max(int(B * (1 - drop_ratio)), 1)` samples of `x` [B, N, D] gets the residual,
    scaled by `B / subset_size` so that its expectation matches the plain residual; the other samples
    pass through unchanged. Only the subset is computed, which is the point of this variant.
    """
    batch = x.shape[0]
    subset_size = max(int(batch * (1.0 - drop_ratio)), 1)
    subset = torch.randperm(batch, device=x.device)[:subset_size]
    residual = residual_fn(x[subset])
    out = torch.index_add(x.flatten(1), 0, subset, residual.flatten(1).to(x.dtype), alpha=batch / subset_size)
    return out.view_as(x)
