"""Evaluate what a run left behind: the step-0 teacher and every teacher export, plus the health verdict.

Evaluations are stored as JSON in the run directory, `<run>/eval/compare/step_<n>.json` (n = optimizer
steps done; 0 = the random-init teacher), keyed by the evaluated file (path, size, mtime), the evaluation
data and settings: collecting the same run again (also with `--runs`) reuses them.
"""

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from dinov2.compare.features import EvalData, FeatureEvaluation, MetaArchFactory, evaluate_backbone, initial_teacher
from dinov2.compare.health import DEFAULT_COLLAPSE_RANK, Health, assess_run
from dinov2.compare.runs import RunData, load_run
from dinov2.utils.checkpoint import load_pretrained_backbone

logger = logging.getLogger(__name__)

LINEAR_RESULTS_FILENAME = "results_eval_linear.json"
EVALUATIONS_DIR = Path("eval") / "compare"


@dataclasses.dataclass(frozen=True)
class ArmResult:
    """One run, evaluated."""

    label: str
    run: RunData
    evaluations: list[tuple[int, FeatureEvaluation]]  # (optimizer steps, evaluation), step 0 first
    health: Health
    linear_top1: float | None  # best linear head of the latest linear evaluation found in the run, if any
    source: str  # where the config came from (recipe and overrides, or the run's config.yaml)

    @property
    def final(self) -> FeatureEvaluation | None:
        return self.evaluations[-1][1] if self.evaluations else None

    @property
    def initial(self) -> FeatureEvaluation | None:
        return self.evaluations[0][1] if self.evaluations and self.evaluations[0][0] == 0 else None


def _non_finite_evaluation() -> FeatureEvaluation:
    nan = math.nan
    return FeatureEvaluation(knn={}, knn_top1=nan, effective_rank=nan, coding_rate=nan)


def _evaluate_cached(
    cache: Path,
    build: Callable[[], nn.Module],
    data: EvalData,
    device: torch.device,
    *,
    source: str,
    **knobs: object,
) -> FeatureEvaluation:
    """Evaluate `build()` unless `cache` holds the evaluation of the same source, data and settings."""
    key = {"source": source, "data": data.description, "knobs": {k: str(v) for k, v in knobs.items()}}
    if cache.is_file():
        record = json.loads(cache.read_text())
        if record.get("key") == key:
            return FeatureEvaluation.from_json(record["evaluation"])
    backbone = build().to(device)
    if not all(torch.isfinite(param).all() for param in backbone.parameters()):
        evaluation = _non_finite_evaluation()
    else:
        evaluation = evaluate_backbone(backbone, data, device=device, **knobs)  # type: ignore[arg-type]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "evaluation": evaluation.to_json()}, indent=1))
    return evaluation


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()} ({stat.st_size} bytes, mtime {stat.st_mtime_ns})"


def evaluate_exports(
    run: RunData,
    data: EvalData,
    *,
    device: torch.device,
    meta_arch_factory: MetaArchFactory | None,
    coding_rate_eps: float,
) -> list[tuple[int, FeatureEvaluation]]:
    """Evaluate the random-init teacher (step 0, when `meta_arch_factory` is given) and every export."""
    from dinov2.models import build_model_from_cfg

    knobs = {"coding_rate_eps": coding_rate_eps}
    cache_dir = run.run_dir / EVALUATIONS_DIR
    results = []
    if meta_arch_factory is not None:
        logger.info("%s: evaluating the random-init teacher (step 0)", run.name)
        evaluation = _evaluate_cached(
            cache_dir / "step_0.json",
            lambda: initial_teacher(run.config, meta_arch_factory),
            data,
            device,
            source=f"random init of {_file_identity(run.run_dir / 'config.yaml')}",
            **knobs,
        )
        results.append((0, evaluation))

    def exported(path: Path) -> nn.Module:
        model, _ = build_model_from_cfg(run.config, only_teacher=True)  # type: ignore[misc]
        load_pretrained_backbone(model, path)
        return model

    for step, path in run.exports:
        logger.info("%s: evaluating the teacher after %d steps (%s)", run.name, step, path)
        evaluation = _evaluate_cached(
            cache_dir / f"step_{step}.json",
            lambda path=path: exported(path),
            data,
            device,
            source=_file_identity(path),
            **knobs,
        )
        results.append((step, evaluation))
    return results


def read_linear_result(run: RunData) -> float | None:
    """Best linear-probe top-1 (%) of the latest `results_eval_linear.json` under `<run>/eval/` (the file
    `tools/eval_linear.py --output-dir <run>/eval/training_<it>/linear` writes), or None."""
    eval_dir = run.run_dir / "eval"
    if not eval_dir.is_dir():
        return None
    candidates = sorted(eval_dir.rglob(LINEAR_RESULTS_FILENAME), key=lambda p: (len(p.parts), str(p)))
    best: tuple[int, float] | None = None
    for path in candidates:
        export_steps = [int(part.split("_")[1]) for part in path.parts if part.startswith("training_")]
        step = export_steps[-1] if export_steps else -1
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if "best_classifier" in record and (best is None or step >= best[0]):
                best = (step, float(record["best_classifier"]["accuracy"]))
    return best[1] if best is not None else None


def collect_run(
    run_dir: Path,
    label: str,
    data: EvalData,
    *,
    device: torch.device,
    meta_arch_factory: MetaArchFactory | None,
    coding_rate_eps: float,
    collapse_rank: float = DEFAULT_COLLAPSE_RANK,
    failure: str | None = None,
    source: str | None = None,
) -> ArmResult:
    """Read, evaluate and assess one run directory."""
    run = load_run(run_dir, label)
    if failure is not None and not run.exports:  # e.g. a config the meta-architecture refuses: nothing to evaluate
        evaluations = []
    else:
        evaluations = evaluate_exports(
            run,
            data,
            device=device,
            meta_arch_factory=meta_arch_factory,
            coding_rate_eps=coding_rate_eps,
        )
    trained = [evaluation for step, evaluation in evaluations if step > 0]
    health = assess_run(
        run,
        final_effective_rank=trained[-1].effective_rank if trained else None,
        collapse_rank=collapse_rank,
        failure=failure,
    )
    return ArmResult(
        label=label,
        run=run,
        evaluations=evaluations,
        health=health,
        linear_top1=read_linear_result(run),
        source=source if source is not None else str(run.run_dir / "config.yaml"),
    )
