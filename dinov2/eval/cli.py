"""Command-line plumbing shared by `tools/eval_knn.py`, `tools/eval_linear.py` and `tools/eval_logreg.py`.

`add_eval_args` adds the backbone flags (`dinov2.eval.setup.add_backbone_args`) and the flags every
classification evaluation has; `check_eval_args(args)` checks them without building anything (every tool runs it
first, also before `--submit`); `setup_eval(args)` enables distributed mode when a launcher started the process
(torchrun, SLURM; nothing to do for plain `python`), configures logging, builds and loads the backbone (a
checkpoint that does not match the model is an error, see `dinov2.utils.checkpoint`), moves it to the device
(rank 0's weights are broadcast, so that a randomly initialised backbone is the same on every rank) and resolves
the autocast dtype.
"""

import argparse
import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from dinov2.data.loaders import check_dataset_str
from dinov2.distributed import broadcast_module_states_, enable, get_environment, is_enabled
from dinov2.eval.setup import add_backbone_args, backbone_from_args, check_backbone_args
from dinov2.eval.utils import autocast_dtype_from_name
from dinov2.logging import setup_logging
from dinov2.utils.config import load_config
from dinov2.utils.device import default_device

logger = logging.getLogger(__name__)

AUTOCAST_CHOICES = ("config", "fp32", "fp16", "bf16")


def add_eval_args(
    parser: argparse.ArgumentParser,
    *,
    batch_size: int,
    num_workers: int,
    resize_size: int,
    crop_size: int,
) -> argparse.ArgumentParser:
    """Add the backbone flags and `--train-dataset`, `--val-dataset`, `--output-dir`, `--batch-size`,
    `--num-workers`, `--resize-size`, `--crop-size`, `--autocast-dtype` (defaults given per tool)."""
    add_backbone_args(parser)
    group = parser.add_argument_group("evaluation data")
    group.add_argument(
        "--train-dataset",
        required=True,
        help="dataset string, e.g. ImageNet:split=TRAIN:root=R:extra=E, ImageFolder:root=DIR, Digits:split=TRAIN",
    )
    group.add_argument("--val-dataset", required=True, help="dataset string (same forms as --train-dataset)")
    group.add_argument("--output-dir", required=True, help="results, logs and checkpoints go here")
    group.add_argument("--batch-size", type=int, default=batch_size, help="images per process and batch")
    group.add_argument("--num-workers", type=int, default=num_workers, help="data-loader workers per process")
    group.add_argument(
        "--resize-size", type=int, default=resize_size, help="eval transform: resize the shorter side to this"
    )
    group.add_argument("--crop-size", type=int, default=crop_size, help="eval transform: center crop (train: crop)")
    group.add_argument(
        "--autocast-dtype",
        choices=AUTOCAST_CHOICES,
        default="config",
        help="feature-extraction autocast; config = the teacher backbone param_dtype of the config (official)",
    )
    return parser


@dataclass(frozen=True)
class EvalSetup:
    model: nn.Module  # backbone in eval mode, on `device`
    device: torch.device
    autocast_dtype: torch.dtype


def resolve_autocast_dtype(args: argparse.Namespace) -> torch.dtype:
    """`--autocast-dtype`, where `config` reads `compute_precision.teacher.backbone.mixed_precision.param_dtype`
    of the merged config (`--config-file` and `--opts` over the defaults), as the official evaluations do."""
    if args.autocast_dtype != "config":
        return autocast_dtype_from_name(args.autocast_dtype)
    cfg = load_config(args.config_file, list(args.opts))
    name = cfg.compute_precision.teacher.backbone.mixed_precision.param_dtype
    return autocast_dtype_from_name(name, flag="compute_precision.teacher.backbone.mixed_precision.param_dtype")


def check_eval_args(args: argparse.Namespace, *, extra_datasets: Sequence[str] = ()) -> None:
    """Check the flags of `add_eval_args` before anything runs or is submitted: the backbone flags (config keys,
    arch, weights file), the autocast dtype, and `--train-dataset`, `--val-dataset` and `extra_datasets` (dataset
    strings and their folders). Raises ValueError / ConfigError / FileNotFoundError naming the flag."""
    check_backbone_args(args)
    resolve_autocast_dtype(args)
    for dataset_str in (args.train_dataset, args.val_dataset, *extra_datasets):
        check_dataset_str(dataset_str)
    for flag in ("batch_size", "crop_size", "resize_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be at least 1")


def setup_eval(args: argparse.Namespace) -> EvalSetup:
    """Distributed mode (when launched by torchrun / SLURM), logging, the loaded backbone on its device."""
    environment = get_environment()
    if environment is None and not is_enabled():
        environment = enable()
    device = environment.device if environment is not None else default_device()
    setup_logging(args.output_dir)
    model = backbone_from_args(args).to(device)
    # every rank must evaluate the same backbone, also a randomly initialised one (no weights given)
    broadcast_module_states_(model, src=0)
    autocast_dtype = resolve_autocast_dtype(args)
    logger.info("evaluating on %s with autocast dtype %s", device, autocast_dtype)
    return EvalSetup(model=model, device=device, autocast_dtype=autocast_dtype)
