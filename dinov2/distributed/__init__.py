"""Rank/size helpers and collectives that are safe without a process group.

Every helper returns the single-process answer (rank 0 of 1, identity collectives) when
torch.distributed is not initialised, so library code calls them unconditionally.
"""

import os

import torch
import torch.distributed as dist


def is_enabled() -> bool:
    """True when a torch.distributed process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_global_rank() -> int:
    return dist.get_rank() if is_enabled() else 0


def get_global_size() -> int:
    return dist.get_world_size() if is_enabled() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_enabled() else 0


def get_local_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if is_enabled() else 1


def is_main_process() -> bool:
    return get_global_rank() == 0


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no autograd); identity without a process group."""
    if is_enabled():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if is_enabled():
        dist.barrier()
