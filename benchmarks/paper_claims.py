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
   (same number of epochs, as Table 6's 100 epochs per batch size), lr scaled by the recipes' sqrt rule.

Each run is cached in its directory (`study_result.json`): rerunning continues where an interrupted study
stopped. `--jobs` runs train at the same time, one CPU thread each. Writes `paper_claims.md`,
`paper_claims.json` and one PNG per claim into the output directory. Takes about 3 CPU hours in all
(4-5 CPU minutes per run, 39 runs).
"""

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from dinov2.compare.features import DEFAULT_CODING_RATE_EPS, eval_transform_sizes, make_eval_data  # noqa: E402
from dinov2.compare.health import DEFAULT_COLLAPSE_RANK  # noqa: E402
from dinov2.compare.launch import Arm, common_overrides  # noqa: E402
from dinov2.compare.pipeline import default_val_dataset  # noqa: E402
from dinov2.compare.report import machine_description  # noqa: E402
from dinov2.compare.study import (  # noqa: E402
    BASELINE,
    StudyRunner,
    batch_size_conditions,
    perturbation_conditions,
    plan_runs,
)
from dinov2.compare.study_report import write_study_outputs  # noqa: E402
from simdinov2.train.build import build_meta_arch  # noqa: E402
from tools.demo import DINOV2_RECIPE, SHARED_OVERRIDES, SIMDINOV2_RECIPE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=str(REPO / "runs" / "paper_claims"), help="runs and report go here")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm and condition (seeds 0 .. N-1)")
    parser.add_argument("--iters", type=int, default=200, help="steps of a baseline run (batch 64)")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="*", default=[16, 32, 128], help="batch sizes besides the baseline's 64"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at the same time (one thread each)")
    parser.add_argument("--report-only", action="store_true", help="train nothing: report the finished runs")
    return parser


def main(args: argparse.Namespace) -> Path:
    torch.set_num_threads(1)
    start = time.time()
    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    echo = functools.partial(print, flush=True)
    echo(f"paper claims on {machine_description()}: {args.seeds} seeds, {args.iters} steps, jobs {args.jobs}")
    config_files = [Path(DINOV2_RECIPE), Path(SIMDINOV2_RECIPE)]
    overrides = common_overrides(config_files, SHARED_OVERRIDES, train_dataset=None, iters=args.iters, seed=None)
    arms = [
        Arm(name="dinov2", label="DINOv2", config_file=config_files[0], overrides=tuple(overrides)),
        Arm(name="simdinov2", label="SimDINOv2", config_file=config_files[1], overrides=tuple(overrides)),
    ]
    reference = arms[0].config
    conditions = [BASELINE, *perturbation_conditions(), *batch_size_conditions(reference, args.batch_sizes)]
    seeds = list(range(args.seeds))
    specs = plan_runs(arms, conditions, seeds)
    train_dataset = str(reference.train.dataset_path)
    resize, crop = eval_transform_sizes(reference)
    data = make_eval_data(train_dataset, default_val_dataset(train_dataset), resize_size=resize, crop_size=crop)
    runner = StudyRunner(
        output_dir,
        data,
        device=torch.device("cpu"),
        meta_arch_factory=build_meta_arch,
        coding_rate_eps=DEFAULT_CODING_RATE_EPS,
        collapse_rank=DEFAULT_COLLAPSE_RANK,
        echo=echo,
    )
    outcomes = runner.run_all(specs, jobs=args.jobs, train=not args.report_only)
    command = " ".join(["python", "benchmarks/paper_claims.py", *sys.argv[1:]])
    report = write_study_outputs(
        outcomes,
        arms,
        output_dir,
        command=command,
        eval_description=data.description,
        collapse_rank=DEFAULT_COLLAPSE_RANK,
        title="The SimDINO paper's claims in miniature (Digits, demo recipes)",
    )
    finished = sum(outcome.result is not None for outcome in outcomes)
    echo(f"{finished} / {len(outcomes)} runs finished; report: {report}")
    echo(json.dumps({"seconds": round(time.time() - start)}))
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
