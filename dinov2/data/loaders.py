"""Dataset strings, `make_dataset` and `make_data_loader` (as official DINOv2, see docs/data.md).

A dataset string is `Name[:key=value]*`:
* `ImageNet:split=TRAIN|VAL|TEST:root=DIR:extra=DIR` (metadata from tools/prepare_imagenet.py)
* `ImageNet22k:root=DIR:extra=DIR`
* `ImageFolder:root=DIR` (class = sub-folder; a flat folder is unlabeled, target -1)
* `Digits:split=TRAIN|VAL` (scikit-learn's handwritten digits, 1,400 / 397 images)
Paths cannot contain `:` or `=`, as officially.
"""

import ctypes
import ctypes.util
import logging
import os
import signal
from enum import Enum
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from dinov2 import distributed
from dinov2.data.datasets import Digits, DigitsSplit, ImageFolder, ImageNet, ImageNet22k, ImageNetSplit
from dinov2.data.samplers import EpochSampler, InfiniteSampler, ShardedInfiniteSampler

logger = logging.getLogger(__name__)


class SamplerType(Enum):
    DISTRIBUTED = "distributed"
    EPOCH = "epoch"
    INFINITE = "infinite"
    SHARDED_INFINITE = "sharded_infinite"
    SHARDED_INFINITE_NEW = "sharded_infinite_new"


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator_for_data_workers(*, threshold_bytes: int = 64 << 20) -> bool:
    """Let glibc malloc reuse freed memory of up to `threshold_bytes` instead of returning it to the system.

    The augmentation allocates many short-lived tensors of 0.1-2 MB; by default glibc maps each with mmap
    and unmaps it on free, so every allocation pays fresh page faults, which made the photometric ops ~3x
    slower on the project's CPU machines. With mmap and trim thresholds raised, freed blocks stay in the
    heap for reuse (at most 2 x `threshold_bytes` retained per process). make_data_loader calls this in
    each worker process. Returns False, changing nothing, where the C library is not glibc.
    """
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is None or not hasattr(libc, "mallopt"):
        logger.debug("no glibc mallopt; memory allocator left unchanged")
        return False
    applied = libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes) == 1
    applied = libc.mallopt(_M_TRIM_THRESHOLD, 2 * threshold_bytes) == 1 and applied
    logger.debug("glibc malloc thresholds raised to %d bytes: %s", threshold_bytes, applied)
    return applied


def _data_worker_init(worker_id: int) -> None:
    tune_allocator_for_data_workers()
    # Ctrl-C and SLURM's SIGTERM reach every process of the group; the main process stops the run (checkpoint,
    # dinov2.run.preemption) and shuts the workers down. A worker killed first would abort it instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# Keys each dataset accepts; all of them are required.
DATASET_KEYS: dict[str, tuple[str, ...]] = {
    "ImageNet": ("split", "root", "extra"),
    "ImageNet22k": ("root", "extra"),
    "ImageFolder": ("root",),
    "Digits": ("split",),
}


def parse_dataset_str(dataset_str: str) -> tuple[str, dict[str, str]]:
    """`"ImageNet:split=TRAIN:root=/d:extra=/e"` -> `("ImageNet", {"split": "TRAIN", "root": "/d", "extra": "/e"})`.

    Raises ValueError for an unknown dataset, an unknown, repeated, malformed or missing key.
    """
    name, *tokens = dataset_str.split(":")
    if name not in DATASET_KEYS:
        raise ValueError(
            f"unknown dataset {name!r} in dataset string {dataset_str!r}; expected one of {sorted(DATASET_KEYS)} "
            "(e.g. ImageFolder:root=DIR)"
        )
    allowed = DATASET_KEYS[name]
    kwargs: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not value:
            raise ValueError(f"malformed token {token!r} in dataset string {dataset_str!r}; expected key=value")
        if key not in allowed:
            raise ValueError(
                f"unknown key {key!r} for {name} in dataset string {dataset_str!r}; allowed keys: {allowed}"
            )
        if key in kwargs:
            raise ValueError(f"key {key!r} given twice in dataset string {dataset_str!r}")
        kwargs[key] = value
    missing = [key for key in allowed if key not in kwargs]
    if missing:
        raise ValueError(
            f"dataset string {dataset_str!r} lacks {missing}; {name} needs "
            + ":".join([name] + [f"{key}=..." for key in allowed])
        )
    return name, kwargs


def _parse_split(value: str, split_enum: type[Enum], dataset_str: str) -> Any:
    names = [member.name for member in split_enum]  # type: ignore[attr-defined]
    if value not in names:
        raise ValueError(f"split={value!r} in dataset string {dataset_str!r} is not one of {names}")
    return split_enum[value]


def _check_dir(path: str, key: str, dataset_str: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{key}={path!r} in dataset string {dataset_str!r} is not an existing directory")


def check_dataset_str(dataset_str: str) -> tuple[str, dict[str, str]]:
    """`parse_dataset_str`, then the split name and that `root` / `extra` are existing folders; opens no file.

    What `make_dataset` checks before it reads anything, and what `--submit` checks before submitting.
    """
    name, kwargs = parse_dataset_str(dataset_str)
    if "split" in kwargs:
        split_enum = DigitsSplit if name == "Digits" else ImageNetSplit
        _parse_split(kwargs["split"], split_enum, dataset_str)
    for key in ("root", "extra"):
        if key in kwargs:
            _check_dir(kwargs[key], key, dataset_str)
    return name, kwargs


def make_dataset(
    *,
    dataset_str: str,
    transform: Callable | None = None,
    target_transform: Callable | None = None,
    max_bad_image_fraction: float = 0.01,
) -> Dataset:
    """Build the dataset of `dataset_str`; samples are `(transform(RGB PIL image), target_transform(target))`.

    `max_bad_image_fraction` (config `train.max_bad_image_fraction`) bounds undecodable images of the
    file-backed datasets; their counter is `dataset.bad_images` (see dinov2/data/datasets/extended.py).
    """
    logger.info('using dataset: "%s"', dataset_str)
    name, kwargs = check_dataset_str(dataset_str)
    dataset: Dataset
    common = {"transform": transform, "target_transform": target_transform}
    if name == "Digits":
        dataset = Digits(split=DigitsSplit[kwargs["split"]], **common)
    else:
        file_kwargs = {**common, "max_bad_image_fraction": max_bad_image_fraction}
        if name == "ImageNet":
            split = ImageNetSplit[kwargs["split"]]
            dataset = ImageNet(split=split, root=kwargs["root"], extra=kwargs["extra"], **file_kwargs)
        elif name == "ImageNet22k":
            dataset = ImageNet22k(root=kwargs["root"], extra=kwargs["extra"], **file_kwargs)
        else:
            dataset = ImageFolder(root=kwargs["root"], **file_kwargs)
    logger.info("# of dataset samples: %d", len(dataset))  # type: ignore[arg-type]
    return dataset


def _make_sampler(
    *,
    dataset: Dataset,
    sampler_type: SamplerType | None,
    shuffle: bool,
    seed: int,
    size: int,
    advance: int,
    rank: int,
    world_size: int,
) -> Sampler | None:
    sample_count = len(dataset)  # type: ignore[arg-type]
    if sampler_type in (SamplerType.INFINITE, SamplerType.SHARDED_INFINITE, SamplerType.SHARDED_INFINITE_NEW):
        if size > 0:
            raise ValueError(f"sampler_size={size} is not supported by the {sampler_type.value} sampler (endless)")
        if sampler_type == SamplerType.INFINITE:
            return InfiniteSampler(
                sample_count=sample_count, shuffle=shuffle, seed=seed, start=rank, step=world_size, advance=advance
            )
        return ShardedInfiniteSampler(
            sample_count=sample_count,
            shuffle=shuffle,
            seed=seed,
            start=rank,
            step=world_size,
            advance=advance,
            use_new_shuffle_tensor_slice=sampler_type == SamplerType.SHARDED_INFINITE_NEW,
        )
    if advance > 0:
        raise ValueError(
            f"sampler_advance={advance} needs an infinite sampler; the {sampler_type} sampler resumes at epoch "
            "boundaries only"
        )
    if sampler_type == SamplerType.EPOCH:
        return EpochSampler(
            size=size if size > 0 else sample_count,
            sample_count=sample_count,
            shuffle=shuffle,
            seed=seed,
            start=rank,
            step=world_size,
        )
    if size > 0:
        raise ValueError(f"sampler_size={size} is only supported by the epoch sampler")
    if sampler_type == SamplerType.DISTRIBUTED:
        return DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
    return None


def make_data_loader(
    *,
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    shuffle: bool = True,
    seed: int = 0,
    sampler_type: SamplerType | str | None = SamplerType.INFINITE,
    sampler_size: int = -1,
    sampler_advance: int = 0,
    drop_last: bool = True,
    persistent_workers: bool | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> DataLoader:
    """DataLoader over `dataset` with a rank-sharded sampler.

    Args:
        seed: sampler seed (training passes `train.seed`).
        sampler_advance: samples of this rank's stream to skip (resume at iteration k: k * batch_size).
        persistent_workers: keep workers between iterations; None means "when num_workers > 0".
        rank, world_size: shard of this process; default from the process group (0 and 1 without one).
    Memory is pinned only when CUDA is available. Each worker process tunes the allocator with
    `tune_allocator_for_data_workers`. A dataset's `bad_images` record (file-backed datasets) is created here,
    before the workers start, so that they share it.
    """
    if isinstance(sampler_type, str):
        allowed = [member.value for member in SamplerType]
        if sampler_type not in allowed:
            raise ValueError(f"sampler_type={sampler_type!r} is not one of {allowed}")
        sampler_type = SamplerType(sampler_type)
    rank = distributed.get_global_rank() if rank is None else rank
    world_size = distributed.get_global_size() if world_size is None else world_size
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    if persistent_workers and num_workers == 0:
        raise ValueError("persistent_workers=True needs num_workers > 0")
    # Created now, before worker processes start, so that the workers share one record (fork and spawn alike).
    getattr(dataset, "bad_images", None)
    sampler = _make_sampler(
        dataset=dataset,
        sampler_type=sampler_type,
        shuffle=shuffle,
        seed=seed,
        size=sampler_size,
        advance=sampler_advance,
        rank=rank,
        world_size=world_size,
    )
    logger.info(
        "using PyTorch data loader: sampler %s, rank %d/%d, seed %d, advance %d, batch %d, %d workers",
        sampler_type,
        rank,
        world_size,
        seed,
        sampler_advance,
        batch_size,
        num_workers,
    )
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=persistent_workers,
        collate_fn=collate_fn,
        worker_init_fn=_data_worker_init if num_workers > 0 else None,
    )
