"""Train the arms of an A/B comparison: as subprocesses of `tools/train.py`, or as SLURM jobs.

Both arms get the same overrides (the user's `key=value` list, the training dataset, the iteration count,
the export period and `train.seed`), so that they share the seed, the data order, the backbone and the
batch unless their recipes differ there; `tools/compare.py` reports every remaining config difference.
"""

import argparse
import concurrent.futures
import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from dinov2.utils.config import ConfigError, load_config

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = REPO_ROOT / "tools" / "train.py"
EXPORTS_PER_RUN = 4  # teacher exports (k-NN points) per run when the recipe's period does not fit

# The robustness sweep: name -> overrides applied on top of an arm. The first three are the SimDINO paper's
# Table 5 (DINO's teacher momentum, last-layer normalisation and teacher temperature, each of which made DINO
# diverge); the last is its Table 8 (no self-distillation: the teacher is the student of the current step,
# under which DINO collapses).
SWEEP_PERTURBATIONS: dict[str, tuple[str, ...]] = {
    "teacher momentum 0.9": ("teacher.momentum_teacher=0.9",),
    "no last-layer normalization": ("dino.head_normalize=false",),
    "fixed teacher temperature 0.07": ("teacher.warmup_teacher_temp=0.07", "teacher.teacher_temp=0.07"),
    "no self-distillation (teacher momentum 0)": ("teacher.momentum_teacher=0", "teacher.final_momentum_teacher=0"),
}


@dataclasses.dataclass(frozen=True)
class Arm:
    """One training run of the comparison."""

    name: str  # directory name under the output directory, e.g. "a" or "sweep/b_momentum"
    label: str  # shown in the report and plots
    config_file: Path
    overrides: tuple[str, ...]

    @property
    def config(self) -> DictConfig:
        return load_config(self.config_file, list(self.overrides))


def _override_keys(overrides: Sequence[str]) -> set[str]:
    return {override.split("=", 1)[0] for override in overrides}


def common_overrides(
    config_files: Sequence[Path],
    user_overrides: Sequence[str],
    *,
    train_dataset: str | None,
    iters: int | None,
    seed: int | None,
) -> list[str]:
    """The overrides given to every arm: the user's, then `train.dataset_path`, `optim.epochs` (from `iters`),
    `evaluation.eval_period_iterations` and `train.seed` unless the user set them.

    `iters` must be a multiple of every arm's `train.OFFICIAL_EPOCH_LENGTH` (the schedules keep their
    shape in epochs: `optim.epochs = iters / E`). The export period is the recipe's when it divides the
    run length, else run length / k for the largest k <= 4 that divides it (the last step is always
    exported). The seed is arm A's `train.seed` unless `seed` is given.
    """
    overrides = list(user_overrides)
    given = _override_keys(overrides)
    if train_dataset is not None:
        if "train.dataset_path" in given:
            raise ConfigError("pass the training dataset either as --train-dataset or as train.dataset_path=, not both")
        overrides.append(f"train.dataset_path={train_dataset}")
    configs = [load_config(path, overrides) for path in config_files]
    if iters is not None:
        if "optim.epochs" in given:
            raise ConfigError("pass the run length either as --iters or as optim.epochs=, not both")
        lengths = {int(cfg.train.OFFICIAL_EPOCH_LENGTH) for cfg in configs}
        if len(lengths) != 1 or min(lengths) <= 0:
            raise ConfigError(
                f"--iters needs one positive train.OFFICIAL_EPOCH_LENGTH shared by the arms, got {sorted(lengths)}; "
                "set train.OFFICIAL_EPOCH_LENGTH=E on the command line"
            )
        epoch_length = lengths.pop()
        if iters <= 0 or iters % epoch_length:
            raise ConfigError(
                f"--iters {iters} is not a positive multiple of train.OFFICIAL_EPOCH_LENGTH={epoch_length}; "
                f"pass a multiple of {epoch_length} or set train.OFFICIAL_EPOCH_LENGTH"
            )
        overrides.append(f"optim.epochs={iters // epoch_length}")
        configs = [load_config(path, overrides) for path in config_files]
    if "evaluation.eval_period_iterations" not in given:
        totals = {int(cfg.optim.epochs * cfg.train.OFFICIAL_EPOCH_LENGTH) for cfg in configs}
        periods = {int(cfg.evaluation.eval_period_iterations) for cfg in configs}
        if len(totals) == 1 and min(totals) > 0:
            total = totals.pop()
            if len(periods) != 1 or min(periods) <= 0 or total % min(periods):
                parts = next(k for k in range(EXPORTS_PER_RUN, 0, -1) if total % k == 0)
                overrides.append(f"evaluation.eval_period_iterations={total // parts}")
    if "train.seed" not in given:
        overrides.append(f"train.seed={seed if seed is not None else int(configs[0].train.seed)}")
    return overrides


def total_iterations(cfg: DictConfig) -> int | None:
    """Iterations of a run of `cfg` (None when the epoch length depends on the dataset and world size)."""
    if cfg.train.OFFICIAL_EPOCH_LENGTH <= 0:
        return None
    return int(cfg.optim.epochs * cfg.train.OFFICIAL_EPOCH_LENGTH)


def train_arguments(arm: Arm, output_dir: Path) -> list[str]:
    """Command-line arguments of `tools/train.py` for `arm` (resumes a run already in `output_dir`)."""
    return ["--config-file", str(arm.config_file), "--output-dir", str(output_dir / arm.name), *arm.overrides]


@dataclasses.dataclass(frozen=True)
class LaunchResult:
    arm: Arm
    run_dir: Path
    returncode: int
    seconds: float
    failure: str | None  # the last error line of a failed run, else None
    cpu_seconds: float | None = None  # user + system CPU time of a local training process (None: SLURM job)


def _error_line(lines: Sequence[str]) -> str:
    for line in reversed(lines):
        stripped = line.strip()
        if stripped and ("Error" in stripped or "error" in stripped):
            return stripped
    return lines[-1].strip() if lines else "no output"


def run_arm_locally(
    arm: Arm,
    output_dir: Path,
    *,
    echo: Callable[[str], None],
    threads: int | None = None,
    python: str = sys.executable,
) -> LaunchResult:
    """Train `arm` with `python tools/train.py ...` in a subprocess, echoing its output line by line
    prefixed with `[arm.label]`. `threads` sets the subprocess's `OMP_NUM_THREADS` (None: inherited).
    A failed run is returned (with its error line), not raised."""
    run_dir = output_dir / arm.name
    command = [python, str(TRAIN_SCRIPT), *train_arguments(arm, output_dir)]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    echo(f"[{arm.label}] $ {' '.join(command)}" + (f"  (OMP_NUM_THREADS={threads})" if threads else ""))
    start = time.time()
    tail: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, cwd=REPO_ROOT, env=env
    ) as process:
        assert process.stdout is not None, "stdout is a pipe"
        for line in process.stdout:
            echo(f"[{arm.label}] {line.rstrip()}")
            tail = (tail + [line])[-40:]
        _, status, usage = os.wait4(process.pid, 0)  # wait() plus the child's own CPU time
        returncode = process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.time() - start
    failure = None if returncode == 0 else _error_line(tail)
    if failure is not None:
        echo(f"[{arm.label}] training failed (exit code {returncode}): {failure}")
    return LaunchResult(
        arm=arm,
        run_dir=run_dir,
        returncode=returncode,
        seconds=seconds,
        failure=failure,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
    )


def run_arms_locally(
    arms: Sequence[Arm], output_dir: Path, *, echo: Callable[[str], None], parallel: bool = False
) -> list[LaunchResult]:
    """Train `arms` here, one after the other, or (`parallel`, for CPU machines) all at once with one
    thread each, which keeps a many-core-per-run slowdown from oversubscription away on shared CPUs."""
    if not parallel:
        return [run_arm_locally(arm, output_dir, echo=echo) for arm in arms]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(arms)) as pool:
        futures = [pool.submit(run_arm_locally, arm, output_dir, echo=echo, threads=1) for arm in arms]
        return [future.result() for future in futures]


def submit_arms(
    arms: Sequence[Arm],
    output_dir: Path,
    submit_args: argparse.Namespace,
    *,
    train_entry: Callable[[argparse.Namespace], object],
) -> list[LaunchResult]:
    """Submit every arm as a SLURM job (`dinov2.run.submit.submit`, the flags of `add_submit_args`), then
    wait for all of them. `train_entry(args)` runs one training (`dinov2.train.train.main` with the
    meta-architecture factory); it must be picklable."""
    from dinov2.run.submit import submit
    from dinov2.train.train import get_args_parser

    jobs = []
    for arm in arms:
        train_args = get_args_parser().parse_args(train_arguments(arm, output_dir))
        merged = argparse.Namespace(**{**vars(submit_args), **vars(train_args)})
        merged.job_dir = submit_args.job_dir or os.path.join(str(output_dir / arm.name), "slurm", "%j")
        jobs.append((arm, time.time(), submit(train_entry, merged, name=f"compare_{arm.name.replace('/', '_')}")))
    results = []
    for arm, start, job in jobs:
        logger.info("waiting for job %s (%s)", job.job_id, arm.label)
        failure = None
        try:
            job.results()
        except Exception as err:  # a failed SLURM job: recorded for the report, like a failed local run
            failure = f"SLURM job {job.job_id} failed: {str(err).strip().splitlines()[-1]}"
        results.append(
            LaunchResult(
                arm=arm,
                run_dir=output_dir / arm.name,
                returncode=0 if failure is None else 1,
                seconds=time.time() - start,
                failure=failure,
            )
        )
    return results


def sweep_arms(arms: Sequence[Arm]) -> list[tuple[Arm, str, Arm]]:
    """`(base arm, perturbation name, perturbed arm)` for every arm and every `SWEEP_PERTURBATIONS` entry."""
    perturbed = []
    for arm in arms:
        for index, (name, overrides) in enumerate(SWEEP_PERTURBATIONS.items(), start=1):
            perturbed.append(
                (
                    arm,
                    name,
                    Arm(
                        name=f"sweep/{arm.name}_{index}",
                        label=f"{arm.label}, {name}",
                        config_file=arm.config_file,
                        overrides=(*arm.overrides, *overrides),
                    ),
                )
            )
    return perturbed


# Teacher-softmax keys: an objective without a teacher softmax (SimDINO's coding-rate and cosine losses) never
# reads them.
SOFTMAX_TEMPERATURE_KEYS = ("teacher.teacher_temp", "teacher.warmup_teacher_temp", "teacher.warmup_teacher_temp_epochs")


def _objective_config(cfg: DictConfig) -> dict:
    """The config as the arm's objective reads it: without the teacher-softmax keys when no loss uses them."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict), "a config is a mapping"
    if cfg.dino.use_mcr and (cfg.ibot.use_mcr or cfg.ibot.loss_weight == 0):
        for key in SOFTMAX_TEMPERATURE_KEYS:
            section, name = key.split(".")
            container[section].pop(name)
    return container


def is_no_op(base: Arm, perturbed: Arm) -> bool:
    """True when the perturbation leaves what the arm computes unchanged: equal configs, up to the
    teacher-softmax keys of an objective without a teacher softmax (e.g. momentum 0.9 or a teacher
    temperature on SimDINOv2). A config that does not load counts as changed."""
    try:
        return _objective_config(base.config) == _objective_config(perturbed.config)
    except (ConfigError, ValueError):
        return False
