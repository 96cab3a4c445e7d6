"""Helpers shared by the losses: collectives that are the identity without a process group, and fp32 casts."""

import torch
import torch.distributed as dist
from torch import Tensor

from dinov2.distributed import get_global_size, is_enabled


def world_size() -> int:
    """W: the number of processes, 1 without a process group."""
    return get_global_size()


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """In-place sum over ranks, no autograd."""
    if is_enabled():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max_(tensor: Tensor) -> Tensor:
    """In-place maximum over ranks, no autograd."""
    if is_enabled():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_reduce_sum_async_(tensor: Tensor) -> dist.Work | None:
    """Start an in-place sum over ranks; returns the handle to `wait()` on, or None without a process group."""
    if is_enabled():
        return dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True)
    return None


class _AllReduceSum(torch.autograd.Function):
    """y = Σ_ranks x; the gradient of every rank's input is Σ_ranks dL_r/dy."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: Tensor) -> Tensor:
        reduced = tensor.clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: Tensor) -> Tensor:
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(tensor: Tensor) -> Tensor:
    """Sum over ranks that autograd differentiates (the backward pass sums the incoming gradients over ranks).

    With every rank computing the same function of the reduced tensor and the optimiser averaging the
    parameter gradients over ranks (DDP / FSDP), this yields the gradient of the single-process objective on
    the concatenated batch. Written on `dist.all_reduce` because `torch.distributed.nn.functional.all_reduce`
    is deprecated in recent PyTorch releases.
    """
    if is_enabled():
        return _AllReduceSum.apply(tensor)
    return tensor


def no_autocast(tensor: Tensor) -> torch.autocast:
    """A context that disables autocast on `tensor`'s device type, so the losses run in fp32 or wider."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def at_least_fp32(tensor: Tensor) -> Tensor:
    """`tensor` cast to float32 unless it is already float32 or float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))
