"""The SimDINO paper's robustness and stability claims, reproduced in miniature on Digits with several seeds.

    nice -n 5 python benchmarks/paper_claims.py --output-dir runs/paper_claims          # train, evaluate, report
    python benchmarks/paper_claims.py --output-dir runs/paper_claims --report-only      # report what is finished

Arms: the `make demo` recipes (configs/tiny/dinov2_digits.yaml and configs/tiny/simdinov2_digits_demo.yaml,
both with patch 8, `tools/demo.py`), 200 steps, the same seeds (initialisation and data order) for both arms.
Studies, in the order they are run (the most important results land first):

1. baseline: the demo recipes as they are (also the training-stability study: loss and k-NN curves);
2. the paper's Table 5 perturbations (teacher momentum 0.9, no last-layer normalisation, fixed teacher
   temperature 0.07) and Table 8's no self-distillation (teacher momentum 0), applied to both arms;
3. the paper's Table 6 batch sizes (16, 32, 128 besides the baseline 64) at a fixed budget of images
   (same number of epochs, as Table 6's 100 epochs per batch size), lr scaled by the recipes' sqrt rule;
4. a control for 3: batch 128 at the baseline's 200 steps (twice its images), which tells an effect of the
   batch apart from an effect of the shorter run that batch 128 gets at a fixed budget of images;
5. the baseline again over 400 steps with 5 seeds (`--long-iters`, `--long-seeds`, its own report in
   DIR/long_400): whether the curves of claim 3 flatten, plateau or drop when the run is twice as long.

1-4 are `tools/compare.py --seeds 3 --sweep --batch-sizes 16 32 64 128 --batch-sizes-same-steps 128` on the
demo recipes (`dinov2.compare.pipeline.run_study`), 5 is `--seeds 5 --iters 400`. Each run is cached in its
directory (`study_result.json`): rerunning continues where an interrupted study stopped; `--report-only`
writes the reports from the finished runs and lists the others as not run. `--jobs` runs train at the same
time, one CPU thread each. Writes `study.md` (one table per claim: k-NN mean +- std per arm and condition,
paired difference with its 95 % t-interval, run statuses including collapse), `study.json` and one PNG per
claim (`study_conditions.png`: Table 5/8; `study_batch_sizes.png`: Table 6; `study_stability.png`: loss and
k-NN curves) into the output directory, and the same for 5 into DIR/long_400. SimDINOv2 runs that a
perturbation does not change are its baseline runs (see `docs/compare.md`), so the studies train 58 runs
(3 of them refused at once): about 5 CPU hours at 4-8 CPU minutes per run.
"""

import argparse
import functools
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from dinov2.compare.launch import Arm, common_overrides  # noqa: E402
from dinov2.compare.pipeline import EvalOptions, run_study  # noqa: E402
from dinov2.compare.report import machine_description  # noqa: E402
from dinov2.compare.study import BASELINE, batch_size_conditions, perturbation_conditions  # noqa: E402
from simdinov2.train.build import build_meta_arch  # noqa: E402
from tools.demo import DINOV2_RECIPE, SHARED_OVERRIDES, SIMDINOV2_RECIPE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=str(REPO / "runs" / "paper_claims"), help="runs and report go here")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm and condition (seeds 0 .. N-1)")
    parser.add_argument("--iters", type=int, default=200, help="steps of a baseline run (batch 64)")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="*", default=[16, 32, 64, 128], help="batch sizes (64 is the baseline)"
    )
    parser.add_argument(
        "--batch-sizes-same-steps",
        type=int,
        nargs="*",
        default=[128],
        help="control: batch sizes trained for the baseline's number of steps (none: skip the control)",
    )
    parser.add_argument(
        "--long-iters",
        type=int,
        default=400,
        help="steps of the longer baseline runs of the stability study, in DIR/long_<N> (0: skip them)",
    )
    parser.add_argument(
        "--long-seeds",
        type=int,
        default=5,
        help="seeds of the longer baseline runs (seeds 0 .. N-1; more than --seeds: DINOv2 varies most there)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at the same time (one thread each)")
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the finished runs")
    return parser


def demo_arms(iters: int) -> list[Arm]:
    """The two `make demo` recipes with their shared overrides, `iters` steps long (schedules in epochs)."""
    config_files = [Path(DINOV2_RECIPE), Path(SIMDINOV2_RECIPE)]
    overrides = tuple(common_overrides(config_files, SHARED_OVERRIDES, train_dataset=None, iters=iters, seed=None))
    return [
        Arm(name="dinov2", label="DINOv2", config_file=config_files[0], overrides=overrides),
        Arm(name="simdinov2", label="SimDINOv2", config_file=config_files[1], overrides=overrides),
    ]


def main(args: argparse.Namespace) -> list[Path]:
    torch.set_num_threads(1)
    start = time.time()
    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    echo = functools.partial(print, flush=True)
    echo(f"paper claims on {machine_description()}: {args.seeds} seeds, {args.iters} steps, jobs {args.jobs}")
    arms = demo_arms(args.iters)
    conditions = [
        BASELINE,
        *perturbation_conditions(),
        *batch_size_conditions(arms[0].config, args.batch_sizes),
        *batch_size_conditions(arms[0].config, args.batch_sizes_same_steps, same_steps=True),
    ]
    title = "The SimDINO paper's claims in miniature (Digits, demo recipes)"
    studies = [(arms, conditions, args.seeds, output_dir, title)]
    if args.long_iters:
        studies.append(
            (demo_arms(args.long_iters), [BASELINE], args.long_seeds, output_dir / f"long_{args.long_iters}",
             f"The demo recipes over {args.long_iters} steps (training stability, Digits)")
        )  # fmt: skip
    reports = [
        run_study(
            study_arms,
            study_dir,
            EvalOptions(train_dataset=None, val_dataset=None, device=torch.device("cpu")),
            seeds=list(range(n_seeds)),
            conditions=study_conditions,
            jobs=args.jobs,
            command=" ".join(["python", "benchmarks/paper_claims.py", *sys.argv[1:]]),
            echo=echo,
            meta_arch_factory=build_meta_arch,
            train=not args.report_only,
            title=title,
        )
        for study_arms, study_conditions, n_seeds, study_dir, title in studies
    ]
    echo(f"reports: {', '.join(map(str, reports))} ({time.time() - start:.0f} s)")
    return reports


if __name__ == "__main__":
    main(get_args_parser().parse_args())
