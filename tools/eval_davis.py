"""DAVIS-2017 semi-supervised video object segmentation by label propagation (DINO protocol), scored with J&F.

    python tools/eval_davis.py --config-file CONFIG.yaml --pretrained-weights teacher_checkpoint.pth \
        --davis-root DAVIS --output-dir out/davis

Hub-format weights: `--arch vit_small --patch-size 16 --weights FILE` instead of the config flags.
Writes the propagated masks as `<output-dir>/<seq>/<frame>.png` (palette PNGs, the DAVIS results layout),
then `<output-dir>/global_results-<split>.csv` and `<output-dir>/per-sequence_results-<split>.csv`.

Scoring an existing results folder only (no backbone needed):

    python tools/eval_davis.py --davis-root DAVIS --metrics-only RESULTS_DIR [--output-dir CSV_DIR]

(the CSVs go to --output-dir when given, else into RESULTS_DIR, as the official evaluation does; nothing is
ever written inside --davis-root: scoring the ground truth itself, `--metrics-only DAVIS/Annotations/480p`,
needs --output-dir).
"""

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from dinov2.eval.setup import add_backbone_args, backbone_from_args, check_backbone_args
from dinov2.logging import setup_logging
from dinov2.run.submit import add_submit_args, run_or_submit
from dinov2.utils.device import default_device
from eval.davis import PropagationConfig, evaluate_results, run_label_propagation, write_results_csvs
from eval.davis.evaluation import GLOBAL_COLUMNS
from eval.davis.layout import read_sequence_names

logger = logging.getLogger("tools.eval_davis")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DAVIS-2017 label propagation + J&F", add_help=add_help)
    add_backbone_args(parser)
    parser.add_argument("--davis-root", required=True, help="folder holding JPEGImages/, Annotations/, ImageSets/")
    parser.add_argument(
        "--output-dir",
        default=None,
        help="results folder (PNGs and CSVs); required unless --metrics-only, which writes its CSVs here when given, "
        "else into RESULTS_DIR (never inside --davis-root)",
    )
    parser.add_argument(
        "--metrics-only", default=None, metavar="RESULTS_DIR", help="only score this existing results folder"
    )
    parser.add_argument(
        "--propagate-only",
        action="store_true",
        help="write the propagated masks and stop (no J&F): for videos annotated on the first frame only",
    )
    parser.add_argument("--split", default="val", help="ImageSets/<year>/<split>.txt lists the sequences")
    parser.add_argument("--year", default="2017", help="ImageSets/<year>/")
    parser.add_argument("--resolution", default="480p", help="JPEGImages/<resolution>/ and Annotations/<resolution>/")
    parser.add_argument("--sequences", nargs="+", default=None, help="only these sequences (default: the whole split)")
    parser.add_argument("--n-last-frames", type=int, default=7, help="predicted frames kept as context")
    parser.add_argument("--size-mask-neighborhood", type=int, default=12, help="window radius in patches; 0: none")
    parser.add_argument("--topk", type=int, default=5, help="affinities kept per target patch")
    parser.add_argument("--temperature", type=float, default=0.1, help="affinity = exp(cosine / temperature)")
    parser.add_argument("--short-side", type=int, default=480, help="frames are resized to this short side")
    parser.add_argument("--batch-size", type=int, default=8, help="frames per backbone forward")
    add_submit_args(parser, max_tasks=1)
    return parser


def _folders(args: argparse.Namespace) -> tuple[Path, Path]:
    """(results folder, CSV folder) of the flags."""
    results_dir = Path(args.metrics_only if args.metrics_only is not None else args.output_dir)
    csv_dir = Path(args.output_dir) if args.output_dir is not None else results_dir
    return results_dir, csv_dir


def check(args: argparse.Namespace) -> None:
    """The inputs, checked before anything runs or is submitted: the DAVIS layout (sequence list, the sequences
    asked for), the results folder of --metrics-only, the backbone flags otherwise, and that nothing would be
    written inside --davis-root. Raises FileNotFoundError / ValueError naming the flag."""
    davis_root = Path(args.davis_root)
    if not davis_root.is_dir():
        raise FileNotFoundError(
            f"--davis-root {davis_root} is not a folder; it must hold JPEGImages/, Annotations/ and ImageSets/ "
            "(tools/make_davis_layout.py writes this layout from your own video)"
        )
    names = read_sequence_names(davis_root, split=args.split, year=args.year)
    unknown = sorted(set(args.sequences or ()) - set(names))
    if unknown:
        raise ValueError(f"--sequences {unknown} are not in ImageSets/{args.year}/{args.split}.txt: {names}")
    if args.metrics_only is None:
        if args.output_dir is None:
            raise ValueError("--output-dir is required unless --metrics-only RESULTS_DIR is given")
        check_backbone_args(args)
    elif args.propagate_only:
        raise ValueError("--propagate-only and --metrics-only exclude each other")
    elif not Path(args.metrics_only).is_dir():
        raise FileNotFoundError(f"--metrics-only {args.metrics_only} is not a folder")
    for sequence in args.sequences or names:
        annotations = davis_root / "Annotations" / args.resolution / sequence
        n_annotated = len(list(annotations.glob("*.png")))
        if n_annotated == 0:
            raise FileNotFoundError(f"no .png annotations in {annotations} (sequence {sequence!r})")
        if n_annotated < 3 and not args.propagate_only:
            raise ValueError(
                f"sequence {sequence!r} has {n_annotated} annotated frame(s): J&F scores frames 1..T-2 against "
                "their masks; pass --propagate-only to only write the propagated masks"
            )
    _, csv_dir = _folders(args)
    if csv_dir.resolve().is_relative_to(davis_root.resolve()):
        raise ValueError(
            f"{csv_dir} lies inside --davis-root {davis_root}: the evaluation does not write into the dataset; "
            "pass --output-dir OUT (the CSVs, and the propagated masks when not --metrics-only, go there)"
        )


def main(args: argparse.Namespace) -> dict[str, float]:
    """Propagate (unless --metrics-only), score, write the two CSVs; returns the global results ({} with
    --propagate-only).

    `args` must have passed `check` (`cli` runs it first).
    """
    results_dir, csv_dir = _folders(args)
    csv_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(csv_dir)
    if args.metrics_only is None:
        config = PropagationConfig(
            n_last_frames=args.n_last_frames,
            size_mask_neighborhood=args.size_mask_neighborhood,
            topk=args.topk,
            temperature=args.temperature,
            short_side=args.short_side,
            batch_size=args.batch_size,
        )
        device = default_device()
        model = backbone_from_args(args).to(device)
        start = time.perf_counter()
        run_label_propagation(
            model,
            args.davis_root,
            results_dir,
            config=config,
            device=device,
            split=args.split,
            year=args.year,
            resolution=args.resolution,
            sequences=args.sequences,
        )
        logger.info("label propagation done in %.1f s", time.perf_counter() - start)
        if args.propagate_only:
            logger.info("--propagate-only: masks in %s, no scoring", results_dir)
            return {}
    elif not results_dir.is_dir():
        raise FileNotFoundError(f"--metrics-only {results_dir} is not a folder")
    scores = evaluate_results(
        args.davis_root,
        results_dir,
        split=args.split,
        year=args.year,
        resolution=args.resolution,
        sequences=args.sequences,
    )
    write_results_csvs(scores, csv_dir, split=args.split)
    global_results = scores.global_results()
    logger.info(
        "%d objects: %s",
        len(scores.objects),
        "  ".join(f"{name} {global_results[name]:.3f}" for name in GLOBAL_COLUMNS),
    )
    return global_results


def cli(argv: Sequence[str] | None = None) -> int:
    run_or_submit(main, get_args_parser().parse_args(argv), name="dinov2:eval_davis", check=check, echo=print)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
