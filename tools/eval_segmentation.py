"""ADE20K semantic segmentation with a linear head on a frozen backbone (DINOv2 protocols, mmsegmentation).

    python tools/eval_segmentation.py --config-file CONFIG.yaml --pretrained-weights teacher_checkpoint.pth \
        --data-root ADEChallengeData2016 --output-dir out/ade20k_linear

Hub-format weights: `--arch vit_small --patch-size 16 --weights FILE` instead of the config flags.
`--protocol ms` runs DINOv2's "+ms" variant (last four blocks, 640 px, multi-scale + flip test).
Multi-GPU: start the same command with torchrun or under SLURM (one task per GPU); `--batch-size` is the
global batch and is split over the processes.

Writes into --output-dir: `results.json` (aAcc, mIoU, mAcc in percent and the run's settings),
`predictions.png` (a few validation images, ground truth, prediction), `decode_head.pth` (the trained
head), `seg_config.py` (the resolved mmengine config), `logs/` and mmengine's own log folder.
"""

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from dinov2 import distributed
from dinov2.eval.setup import add_backbone_args, build_backbone_for_eval, check_backbone_args
from dinov2.logging import setup_logging
from dinov2.run.submit import add_submit_args, run_or_submit
from eval.segmentation.configs import DEFAULT_CROP_SIZE, OFFICIAL_BATCH_SIZE, OFFICIAL_ITERS, PROTOCOLS, ade20k_config
from eval.segmentation.layout import check_ade20k_layout
from eval.segmentation.run import predict_samples, save_head, save_prediction_figure, train_and_evaluate

logger = logging.getLogger("tools.eval_segmentation")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("ADE20K linear segmentation (DINOv2 protocol, mmsegmentation)", add_help=add_help)
    add_backbone_args(parser)
    parser.add_argument("--data-root", required=True, help="ADEChallengeData2016: images/ and annotations/")
    parser.add_argument("--output-dir", required=True, help="results folder")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="linear", help="DINOv2 'linear' or '+ms' protocol")
    parser.add_argument("--iters", type=int, default=OFFICIAL_ITERS, help="training iterations (warm-up scales along)")
    parser.add_argument("--batch-size", type=int, default=OFFICIAL_BATCH_SIZE, help="global batch size")
    parser.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help=f"crop / slide window / test short side; default {DEFAULT_CROP_SIZE} (smaller only for smoke runs)",
    )
    parser.add_argument("--num-workers", type=int, default=4, help="dataloader workers per process")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--log-interval", type=int, default=50, help="iterations between progress lines")
    parser.add_argument(
        "--num-vis-images", type=int, default=4, help="validation images in predictions.png (0: no figure)"
    )
    add_submit_args(parser)
    return parser


def _backbone_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    def absolute(path: str | None) -> str | None:
        return None if path is None else str(Path(path).resolve())

    return dict(
        config_file=absolute(args.config_file),
        pretrained_weights=absolute(args.pretrained_weights),
        arch=args.arch,
        patch_size=args.patch_size,
        num_register_tokens=args.num_register_tokens,
        weights=absolute(args.weights),
        opts=list(args.opts),
    )


def check(args: argparse.Namespace) -> None:
    """The inputs, checked before anything is built or submitted: the ADE20K layout at --data-root, the backbone
    flags (config keys, weights file) and the counts. Raises FileNotFoundError / ValueError naming the flag."""
    counts = check_ade20k_layout(args.data_root)
    logger.info("--data-root %s: %d training and %d validation images", args.data_root, *counts.values())
    check_backbone_args(args)
    for flag in ("iters", "batch_size", "crop_size", "num_workers", "log_interval"):
        value = getattr(args, flag)
        minimum = 0 if flag == "num_workers" else 1
        if value is not None and value < minimum:
            raise ValueError(f"--{flag.replace('_', '-')}={value} must be at least {minimum}")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train the head, evaluate, write the outputs; returns the content of results.json."""
    if distributed.detect_environment() is not None and not distributed.is_enabled():
        distributed.enable()
    world_size = distributed.get_global_size()
    environment = distributed.get_environment()
    if world_size > 1 and environment is not None and environment.backend != "nccl":
        raise ValueError(
            f"{world_size} processes with the {environment.backend} backend: the head's SyncBN (as in DINOv2) "
            "needs GPUs; run a CPU evaluation as a single process (no torchrun / multi-task srun)"
        )
    if args.batch_size % world_size != 0:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by the {world_size} processes")
    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir)

    backbone = _backbone_kwargs(args)
    probe = build_backbone_for_eval(**backbone)  # fails early on a bad checkpoint; gives the head's width
    embed_dim, n_blocks, patch_size = probe.embed_dim, probe.n_blocks, probe.patch_size
    del probe
    cfg = ade20k_config(
        protocol=args.protocol,
        data_root=str(Path(args.data_root).resolve()),
        work_dir=str(output_dir / "mmseg"),
        backbone=backbone,
        embed_dim=embed_dim,
        crop_size=args.crop_size,
        iters=args.iters,
        batch_size_per_gpu=args.batch_size // world_size,
        num_workers=args.num_workers,
        seed=args.seed,
        log_interval=min(args.log_interval, args.iters),
        launcher="pytorch" if world_size > 1 else "none",
    )
    if distributed.is_main_process():
        cfg.dump(str(output_dir / "seg_config.py"))
    logger.info(
        "ADE20K %s protocol: %d iterations, batch %d (%d per process), crop %s, backbone width %d / %d blocks / "
        "patch %d",
        args.protocol,
        args.iters,
        args.batch_size,
        args.batch_size // world_size,
        cfg.crop_size,
        embed_dim,
        n_blocks,
        patch_size,
    )

    start = time.perf_counter()
    run = train_and_evaluate(cfg)
    results = dict(
        protocol=args.protocol,
        metrics=run.metrics,
        iters=args.iters,
        batch_size=args.batch_size,
        crop_size=cfg.crop_size[0],
        backbone=dict(backbone, embed_dim=embed_dim, n_blocks=n_blocks, patch_size=patch_size),
        data_root=cfg.test_dataloader.dataset.data_root,
        seconds=round(time.perf_counter() - start, 1),
    )
    if distributed.is_main_process():
        save_head(run.segmentor, output_dir / "decode_head.pth")
        if args.num_vis_images > 0:
            samples = predict_samples(run.segmentor, cfg.test_dataloader.dataset, args.num_vis_images)
            save_prediction_figure(samples, output_dir / "predictions.png")
        (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        logger.info("wrote %s: %s", output_dir / "results.json", run.metrics)
    return results


def cli(argv: Sequence[str] | None = None) -> int:
    run_or_submit(main, get_args_parser().parse_args(argv), name="dinov2:eval_segmentation", check=check, echo=print)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
