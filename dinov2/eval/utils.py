"""Shared pieces of the classification evaluations: feature models, autocast, sharded feature extraction.

Every collective goes through `torch.distributed` only when a process group is initialised, so the same code
runs in a single process (rank 0 of 1) and under torchrun / SLURM.

Sharding: rank `r` of `W` processes the samples `r, r + W, r + 2W, ...` of a dataset (no padding, so unlike the
official `DistributedSampler` no sample is duplicated), and the per-batch results are all-gathered and placed
at their dataset index, so every rank ends with the features of the whole dataset in dataset order.
"""

import contextlib
import logging
import math
from typing import Any, Callable, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from dinov2.distributed import get_global_rank, get_global_size, is_enabled, is_main_process

logger = logging.getLogger(__name__)

AutocastName = Literal["fp32", "fp16", "bf16"]
_AUTOCAST_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_dtype_from_name(name: str, flag: str = "--autocast-dtype") -> torch.dtype:
    """Map `fp32 | fp16 | bf16` to a torch dtype; raise naming `flag` for anything else."""
    if name not in _AUTOCAST_DTYPES:
        raise ValueError(f"{flag}={name!r} is not one of {list(_AUTOCAST_DTYPES)}; change {flag}")
    return _AUTOCAST_DTYPES[name]


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """`torch.autocast` on `device` with `dtype`; a no-op context for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def communication_device(device: torch.device) -> torch.device:
    """Device on which tensors must live for the current process group's collectives.

    NCCL needs CUDA tensors; gloo (and the no-process-group case) works on CPU tensors.
    """
    if is_enabled() and dist.get_backend() == "nccl":
        return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class ModelWithNormalize(nn.Module):
    """L2-normalised backbone embedding: `images [B, 3, H, W] -> [B, D]` (unit rows; the k-NN features)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.model(images), dim=1, p=2)


class ModelWithIntermediateLayers(nn.Module):
    """Frozen backbone returning the last `n_last_blocks` blocks' normed tokens (the linear-probe input).

    `images [B, 3, H, W] -> tuple of n_last_blocks pairs (patch_tokens [B, P, D], cls_token [B, D])`, oldest
    block first, computed without gradients under autocast with `autocast_dtype`.
    """

    def __init__(self, *, feature_model: nn.Module, n_last_blocks: int, autocast_dtype: torch.dtype) -> None:
        super().__init__()
        self.feature_model = feature_model
        self.feature_model.eval()
        self.n_last_blocks = n_last_blocks
        self.autocast_dtype = autocast_dtype

    def forward(self, images: Tensor) -> tuple[tuple[Tensor, Tensor], ...]:
        with torch.no_grad(), autocast_context(images.device, self.autocast_dtype):
            return tuple(
                self.feature_model.get_intermediate_layers(images, self.n_last_blocks, return_class_token=True)
            )


def rank_shard(num_samples: int) -> range:
    """Dataset indices processed by this rank: `rank, rank + W, ...` (uneven lengths, no padding)."""
    return range(get_global_rank(), num_samples, get_global_size())


def make_sharded_loader(
    dataset: Dataset, *, batch_size: int, num_workers: int, device: torch.device
) -> tuple[DataLoader, range]:
    """Sequential loader over this rank's shard of `dataset`, and the shard's dataset indices."""
    shard = rank_shard(len(dataset))  # type: ignore[arg-type]
    loader = DataLoader(
        Subset(dataset, shard),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )
    return loader, shard


def sharded_steps(num_samples: int, batch_size: int) -> int:
    """Number of batches of the longest rank shard: every rank runs this many collective steps."""
    return math.ceil(math.ceil(num_samples / get_global_size()) / batch_size)


def all_gather_rows(rows: Tensor, device: torch.device) -> Tensor:
    """Concatenate `rows [n_r, *S]` of every rank in rank order; `n_r` may differ (and be 0) between ranks.

    `S` must agree between the ranks that hold rows; a rank without rows may pass any `[0, ...]` tensor.
    Returns `[sum_r n_r, *S]` on `device` (identity without a process group).
    """
    if not is_enabled():
        return rows.to(device)
    comm = communication_device(device)
    world = get_global_size()
    assert rows.ndim <= 7, f"all_gather_rows supports at most 6 trailing dims, got {tuple(rows.shape)}"
    # exchange (n_r, ndim, *S) so that the padding and the final shape are known on every rank
    shape_info = torch.zeros(8, dtype=torch.int64, device=comm)
    shape_info[0] = rows.shape[0]
    if rows.shape[0] > 0:
        shape_info[1] = rows.ndim
        shape_info[2 : 2 + rows.ndim - 1] = torch.tensor(rows.shape[1:], dtype=torch.int64)
    infos = [torch.zeros_like(shape_info) for _ in range(world)]
    dist.all_gather(infos, shape_info)
    counts = [int(info[0]) for info in infos]
    holders = [info for info in infos if int(info[0]) > 0]
    if not holders:
        return rows.to(device)
    ndim = int(holders[0][1])
    row_shape = tuple(int(v) for v in holders[0][2 : 2 + ndim - 1])
    for info in holders:
        if int(info[1]) != ndim or tuple(int(v) for v in info[2 : 2 + ndim - 1]) != row_shape:
            raise RuntimeError(f"ranks gathered rows of different shapes: {[i.tolist() for i in holders]}")
    max_rows = max(counts)
    padded = torch.zeros((max_rows, *row_shape), dtype=rows.dtype, device=comm)
    if rows.shape[0] > 0:
        padded[: rows.shape[0]] = rows.to(comm)
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([part[:n] for part, n in zip(gathered, counts, strict=True)]).to(device)


@torch.inference_mode()
def extract_features(
    model: Callable[[Tensor], Tensor],
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    autocast_dtype: torch.dtype = torch.float32,
    gather_on_cpu: bool = False,
    description: str = "features",
) -> tuple[Tensor, Tensor]:
    """Run `model` over `dataset` on every rank's shard and gather the results on every rank.

    `model`: `images [B, 3, H, W] -> [B, D]`, run under autocast with `autocast_dtype`; the features are stored
    in float32. `dataset` yields `(image tensor, target)`; targets are ints (or equal-length label vectors).
    Returns `features [N, D]` float32 and `labels [N]` (or `[N, L]`) int64 in dataset order, on the CPU when
    `gather_on_cpu` else on `device`.
    """
    num_samples = len(dataset)  # type: ignore[arg-type]
    storage = torch.device("cpu") if gather_on_cpu else device
    loader, shard = make_sharded_loader(dataset, batch_size=batch_size, num_workers=num_workers, device=device)
    n_steps = sharded_steps(num_samples, batch_size)
    features: Tensor | None = None
    labels: Tensor | None = None
    filled = torch.zeros(num_samples, dtype=torch.bool)
    batches = iter(loader)
    progress = tqdm(range(n_steps), desc=f"extracting {description}", disable=not is_main_process())
    for step in progress:
        batch = next(batches, None)
        if batch is None:  # this rank's shard is exhausted; it still takes part in the gathers
            local_index = torch.zeros(0, dtype=torch.int64)
            local_features = torch.zeros(0, dtype=torch.float32)
            local_labels = torch.zeros(0, dtype=torch.int64)
        else:
            images, targets = batch
            start = step * batch_size
            local_index = torch.tensor(shard[start : start + images.shape[0]], dtype=torch.int64)
            with autocast_context(device, autocast_dtype):
                local_features = model(images.to(device, non_blocking=True)).float()
            local_labels = torch.as_tensor(targets, dtype=torch.int64)
        index = all_gather_rows(local_index.to(device), device).cpu()
        batch_features = all_gather_rows(local_features, storage)
        batch_labels = all_gather_rows(local_labels.to(device), storage)
        if features is None or labels is None:
            features = torch.zeros((num_samples, *batch_features.shape[1:]), dtype=torch.float32, device=storage)
            labels = torch.full((num_samples, *batch_labels.shape[1:]), -1, dtype=torch.int64, device=storage)
        features[index.to(storage)] = batch_features
        labels[index.to(storage)] = batch_labels
        filled[index] = True
    assert features is not None and labels is not None, f"no batch was extracted from {num_samples} samples"
    assert bool(filled.all()), f"{int((~filled).sum())} of {num_samples} samples were not extracted"
    logger.info("extracted %s: features %s, labels %s", description, tuple(features.shape), tuple(labels.shape))
    return features, labels


def evaluate_scores(
    score_fn: Callable[[Tensor], dict[str, Tensor]],
    dataset: Dataset,
    *,
    metrics: dict[str, Any],
    batch_size: int,
    num_workers: int,
    device: torch.device,
    description: str = "evaluating",
) -> None:
    """Update `metrics[name]` (a `ClassificationMetric`) with `score_fn(images)[name]` over this rank's shard.

    `score_fn`: `images [B, 3, H, W] -> {name: scores [B, C]}`. The caller reduces the metrics over ranks.
    """
    loader, _ = make_sharded_loader(dataset, batch_size=batch_size, num_workers=num_workers, device=device)
    for images, targets in tqdm(loader, desc=description, disable=not is_main_process()):
        scores = score_fn(images.to(device, non_blocking=True))
        for name, metric in metrics.items():
            metric.update(scores[name], torch.as_tensor(targets))
