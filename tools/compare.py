r"""A/B of two training recipes in one command (DINOv2 vs SimDINOv2): train both, evaluate, report.

    python tools/compare.py --a configs/dinov2_vitb16.yaml --b configs/simdinov2_vitb16.yaml \
        --output-dir runs/ab --train-dataset ImageNet:split=TRAIN:root=R:extra=E [--iters N] [key=value ...]
    python tools/compare.py --a configs/tiny/dinov2_digits.yaml --b configs/tiny/simdinov2_digits.yaml \
        --output-dir runs/ab_digits --iters 100
    python tools/compare.py --runs runs/ab/a runs/ab/b --output-dir runs/ab_report      # finished runs
    python tools/compare.py --a ... --b ... --output-dir runs/sweep --sweep             # Table 5 in miniature
    python tools/compare.py --a ... --b ... --output-dir runs/ab3 --seeds 3 --parallel  # mean, std, paired CI
    python tools/compare.py --a ... --b ... --output-dir runs/study --seeds 3 --sweep --batch-sizes 16 32 64 128

Both arms get the same overrides (`key=value`, `--train-dataset`, `--iters`, the export period, the seed),
so everything but the recipes' own differences stays equal; the report lists every config key in which the
two runs differ. Training runs one arm after the other through `tools/train.py` (or as SLURM jobs with
`--submit`); rerunning with the same `--output-dir` resumes unfinished arms and reuses cached evaluations.
Writes `DIR/report.md`, `DIR/summary.json` and the PNG plots.

With `--seeds N` (N > 1), `--batch-sizes` or `--batch-sizes-same-steps`, every arm is trained with the
seeds S .. S+N-1 (S = `--seed`, else arm A's `train.seed`; the same seeds for both arms: same initialisation
seed and data order), under the baseline and every requested condition (`--sweep` perturbations, batch sizes
at the baseline's number of images, or at its number of steps as a control); the report `DIR/study.md` gives
per condition each arm's mean and sample standard deviation over seeds and the difference B - A
paired by seed with its 95 % Student t-interval; the plots show mean +- std bands.
"""

import argparse
import functools
import logging
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dinov2.compare.features import DEFAULT_CODING_RATE_EPS  # noqa: E402
from dinov2.compare.health import DEFAULT_COLLAPSE_RANK  # noqa: E402
from dinov2.compare.launch import Arm, common_overrides  # noqa: E402
from dinov2.compare.pipeline import EvalOptions, collect, run_comparison, run_study, write_outputs  # noqa: E402
from dinov2.compare.study import BASELINE, batch_size_conditions, perturbation_conditions  # noqa: E402
from dinov2.logging import setup_logging  # noqa: E402
from dinov2.run.submit import add_submit_args  # noqa: E402
from dinov2.train.train import main as train_main  # noqa: E402
from dinov2.utils.device import default_device  # noqa: E402
from simdinov2.train.build import build_meta_arch  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", metavar="CONFIG", help="recipe of arm A (e.g. configs/dinov2_vitb16.yaml)")
    parser.add_argument("--b", metavar="CONFIG", help="recipe of arm B (e.g. configs/simdinov2_vitb16.yaml)")
    parser.add_argument("--runs", nargs=2, metavar=("DIR_A", "DIR_B"), help="collect two finished runs instead")
    parser.add_argument("--output-dir", required=True, help="report, plots, evaluations (and the runs) go here")
    parser.add_argument(
        "--train-dataset",
        default=None,
        help="training data of both arms (sets train.dataset_path) and the k-NN reference set "
        "(default: the recipes' train.dataset_path)",
    )
    parser.add_argument(
        "--val-dataset", default=None, help="k-NN query set (default: the train dataset with split=VAL)"
    )
    parser.add_argument(
        "--iters", type=int, default=None, help="iterations per arm (a multiple of train.OFFICIAL_EPOCH_LENGTH)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="train.seed of both arms, the first seed with --seeds (default: arm A's)"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train each arm (and each --sweep / --batch-sizes condition) with N seeds, the same for both arms; "
        "report mean, std and the paired difference B - A with a 95%% t-interval (writes study.md)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also run each arm with teacher momentum 0.9 / dino.head_normalize=false / teacher temperature "
        "0.07 / teacher momentum 0 (no self-distillation) and report divergence and collapse",
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=None,
        metavar="B",
        help="also train each arm at these global batch sizes, with the same number of images (epochs) as the "
        "baseline and the lr of the recipes' optim.scaling_rule (writes study.md)",
    )
    parser.add_argument(
        "--batch-sizes-same-steps",
        type=int,
        nargs="+",
        default=None,
        metavar="B",
        help="control for --batch-sizes: also train each arm at these global batch sizes with the same number of "
        "steps as the baseline (B / baseline batch times its images), lr by the same rule (writes study.md)",
    )
    parser.add_argument(
        "--collapse-rank",
        type=float,
        default=DEFAULT_COLLAPSE_RANK,
        help="a run collapsed when the effective rank of its final teacher's features is at most this "
        "(1 = all features parallel)",
    )
    parser.add_argument(
        "--coding-rate-eps",
        type=float,
        default=DEFAULT_CODING_RATE_EPS,
        help="eps of the reported coding rate (the paper's eps squared, as dino.mcr.eps)",
    )
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="CPU only: train the arms (and sweep runs) at the same time, one thread each, instead of one "
        "after the other; with --seeds / --batch-sizes: two runs at a time",
    )
    parser.add_argument("--label-a", default=None, help="name of arm A in the report (default: its file name)")
    parser.add_argument("--label-b", default=None, help="name of arm B in the report (default: its file name)")
    add_submit_args(parser)
    parser.add_argument("opts", nargs="*", default=[], help="config overrides key=value applied to both arms")
    return parser


def _label(given: str | None, path: str, fallback: str) -> str:
    if given:
        return given
    stem = Path(path).stem
    return stem if stem not in ("config", "") else f"{fallback}: {Path(path).resolve().parent.name}"


def main(args: argparse.Namespace) -> Path:
    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir / "compare_logs")
    options = EvalOptions(
        train_dataset=args.train_dataset,
        val_dataset=args.val_dataset,
        device=default_device(),
        coding_rate_eps=args.coding_rate_eps,
        collapse_rank=args.collapse_rank,
    )
    command = shlex.join(["python", "tools/compare.py", *sys.argv[1:]])
    if args.runs:
        if (
            args.a or args.b or args.iters or args.sweep or args.opts or args.submit or args.parallel
            or args.seeds != 1 or args.batch_sizes or args.batch_sizes_same_steps
        ):  # fmt: skip
            raise SystemExit(
                "--runs collects finished runs: drop --a/--b/--iters/--sweep/--seeds/--batch-sizes[-same-steps]/"
                "--submit/--parallel/key=value"
            )
        labels = [_label(args.label_a, args.runs[0], "A"), _label(args.label_b, args.runs[1], "B")]
        if labels[0] == labels[1]:
            labels = [f"A: {labels[0]}", f"B: {labels[1]}"]
        results = collect(
            [(Path(run).resolve(), label, None, None) for run, label in zip(args.runs, labels, strict=True)],
            output_dir,
            options,
            meta_arch_factory=build_meta_arch,
        )
        report = write_outputs(results, output_dir, command=command, options=options)
    else:
        if args.parallel and args.submit:
            raise SystemExit("--parallel trains here; with --submit the jobs run in parallel anyway: drop one")
        if not (args.a and args.b):
            raise SystemExit("pass --a CONFIG --b CONFIG (to train both) or --runs DIR_A DIR_B (to collect)")
        config_files = [Path(args.a).resolve(), Path(args.b).resolve()]
        overrides = common_overrides(
            config_files, args.opts, train_dataset=args.train_dataset, iters=args.iters, seed=args.seed
        )
        labels = [_label(args.label_a, args.a, "A"), _label(args.label_b, args.b, "B")]
        if labels[0] == labels[1]:
            labels = [f"A: {labels[0]}", f"B: {labels[1]}"]
        arms = [
            Arm(name=name, label=label, config_file=path, overrides=tuple(overrides))
            for name, label, path in zip(("a", "b"), labels, config_files, strict=True)
        ]
        if args.seeds < 1:
            raise SystemExit(f"--seeds {args.seeds}: pass at least 1")
        if args.seeds > 1 or args.batch_sizes or args.batch_sizes_same_steps:
            if args.submit:
                raise SystemExit(
                    "--seeds / --batch-sizes[-same-steps] train here (--parallel: two runs at a time): drop --submit"
                )
            first_seed = int(arms[0].config.train.seed)
            conditions = [BASELINE]
            if args.sweep:
                conditions += perturbation_conditions()
            if args.batch_sizes:
                conditions += batch_size_conditions(arms[0].config, args.batch_sizes)
            if args.batch_sizes_same_steps:
                conditions += batch_size_conditions(arms[0].config, args.batch_sizes_same_steps, same_steps=True)
            return run_study(
                arms,
                output_dir,
                options,
                seeds=list(range(first_seed, first_seed + args.seeds)),
                conditions=conditions,
                jobs=2 if args.parallel else 1,
                command=command,
                echo=functools.partial(print, flush=True),
                meta_arch_factory=build_meta_arch,
            )
        report = run_comparison(
            arms,
            output_dir,
            options,
            command=command,
            echo=functools.partial(print, flush=True),
            meta_arch_factory=build_meta_arch,
            sweep=args.sweep,
            submit_args=args if args.submit else None,
            train_entry=functools.partial(train_main, meta_arch_factory=build_meta_arch),
            parallel=args.parallel,
        )
    return report


if __name__ == "__main__":
    report_path = main(get_args_parser().parse_args())
    print(f"report: {report_path}")
    for png in sorted(report_path.parent.glob("*.png")):
        print(f"plot:   {png}")
    logging.shutdown()
