"""Sharding of the meta-architecture with FSDP2 (`torch.distributed.fsdp.fully_shard`, public API only).

Layout (official DINOv2's, in the FSDP2 API): each of `student.{backbone, dino_head, ibot_head}` and
`teacher.{...}` is its own FSDP root with its own `compute_precision.<role>.<key>` settings; inside a
backbone every element of `backbone.blocks` (one block, or one BlockChunk when `student.block_chunks > 0`)
is its own unit, and the root unit holds the tokens, patch embedding and final norm. Student and teacher
are sharded alike on the same 1-D mesh, so the teacher's local shard of every parameter lines up with the
student's and the EMA runs on local shards (`local_tensor`).

Precision (one rule, documented in the README): with a process group, `MixedPrecisionPolicy(param_dtype,
reduce_dtype)` per submodule (fp32 master shards, compute in `param_dtype`, gradients reduced in
`reduce_dtype`); in a single process (no process group, no FSDP) the same `param_dtype` is applied with
`torch.autocast` around that submodule's forward (`autocast_context`). `fp32` is a no-op in both.
Buffers always stay in their own dtype (fp32), which is the only `buffer_dtype` FSDP2 supports.

Sharding strategies: FULL_SHARD -> `reshard_after_forward=True`; SHARD_GRAD_OP -> `False` (parameters
stay gathered between forward and backward); NO_SHARD -> replication, as HSDP on a (W, 1) mesh. The
teacher never runs backward, so `reshard_(teacher)` is called after each teacher forward (the FSDP2
public replacement for the official private `_reshard`).
"""

import contextlib
import dataclasses
import logging
from typing import Iterator, Literal, get_args

import torch
from omegaconf import DictConfig
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from dinov2 import distributed

logger = logging.getLogger(__name__)

PrecisionName = Literal["fp32", "fp16", "bf16"]
ShardingStrategy = Literal["NO_SHARD", "SHARD_GRAD_OP", "FULL_SHARD"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class SubmodulePrecision:
    """Compute / reduction dtypes and sharding strategy of one submodule (`compute_precision.<role>.<key>`)."""

    param_dtype: torch.dtype
    reduce_dtype: torch.dtype
    sharding_strategy: ShardingStrategy


def _dtype(value: str, key: str) -> torch.dtype:
    if value not in DTYPES:
        raise ValueError(f"{key}={value!r} is not one of {list(DTYPES)}; fix {key}")
    return DTYPES[value]


def submodule_precision(cfg: DictConfig, role: Literal["student", "teacher"], key: str) -> SubmodulePrecision:
    """Read and validate `compute_precision.<role>.<key>` of the training config."""
    prefix = f"compute_precision.{role}.{key}"
    section = cfg.compute_precision[role][key]
    strategy = section.sharding_strategy
    if strategy not in get_args(ShardingStrategy):
        raise ValueError(
            f"{prefix}.sharding_strategy={strategy!r} is not one of {list(get_args(ShardingStrategy))}; "
            f"fix {prefix}.sharding_strategy"
        )
    mixed = section.mixed_precision
    if mixed.buffer_dtype != "fp32":
        raise ValueError(
            f"{prefix}.mixed_precision.buffer_dtype={mixed.buffer_dtype!r}: FSDP2 keeps buffers in their own "
            f"dtype, so only 'fp32' is accepted; fix {prefix}.mixed_precision.buffer_dtype"
        )
    return SubmodulePrecision(
        param_dtype=_dtype(mixed.param_dtype, f"{prefix}.mixed_precision.param_dtype"),
        reduce_dtype=_dtype(mixed.reduce_dtype, f"{prefix}.mixed_precision.reduce_dtype"),
        sharding_strategy=strategy,
    )


@dataclasses.dataclass
class Meshes:
    """The 1-D data-parallel mesh, and the (W, 1) replicate mesh used for NO_SHARD submodules."""

    shard: DeviceMesh
    replicate: DeviceMesh


def build_meshes(device: torch.device) -> Meshes:
    """Device meshes over all ranks (requires a process group)."""
    if not distributed.is_enabled():
        raise RuntimeError("build_meshes needs a process group; call dinov2.distributed.enable() under torchrun")
    world_size = distributed.get_global_size()
    shard = init_device_mesh(device.type, (world_size,), mesh_dim_names=("shard",))
    replicate = init_device_mesh(device.type, (world_size, 1), mesh_dim_names=("replicate", "shard"))
    return Meshes(shard=shard, replicate=replicate)


def shard_submodule(module: nn.Module, *, precision: SubmodulePrecision, meshes: Meshes) -> None:
    """`fully_shard` every element of `module.blocks` (when present), then `module` itself as the root."""
    mesh = meshes.replicate if precision.sharding_strategy == "NO_SHARD" else meshes.shard
    policy = MixedPrecisionPolicy(param_dtype=precision.param_dtype, reduce_dtype=precision.reduce_dtype)
    reshard_after_forward = precision.sharding_strategy == "FULL_SHARD"
    blocks = getattr(module, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        for block in blocks:
            fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)


def fsdp_modules(module: nn.Module) -> Iterator[FSDPModule]:
    for submodule in module.modules():
        if isinstance(submodule, FSDPModule):
            yield submodule


def reshard_(module: nn.Module) -> None:
    """Free the gathered parameters of every FSDP unit in `module` (teacher after its no-grad forward)."""
    for submodule in fsdp_modules(module):
        submodule.reshard()


def set_gradient_sync_(module: nn.Module, enabled: bool) -> None:
    """Enable/disable the gradient reduce-scatter of `module`'s FSDP units (off for non-final micro-batches)."""
    for submodule in fsdp_modules(module):
        submodule.set_requires_gradient_sync(enabled, recurse=False)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view sharing its storage), or the tensor itself."""
    if isinstance(tensor, DTensor):
        with torch.no_grad():
            return tensor.to_local()
    return tensor


def autocast_context(precision: SubmodulePrecision, device: torch.device) -> contextlib.AbstractContextManager:
    """Single-process mixed precision: autocast to `param_dtype` (a no-op context for fp32)."""
    if precision.param_dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.param_dtype)
