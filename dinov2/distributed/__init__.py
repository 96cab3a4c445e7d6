"""Rank/size helpers and collectives that are safe without a process group, and the process-group bootstrap.

Every helper returns the single-process answer (rank 0 of 1, identity collectives) when
torch.distributed is not initialised, so library code calls them unconditionally.
`enable()` detects how the process was launched (plain python, torchrun, SLURM), initialises the process
group when needed (gloo on CPU, NCCL on CUDA) and logs what it found.
"""

import dataclasses
import datetime
import itertools
import logging
import os
import random
import re
import socket
from typing import Literal, Mapping

import torch
import torch.distributed as dist

from dinov2.utils.device import cuda_device_index

logger = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------------------------
# Process-group bootstrap: one `enable()` for plain python, torchrun and SLURM.
# ---------------------------------------------------------------------------------------------------------------

_TORCHRUN_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")

LaunchKind = Literal["python", "torchrun", "slurm"]


@dataclasses.dataclass(frozen=True)
class DistributedEnvironment:
    """What `enable()` detected: the launcher, this process's place in the job, the backend and device."""

    launcher: LaunchKind
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    backend: str
    device: torch.device


def parse_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM node list: `gpu[01-03,7],cpu7` -> `[gpu01, gpu02, gpu03, gpu7, cpu7]`.

    Ranges keep the zero-padding width of their lower bound, as SLURM writes them.
    """
    nodes: list[str] = []
    for match in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?", nodelist):
        prefix, ranges = match.group(1), match.group(2)
        if ranges is None:
            nodes.append(prefix)
            continue
        for part in ranges.split(","):
            if "-" in part:
                low, high = part.split("-")
                nodes.extend(f"{prefix}{i:0{len(low)}d}" for i in range(int(low), int(high) + 1))
            else:
                nodes.append(prefix + part)
    return nodes


def _slurm_port(job_id: str) -> int:
    # The same port on every task of a job, without communication (as official: seeded by the job id).
    return random.Random(int(job_id)).randint(20000, 60000)


def free_port() -> int:
    """A TCP port on localhost that is free right now (for tests and single-node launches)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def detect_environment(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """The six torchrun variables this process should run with, or None for a single plain process.

    Detection order: a complete torchrun set (all six variables) is used as is; otherwise a SLURM task
    (`SLURM_JOB_ID`, `SLURM_PROCID`, `SLURM_NTASKS` set, inside a job step `SLURM_STEP_ID`: srun or submitit)
    is translated as official DINOv2 does; a partial torchrun set is an error naming the variables present and
    missing; otherwise a plain single process (None: no process group).
    FIX vs official: official checks SLURM first, which breaks torchrun started inside one SLURM task (every
    torchrun child would read SLURM_PROCID=0). FIX: a SLURM batch script outside srun (no job step) with
    more than one task is an error (official: one process waits for the missing tasks until the process
    group times out); with one task it is a plain single process.
    """
    env = os.environ if environ is None else environ
    present = [name for name in _TORCHRUN_VARIABLES if name in env]
    if len(present) == len(_TORCHRUN_VARIABLES):
        return {"launcher": "torchrun", **{name: env[name] for name in _TORCHRUN_VARIABLES}}
    in_slurm_job = "SLURM_JOB_ID" in env and "SLURM_PROCID" in env and "SLURM_NTASKS" in env
    if in_slurm_job and "SLURM_STEP_ID" not in env and int(env["SLURM_NTASKS"]) > 1:
        raise RuntimeError(
            f"SLURM job {env['SLURM_JOB_ID']} has SLURM_NTASKS={env['SLURM_NTASKS']} tasks but this process runs "
            "in its batch script, outside a job step (no SLURM_STEP_ID); start one process per task with "
            "`srun python ...`, or submit with the tool's --submit flag"
        )
    if in_slurm_job and "SLURM_STEP_ID" in env:
        nodes = parse_slurm_nodelist(env["SLURM_JOB_NODELIST"])
        n_nodes = int(env.get("SLURM_JOB_NUM_NODES", len(nodes)))
        if len(nodes) != n_nodes:
            raise RuntimeError(
                f"SLURM_JOB_NODELIST={env['SLURM_JOB_NODELIST']!r} expands to {len(nodes)} nodes but "
                f"SLURM_JOB_NUM_NODES={n_nodes}"
            )
        n_tasks = int(env["SLURM_NTASKS"])
        return {
            "launcher": "slurm",
            "MASTER_ADDR": nodes[0],
            "MASTER_PORT": env.get("MASTER_PORT", str(_slurm_port(env["SLURM_JOB_ID"]))),
            "RANK": env["SLURM_PROCID"],
            "WORLD_SIZE": str(n_tasks),
            "LOCAL_RANK": env["SLURM_LOCALID"],
            "LOCAL_WORLD_SIZE": str(n_tasks // n_nodes),
        }
    if present:
        missing = [name for name in _TORCHRUN_VARIABLES if name not in env]
        raise RuntimeError(
            f"incomplete launcher environment: {present} are set but {missing} are not; launch with "
            "torchrun (which sets all six), under SLURM, or as a plain single process with none of them"
        )
    return None


_ENVIRONMENT: DistributedEnvironment | None = None


def enable(*, backend: Literal["auto", "gloo", "nccl"] = "auto", timeout_s: float = 1800.0) -> DistributedEnvironment:
    """Detect the launcher, initialise the process group when there is more than one process, log it.

    - plain `python` (no launcher variables): no process group; rank 0 of 1.
    - torchrun: the six variables it sets are used as they are.
    - SLURM (`srun`/submitit task): rank, world size and master address come from SLURM's variables and
      are exported, so that libraries reading the torchrun names see them too.
    The backend is NCCL when CUDA is available (device `cuda:<local_rank>`, or `cuda:0` when the process sees
    one GPU, see `dinov2.utils.device.cuda_device_index`; made current; gloo is added
    for CPU tensors), gloo otherwise (device `cpu`). Returns what was detected; calling it twice is an error.
    """
    global _ENVIRONMENT
    if _ENVIRONMENT is not None or is_enabled():
        raise RuntimeError("dinov2.distributed.enable() was already called in this process")
    detected = detect_environment()
    use_cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend={backend!r} is not one of ['auto', 'gloo', 'nccl']")
    if detected is None:
        device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        _ENVIRONMENT = DistributedEnvironment("python", 0, 1, 0, 1, "", 0, "none", device)
    else:
        launcher = detected.pop("launcher")
        os.environ.update(detected)
        local_rank = int(detected["LOCAL_RANK"])
        device = (
            torch.device("cuda", cuda_device_index(local_rank, torch.cuda.device_count()))
            if use_cuda
            else torch.device("cpu")
        )
        if use_cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(
            # NCCL for CUDA tensors plus gloo for the few CPU collectives (metric sync, checkpoint metadata)
            backend="cpu:gloo,cuda:nccl" if backend == "nccl" else backend,
            rank=int(detected["RANK"]),
            world_size=int(detected["WORLD_SIZE"]),
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if backend == "nccl" else None,
        )
        _ENVIRONMENT = DistributedEnvironment(
            launcher,  # type: ignore[arg-type]
            int(detected["RANK"]),
            int(detected["WORLD_SIZE"]),
            local_rank,
            int(detected["LOCAL_WORLD_SIZE"]),
            detected["MASTER_ADDR"],
            int(detected["MASTER_PORT"]),
            backend,
            device,
        )
    logger.info(
        "distributed: launcher=%s rank=%d/%d local_rank=%d/%d backend=%s device=%s%s",
        _ENVIRONMENT.launcher,
        _ENVIRONMENT.rank,
        _ENVIRONMENT.world_size,
        _ENVIRONMENT.local_rank,
        _ENVIRONMENT.local_world_size,
        _ENVIRONMENT.backend,
        _ENVIRONMENT.device,
        f" master={_ENVIRONMENT.master_addr}:{_ENVIRONMENT.master_port}" if is_enabled() else "",
    )
    return _ENVIRONMENT


def get_environment() -> DistributedEnvironment | None:
    """What `enable()` detected, or None when it has not been called in this process."""
    return _ENVIRONMENT


def disable() -> None:
    """Destroy the process group created by `enable()` (end of a run, or between tests)."""
    global _ENVIRONMENT
    if is_enabled():
        dist.destroy_process_group()
    _ENVIRONMENT = None


def broadcast_module_states_(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers to every rank (FSDP1's `sync_module_states`); no-op alone."""
    if not is_enabled():
        return
    with torch.no_grad():
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            dist.broadcast(tensor.data, src=src)


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (no autograd); identity without a process group."""
    if is_enabled():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(get_global_size())
    return tensor
