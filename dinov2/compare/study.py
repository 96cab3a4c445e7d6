"""Multi-seed A/B studies: every arm under every condition (baseline, perturbations, batch sizes), N seeds.

A *condition* is a set of overrides applied to both arms on top of their recipes and the shared overrides;
every (condition, arm, seed) is one training run in `DIR/<condition>/<arm>/seed_<s>`. Both arms get the same
seeds, so seed s means the same initialisation seed and the same data order for both; the A/B difference is
paired by seed (`dinov2.compare.stats`).

A run whose condition does not change what its arm computes (`dinov2.compare.launch.is_no_op`: the
perturbed config equals the baseline config, up to keys the arm's objective never reads) is not trained
again: the baseline run of the same seed stands for it, and the report says so.

Every finished run leaves `study_result.json` in its directory (its numbers, curves and verdict): a study
that is interrupted and started again skips those runs and resumes an unfinished training from its last
checkpoint.
"""

import concurrent.futures
import dataclasses
import json
import logging
import math
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig

from dinov2.compare.collect import collect_run
from dinov2.compare.features import EvalData, MetaArchFactory
from dinov2.compare.launch import SWEEP_PERTURBATIONS, Arm, is_no_op, run_arm_locally
from dinov2.compare.report import summarize
from dinov2.compare.runs import METRICS_FILENAME, list_exports, metric_series, read_metrics
from dinov2.compare.stats import PairedDifference, SeedSummary, paired_difference, summarize_seeds
from dinov2.utils.config import ConfigError, load_config

logger = logging.getLogger(__name__)

RESULT_FILENAME = "study_result.json"
LAUNCHES_FILENAME = "launches.jsonl"  # CPU time and iterations of every training process of a run


@dataclasses.dataclass(frozen=True)
class Condition:
    """Overrides applied to every arm (after the arm's own)."""

    name: str  # shown in the report, e.g. "teacher momentum 0.9" or "batch 16"
    slug: str  # directory name
    overrides: tuple[str, ...]
    kind: str  # "baseline" | "perturbation" | "batch size" | "batch size (same steps)"
    batch_size: int | None = None  # images per step, for the batch-size conditions


BASELINE = Condition(name="baseline", slug="baseline", overrides=(), kind="baseline")


def perturbation_conditions() -> list[Condition]:
    """One condition per `SWEEP_PERTURBATIONS` entry (the paper's Table 5 and Table 8 knobs)."""
    return [
        Condition(name=name, slug=f"perturbation_{index}", overrides=overrides, kind="perturbation")
        for index, (name, overrides) in enumerate(SWEEP_PERTURBATIONS.items(), start=1)
    ]


def batch_size_conditions(
    reference: DictConfig, batch_sizes: Sequence[int], *, same_steps: bool = False
) -> list[Condition]:
    """Batch-size conditions at a fixed budget of images (epochs), as the paper's Table 6 (100 epochs each).

    `reference` is a baseline config (batch B0, epoch length E0 iterations). Batch B gets
    `train.OFFICIAL_EPOCH_LENGTH = E0 * B0 / B`, so every run sees the same number of images and the
    schedules (warm-ups, cosine decays, set in epochs) keep their shape; the learning rate follows from the
    recipe's `optim.scaling_rule` (`dinov2.utils.config.scaled_lr`, sqrt_wrt_1024 by default). Teacher exports
    and checkpoints every quarter of the run. The reference batch itself is the baseline (no condition).

    `same_steps=True` gives the control at a fixed budget of *steps* instead: batch B keeps the reference's
    epoch length, so it runs as many steps as the baseline and sees B / B0 times its images (kind
    "batch size (same steps)"). It separates an effect of the batch from an effect of a shorter run.
    """
    base_batch = int(reference.train.batch_size_per_gpu) * int(reference.train.grad_accum_steps)
    epoch_length = int(reference.train.OFFICIAL_EPOCH_LENGTH)
    epochs = int(reference.optim.epochs)
    conditions = []
    for batch in batch_sizes:
        if batch == base_batch:
            continue
        if batch <= 0:
            raise ConfigError(f"batch {batch}: a batch size must be positive")
        if same_steps:
            length = epoch_length
        elif (epoch_length * base_batch) % batch:
            raise ConfigError(
                f"batch {batch}: the {epoch_length} x {base_batch} images of an epoch do not split into batches of "
                f"{batch}; pick a batch size that divides {epoch_length * base_batch}"
            )
        else:
            length = epoch_length * base_batch // batch
        total = length * epochs
        period = next(total // k for k in (4, 3, 2, 1) if total % k == 0)
        conditions.append(
            Condition(
                name=f"batch {batch}, {total} steps" if same_steps else f"batch {batch}",
                slug=f"batch_{batch}_same_steps" if same_steps else f"batch_{batch}",
                overrides=(
                    f"train.batch_size_per_gpu={batch}",
                    "train.grad_accum_steps=1",
                    f"train.OFFICIAL_EPOCH_LENGTH={length}",
                    f"evaluation.eval_period_iterations={period}",
                    f"checkpointing.period_iterations={period}",
                ),
                kind="batch size (same steps)" if same_steps else "batch size",
                batch_size=batch,
            )
        )
    return conditions


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of the study."""

    condition: Condition
    arm: Arm  # the base arm (recipe and shared overrides)
    seed: int
    run: Arm  # what is trained: the base arm with the condition's overrides and train.seed
    reuses: Arm | None  # the baseline run that stands for this one (the condition does not change the arm)

    @property
    def run_name(self) -> str:
        return (self.reuses or self.run).name


def seeded(arm: Arm, condition: Condition, seed: int) -> Arm:
    """`arm` under `condition` with `train.seed=seed` (replacing the arm's own), in `<condition>/<arm>/seed_<seed>`."""
    return Arm(
        name=f"{condition.slug}/{arm.name}/seed_{seed}",
        label=arm.label if condition is BASELINE else f"{arm.label}, {condition.name}",
        config_file=arm.config_file,
        overrides=(
            *(override for override in arm.overrides if not override.startswith("train.seed=")),
            *condition.overrides,
            f"train.seed={seed}",
        ),
    )


def plan_runs(arms: Sequence[Arm], conditions: Sequence[Condition], seeds: Sequence[int]) -> list[RunSpec]:
    """Every (condition, seed, arm), in the order they are trained: the conditions of one kind (baseline,
    perturbation, batch size) after those of the kinds before it; within a kind, seed by seed (every
    condition gets its first seed before any gets a second), both arms of a seed next to each other."""
    kinds = list(dict.fromkeys(condition.kind for condition in conditions))
    specs = []
    for kind in kinds:
        for seed in seeds:
            for condition in (c for c in conditions if c.kind == kind):
                for arm in arms:
                    run = seeded(arm, condition, seed)
                    baseline = seeded(arm, BASELINE, seed)
                    unchanged = condition is not BASELINE and is_no_op(baseline, run)
                    specs.append(
                        RunSpec(
                            condition=condition, arm=arm, seed=seed, run=run, reuses=baseline if unchanged else None
                        )
                    )
    return specs


def _result_key(spec: RunSpec) -> dict[str, Any]:
    trained = spec.reuses or spec.run
    return {"config_file": str(trained.config_file), "overrides": list(trained.overrides)}


def _read_cached(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("key") == key else None


def _finished_training(run_dir: Path) -> bool:
    """The run exported its teacher after its last iteration (its config says how many)."""
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        return False
    cfg = load_config(config_path)
    total = int(cfg.optim.epochs * cfg.train.OFFICIAL_EPOCH_LENGTH)
    exports = list_exports(run_dir)
    return bool(exports) and exports[-1][0] == total


def _last_iteration(run_dir: Path) -> int:
    """Last logged iteration of a run (-1 before the first)."""
    path = run_dir / METRICS_FILENAME
    records = read_metrics(path) if path.is_file() else []
    return int(records[-1]["iteration"]) if records else -1


def _cpu_seconds_per_iteration(run_dir: Path) -> float | None:
    """CPU seconds (user + system) of the training processes that trained the run, per iteration they
    trained, start-up included (from `launches.jsonl`, one line per launch); None when not recorded."""
    path = run_dir / LAUNCHES_FILENAME
    if not path.is_file():
        return None
    launches = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if any(launch["cpu_seconds"] is None for launch in launches):
        return None
    iterations = sum(launch["iterations"] for launch in launches)
    return sum(launch["cpu_seconds"] for launch in launches) / iterations if iterations > 0 else None


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    spec: RunSpec
    result: dict[str, Any] | None  # the `summarize` numbers plus "loss_curve"; None: not run yet

    @property
    def status(self) -> str:
        return "not run" if self.result is None else str(self.result["status"])

    def value(self, key: str) -> float | None:
        if self.result is None or self.result.get(key) is None:
            return None
        return float(self.result[key])


class StudyRunner:
    """Trains (here, `jobs` runs at a time with one thread each) and evaluates the runs of a study."""

    def __init__(
        self,
        output_dir: Path,
        data: EvalData,
        *,
        device: Any,
        meta_arch_factory: MetaArchFactory | None,
        coding_rate_eps: float,
        collapse_rank: float,
        echo: Callable[[str], None],
    ) -> None:
        self.output_dir = output_dir
        self.data = data
        self.device = device
        self.meta_arch_factory = meta_arch_factory
        self.coding_rate_eps = coding_rate_eps
        self.collapse_rank = collapse_rank
        self.echo = echo
        # Evaluation rebuilds the random-init teacher by re-seeding the global RNGs: one evaluation at a time.
        self._evaluation_lock = threading.Lock()

    def _evaluate(self, spec: RunSpec, failure: str | None) -> dict[str, Any]:
        trained = spec.reuses or spec.run
        run_dir = self.output_dir / trained.name
        with self._evaluation_lock:
            result = collect_run(
                run_dir,
                trained.label,
                self.data,
                device=self.device,
                meta_arch_factory=self.meta_arch_factory,
                coding_rate_eps=self.coding_rate_eps,
                collapse_rank=self.collapse_rank,
                failure=failure,
                source=" ".join([str(trained.config_file), *trained.overrides]),
            )
        summary = summarize(result)
        steps, losses = metric_series(result.run.records, "total_loss")
        summary["loss_curve"] = [[step, loss] for step, loss in zip(steps, losses, strict=True)]
        summary["failure"] = failure
        summary["cpu_seconds_per_iter"] = _cpu_seconds_per_iteration(run_dir)
        (run_dir / RESULT_FILENAME).write_text(json.dumps({"key": _result_key(spec), **summary}, indent=1, default=str))
        return summary

    def cached(self, spec: RunSpec) -> dict[str, Any] | None:
        """The stored result of `spec`, evaluating a finished training that has none yet; None if not run."""
        run_dir = self.output_dir / (spec.reuses or spec.run).name
        record = _read_cached(run_dir / RESULT_FILENAME, _result_key(spec))
        if record is not None:
            return record
        if _finished_training(run_dir):
            return self._evaluate(spec, failure=None)
        return None

    def run(self, spec: RunSpec) -> RunOutcome:
        """Train and evaluate `spec` unless its result is stored (a reused baseline run is trained as itself)."""
        result = self.cached(spec)
        if result is None:
            trained = spec.reuses or spec.run
            run_dir = self.output_dir / trained.name
            before = _last_iteration(run_dir)
            launch = run_arm_locally(trained, self.output_dir, echo=self.echo, threads=1)
            run_dir.mkdir(parents=True, exist_ok=True)
            with (run_dir / LAUNCHES_FILENAME).open("a") as launches:
                record = {"cpu_seconds": launch.cpu_seconds, "iterations": _last_iteration(run_dir) - before}
                launches.write(json.dumps(record | {"wall_seconds": launch.seconds}) + "\n")
            if launch.returncode < 0:  # killed by a signal (an interrupted study): not a result, train it next time
                self.echo(f"[{spec.run.label}, seed {spec.seed}] interrupted (signal {-launch.returncode})")
                return RunOutcome(spec=spec, result=None)
            if not (launch.run_dir / "config.yaml").is_file():
                result = {"status": "failed", "status_reason": launch.failure, "failure": launch.failure}
                launch.run_dir.mkdir(parents=True, exist_ok=True)
                (launch.run_dir / RESULT_FILENAME).write_text(json.dumps({"key": _result_key(spec), **result}))
            else:
                result = self._evaluate(spec, failure=launch.failure)
            self.echo(f"[{spec.run.label}, seed {spec.seed}] {result['status']}: {result.get('status_reason')}")
        return RunOutcome(spec=spec, result=result)

    def run_all(self, specs: Sequence[RunSpec], *, jobs: int, train: bool = True) -> list[RunOutcome]:
        """Every spec, in order, `jobs` at a time (a spec and the baseline run it reuses are trained once).
        With `train=False` nothing is trained: runs without a stored result (or finished training) are
        reported as not run."""
        if not train:
            return [RunOutcome(spec=spec, result=self.cached(spec)) for spec in specs]
        by_run: dict[str, concurrent.futures.Future] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            for spec in specs:
                if spec.run_name not in by_run:
                    by_run[spec.run_name] = pool.submit(self.run, spec)
            finished = {name: future.result() for name, future in by_run.items()}
        return [RunOutcome(spec=spec, result=finished[spec.run_name].result) for spec in specs]


@dataclasses.dataclass(frozen=True)
class ConditionRow:
    """One condition of the study: per-arm numbers over seeds and the paired difference (arm B - arm A)."""

    condition: Condition
    arm_labels: tuple[str, str]
    seeds: tuple[int, ...]
    final_knn: tuple[SeedSummary, SeedSummary]
    statuses: tuple[tuple[str, ...], tuple[str, ...]]  # per arm, per seed
    reused: tuple[bool, bool]  # the arm's baseline runs stand for this condition
    difference: PairedDifference
    # per arm, this condition's k-NN minus the same arm's baseline k-NN, paired by seed (None on the baseline
    # row, for reused runs and without baseline runs): did the condition move the arm?
    change_from_baseline: tuple[PairedDifference | None, PairedDifference | None] = (None, None)


def condition_rows(outcomes: Sequence[RunOutcome], arms: Sequence[Arm]) -> list[ConditionRow]:
    """Aggregate the outcomes by condition (order of first appearance). A diverged run's k-NN is NaN and
    counted as missing in the means; its status stays in `statuses`."""
    if len(arms) != 2:
        raise ValueError(f"a study compares two arms, got {len(arms)}")
    conditions: dict[str, Condition] = {}
    for outcome in outcomes:
        conditions.setdefault(outcome.spec.condition.slug, outcome.spec.condition)
    baseline_knn = {
        (outcome.spec.arm.name, outcome.spec.seed): outcome.value("knn_top1_final")
        for outcome in outcomes
        if outcome.spec.condition.kind == "baseline"
    }
    rows = []
    for slug, condition in conditions.items():
        mine = [outcome for outcome in outcomes if outcome.spec.condition.slug == slug]
        seeds = tuple(sorted({outcome.spec.seed for outcome in mine}))
        per_arm = []
        for arm in arms:
            by_seed = {outcome.spec.seed: outcome for outcome in mine if outcome.spec.arm.name == arm.name}
            per_arm.append([by_seed.get(seed) for seed in seeds])
        values = [[o.value("knn_top1_final") if o is not None else None for o in runs] for runs in per_arm]
        reused = tuple(all(o is not None and o.spec.reuses is not None for o in a) for a in per_arm)
        changes = tuple(
            None
            if condition.kind == "baseline" or is_reused or not any((arm.name, s) in baseline_knn for s in seeds)
            else paired_difference([baseline_knn.get((arm.name, seed)) for seed in seeds], arm_values)
            for arm, arm_values, is_reused in zip(arms, values, reused, strict=True)
        )
        rows.append(
            ConditionRow(
                condition=condition,
                arm_labels=(arms[0].label, arms[1].label),
                seeds=seeds,
                final_knn=(summarize_seeds(values[0]), summarize_seeds(values[1])),
                statuses=tuple(tuple(o.status if o is not None else "not run" for o in a) for a in per_arm),  # type: ignore[arg-type]
                reused=reused,  # type: ignore[arg-type]
                difference=paired_difference(values[0], values[1]),
                change_from_baseline=changes,  # type: ignore[arg-type]
            )
        )
    return rows


def format_mean_std(summary: SeedSummary, fmt: str = "{:.2f}") -> str:
    """'59.70 +- 2.10 (n=3)'; '-' without values; NaN std shown for a single value."""
    if summary.n == 0:
        return "-"
    std = "n/a" if math.isnan(summary.std) else fmt.format(summary.std)
    return f"{fmt.format(summary.mean)} +- {std} (n={summary.n})"


def format_difference(difference: PairedDifference, fmt: str = "{:+.2f}") -> str:
    """'+6.10 [+1.20, +11.00]' (mean and interval); '-' without pairs."""
    if difference.n == 0:
        return "-"
    if math.isnan(difference.low):
        return f"{fmt.format(difference.mean)} (n={difference.n}, no interval)"
    return f"{fmt.format(difference.mean)} [{fmt.format(difference.low)}, {fmt.format(difference.high)}]"


def status_counts(statuses: Sequence[str]) -> str:
    """'3 ok' / '2 ok, 1 diverged' (in order of first appearance)."""
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return ", ".join(f"{count} {status}" for status, count in counts.items())
