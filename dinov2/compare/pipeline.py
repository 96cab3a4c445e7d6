"""The whole A/B: train (or take) two runs, evaluate them, write plots, `report.md` and `summary.json`.

Layout of the output directory:

    DIR/a, DIR/b                       the two training runs (when trained here)
    DIR/sweep/<arm>_<k>                the robustness-sweep runs (with --sweep)

or, for a multi-seed study (`run_study`: --seeds N > 1 or --batch-sizes),

    DIR/<condition>/<arm>/seed_<s>     one run per condition (baseline, perturbation_<k>, batch_<B>), arm, seed
    DIR/study.md, DIR/study.json       the report (means, spreads, paired differences) and its numbers
    DIR/study_*.png                    the band plots
    DIR/report.md, DIR/summary.json    the report and its numbers
    DIR/*.png                          the plots

and in every run directory `eval/compare/step_<n>.json`, the evaluation of its teacher after n steps.
"""

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Callable, Sequence

import torch

from dinov2.compare.collect import ArmResult, collect_run
from dinov2.compare.features import DEFAULT_CODING_RATE_EPS, MetaArchFactory, eval_transform_sizes, make_eval_data
from dinov2.compare.health import DEFAULT_COLLAPSE_RANK
from dinov2.compare.launch import Arm, LaunchResult, is_no_op, run_arms_locally, submit_arms, sweep_arms
from dinov2.compare.plots import write_plots
from dinov2.compare.report import SweepEntry, write_report
from dinov2.compare.runs import config_differences
from dinov2.compare.study import Condition, StudyRunner, plan_runs
from dinov2.compare.study_report import write_study_outputs
from dinov2.utils.config import load_config

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How the teachers are evaluated (shared by every run of one comparison)."""

    train_dataset: str | None  # k-NN reference set; None: the runs' train.dataset_path
    val_dataset: str | None  # k-NN queries; None: the train dataset with split=TRAIN -> split=VAL
    device: torch.device
    coding_rate_eps: float = DEFAULT_CODING_RATE_EPS
    collapse_rank: float = DEFAULT_COLLAPSE_RANK


def default_val_dataset(train_dataset: str) -> str:
    """`...:split=TRAIN...` -> `...:split=VAL...`; ValueError naming `--val-dataset` for other strings."""
    if "split=TRAIN" not in train_dataset:
        raise ValueError(
            f"cannot derive the k-NN query set from {train_dataset!r} (no split=TRAIN in it); pass --val-dataset"
        )
    return train_dataset.replace("split=TRAIN", "split=VAL")


def collect(
    runs: Sequence[tuple[Path, str, str | None, str | None]],
    output_dir: Path,
    options: EvalOptions,
    *,
    meta_arch_factory: MetaArchFactory | None,
) -> list[ArmResult]:
    """Evaluate and assess `(run_dir, label, failure, source)` runs with one evaluation set-up."""
    first_cfg = load_config(runs[0][0] / "config.yaml")
    train_dataset = options.train_dataset or first_cfg.train.dataset_path
    val_dataset = options.val_dataset or default_val_dataset(train_dataset)
    resize, crop = eval_transform_sizes(first_cfg)  # arm A's resolution, for every run
    data = make_eval_data(train_dataset, val_dataset, resize_size=resize, crop_size=crop)
    results = []
    for run_dir, label, failure, source in runs:
        results.append(
            collect_run(
                run_dir,
                label,
                data,
                device=options.device,
                meta_arch_factory=meta_arch_factory,
                coding_rate_eps=options.coding_rate_eps,
                collapse_rank=options.collapse_rank,
                failure=failure,
                source=source,
            )
        )
    return results


def arm_source(arm: Arm) -> str:
    return " ".join([str(arm.config_file), *arm.overrides])


def train_arms(
    arms: Sequence[Arm],
    output_dir: Path,
    *,
    echo: Callable[[str], None],
    submit_args: argparse.Namespace | None,
    train_entry: Callable[[argparse.Namespace], object] | None,
    parallel: bool = False,
) -> list[LaunchResult]:
    """Train `arms` here (one after the other, or all at once with `parallel`), or submit them all to
    SLURM and wait."""
    if submit_args is not None:
        assert train_entry is not None, "submitting needs the training entry point"
        return submit_arms(arms, output_dir, submit_args, train_entry=train_entry)
    return run_arms_locally(arms, output_dir, echo=echo, parallel=parallel)


def run_comparison(
    arms: Sequence[Arm],
    output_dir: Path,
    options: EvalOptions,
    *,
    command: str,
    echo: Callable[[str], None],
    meta_arch_factory: MetaArchFactory | None,
    sweep: bool = False,
    submit_args: argparse.Namespace | None = None,
    train_entry: Callable[[argparse.Namespace], object] | None = None,
    parallel: bool = False,
    extra_images: Callable[[list[ArmResult]], list[tuple[str, Path]]] | None = None,
) -> Path:
    """Train the two `arms` (and, with `sweep`, each under every perturbation), evaluate, write the report.

    Returns the path of `report.md`. A baseline arm that fails before writing its config is an error
    (nothing to compare); a run that fails later (a NaN loss, a refused config) is reported as diverged or
    failed, like the sweep's runs.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    launches = train_arms(
        arms, output_dir, echo=echo, submit_args=submit_args, train_entry=train_entry, parallel=parallel
    )
    failed = [
        launch for launch in launches if launch.failure is not None and not (launch.run_dir / "config.yaml").is_file()
    ]
    if failed:
        raise RuntimeError(
            "training failed before writing its config: "
            + "; ".join(f"{launch.arm.label}: {launch.failure}" for launch in failed)
        )
    sweep_entries: list[SweepEntry] = []
    sweep_launches: list[tuple[Arm, str, Arm, LaunchResult]] = []
    if sweep:
        perturbed = sweep_arms(arms)
        results_iter = train_arms(
            [arm for _, _, arm in perturbed],
            output_dir,
            echo=echo,
            submit_args=submit_args,
            train_entry=train_entry,
            parallel=parallel,
        )
        sweep_launches = [
            (base, name, arm, launch) for (base, name, arm), launch in zip(perturbed, results_iter, strict=True)
        ]
    echo("evaluating the teachers (k-NN, effective rank, coding rate) ...")
    results = collect(
        [(launch.run_dir, launch.arm.label, launch.failure, arm_source(launch.arm)) for launch in launches],
        output_dir,
        options,
        meta_arch_factory=meta_arch_factory,
    )
    for base, name, arm, launch in sweep_launches:
        has_run = (launch.run_dir / "config.yaml").is_file()
        result = (
            collect(
                [(launch.run_dir, arm.label, launch.failure, arm_source(arm))],
                output_dir,
                options,
                meta_arch_factory=meta_arch_factory,
            )[0]
            if has_run
            else None
        )
        sweep_entries.append(
            SweepEntry(
                base_label=base.label,
                perturbation=name,
                result=result,
                no_op=is_no_op(base, arm),
                failure=launch.failure,
            )
        )
    return write_outputs(
        results,
        output_dir,
        command=command,
        options=options,
        sweep=sweep_entries,
        extra_images=extra_images(results) if extra_images is not None else [],
    )


def write_outputs(
    results: Sequence[ArmResult],
    output_dir: Path,
    *,
    command: str,
    options: EvalOptions,
    sweep: Sequence[SweepEntry] = (),
    extra_images: Sequence[tuple[str, Path]] = (),
) -> Path:
    """Plots, `report.md` and `summary.json` of evaluated runs."""
    write_plots(results, output_dir)
    differences = config_differences(results[0].run.config, results[1].run.config)
    train_dataset = options.train_dataset or results[0].run.config.train.dataset_path
    val_dataset = options.val_dataset or default_val_dataset(train_dataset)
    resize, crop = eval_transform_sizes(results[0].run.config)
    return write_report(
        output_dir,
        results,
        differences,
        command=command,
        eval_description=f"teacher CLS features of {train_dataset} -> {val_dataset} (resize {resize}, crop {crop})",
        collapse_rank=options.collapse_rank,
        sweep=sweep,
        extra_images=extra_images,
    )


def run_study(
    arms: Sequence[Arm],
    output_dir: Path,
    options: EvalOptions,
    *,
    seeds: Sequence[int],
    conditions: Sequence[Condition],
    jobs: int,
    command: str,
    echo: Callable[[str], None],
    meta_arch_factory: MetaArchFactory | None,
    train: bool = True,
    title: str = "Multi-seed A/B study",
) -> Path:
    """Train both `arms` under every condition with every seed (here, `jobs` runs at a time with one thread
    each; finished runs are reused), evaluate them and write `study.md`, `study.json` and the band plots.

    With `train=False` nothing is trained: the report covers the finished runs and lists the others as not
    run. Returns the path of `study.md`.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    reference = arms[0].config
    train_dataset = options.train_dataset or reference.train.dataset_path
    val_dataset = options.val_dataset or default_val_dataset(train_dataset)
    resize, crop = eval_transform_sizes(reference)
    data = make_eval_data(train_dataset, val_dataset, resize_size=resize, crop_size=crop)
    runner = StudyRunner(
        output_dir,
        data,
        device=options.device,
        meta_arch_factory=meta_arch_factory,
        coding_rate_eps=options.coding_rate_eps,
        collapse_rank=options.collapse_rank,
        echo=echo,
    )
    outcomes = runner.run_all(plan_runs(arms, conditions, seeds), jobs=jobs, train=train)
    echo(f"{sum(o.result is not None for o in outcomes)} / {len(outcomes)} runs finished")
    return write_study_outputs(
        outcomes,
        arms,
        output_dir,
        command=command,
        eval_description=f"{data.description} (resize {resize}, crop {crop})",
        collapse_rank=options.collapse_rank,
        title=title,
    )
