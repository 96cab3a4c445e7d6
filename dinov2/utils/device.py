"""Device choice: for tools and evaluations (`default_device`), and the CUDA ordinal of a launched process."""

import torch


def default_device() -> torch.device:
    """`cuda` when a GPU is available, else `cpu`."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cuda_device_index(local_rank: int, n_visible_devices: int) -> int:
    """The CUDA ordinal for the process with `local_rank` on its node, which sees `n_visible_devices` GPUs.

    One visible device (SLURM `--gpus-per-task=1` or `--gpu-bind=single:1`, or CUDA_VISIBLE_DEVICES set per
    process): ordinal 0 whatever the local rank, since each task sees only its own GPU. Several: the local
    rank modulo their number (one process per GPU, e.g. torchrun or `--gpus-per-node=8` with 8 tasks).
    """
    if n_visible_devices < 1:
        raise ValueError(f"no visible CUDA device (n_visible_devices={n_visible_devices}); check CUDA_VISIBLE_DEVICES")
    if local_rank < 0:
        raise ValueError(f"local_rank={local_rank} must be >= 0")
    return 0 if n_visible_devices == 1 else local_rank % n_visible_devices
