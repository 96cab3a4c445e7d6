"""PNG figures of an A/B comparison (matplotlib, Agg backend; nothing is shown on screen)."""

import logging
import math
from pathlib import Path
from typing import Any, Sequence

from dinov2.compare.collect import ArmResult
from dinov2.compare.runs import metric_names, metric_series

logger = logging.getLogger(__name__)

LOSSES_PNG = "losses.png"
KNN_PNG = "knn.png"
FEATURES_PNG = "features.png"
THROUGHPUT_PNG = "throughput.png"


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported on first use: no import-time side effect)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_names(result: ArmResult) -> list[str]:
    """The loss meters of a run (`*loss*`), `total_loss` last."""
    names = [name for name in metric_names(result.run.records) if "loss" in name and name != "total_loss"]
    return names + (["total_loss"] if "total_loss" in metric_names(result.run.records) else [])


def plot_losses(results: Sequence[ArmResult], path: Path) -> Path:
    """One panel per arm: every logged loss term over iterations (exact values at the logged iterations)."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for axis, result in zip(axes[0], results, strict=True):
        for name in loss_names(result):
            steps, values = metric_series(result.run.records, name)
            axis.plot(steps, values, label=name, linewidth=2.5 if name == "total_loss" else 1.2)
        axis.set_title(result.label)
        axis.set_xlabel("iteration")
        axis.set_ylabel("loss term")
        axis.grid(alpha=0.3)
        if result.run.records:
            axis.legend(fontsize=7)
    return _save(figure, path)


def plot_knn(results: Sequence[ArmResult], path: Path) -> Path:
    """Teacher k-NN top-1 over training (step 0 = random-init teacher), one line per arm."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for result in results:
        steps = [step for step, _ in result.evaluations]
        axis.plot(steps, [evaluation.knn_top1 for _, evaluation in result.evaluations], marker="o", label=result.label)
    axis.set_xlabel("optimizer steps (0 = random-init teacher)")
    axis.set_ylabel("k-NN top-1 (%)")
    axis.set_title("teacher k-NN accuracy over training")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, path)


def plot_features(results: Sequence[ArmResult], path: Path) -> Path:
    """Coding rate and effective rank of the teacher's evaluation features over training; the effective
    rank of the teacher's CLS features logged during training (training batches) as thin lines."""
    plt = _pyplot()
    figure, (rate_axis, rank_axis) = plt.subplots(1, 2, figsize=(12, 4))
    for result in results:
        steps = [step for step, _ in result.evaluations]
        rate_axis.plot(
            steps, [evaluation.coding_rate for _, evaluation in result.evaluations], marker="o", label=result.label
        )
        line = rank_axis.plot(
            steps,
            [evaluation.effective_rank for _, evaluation in result.evaluations],
            marker="o",
            label=f"{result.label} (evaluation images)",
        )[0]
        logged_steps, logged = metric_series(result.run.records, "teacher_cls_effective_rank")
        if logged:
            rank_axis.plot(
                logged_steps,  # the teacher of iteration i has had i updates
                logged,
                linewidth=0.8,
                linestyle="--",
                color=line.get_color(),
                label=f"{result.label} (training batch, logged)",
            )
    rate_axis.set_title("coding rate of the teacher features")
    rank_axis.set_title("effective rank of the teacher features")
    for axis in (rate_axis, rank_axis):
        axis.set_xlabel("optimizer steps")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return _save(figure, path)


def plot_throughput(results: Sequence[ArmResult], path: Path) -> Path:
    """Bars: training images/s and peak memory (MB) of each arm (missing values are left out)."""
    plt = _pyplot()
    figure, (speed_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [result.label for result in results]
    speeds = [result.run.images_per_second or math.nan for result in results]
    memories = [result.run.log.peak_memory_mb or math.nan for result in results]
    for axis, values, title in (
        (speed_axis, speeds, "training images / s"),
        (memory_axis, memories, "peak memory (MB)"),
    ):
        bars = axis.bar(range(len(values)), values, color=[f"C{i}" for i in range(len(values))])
        axis.bar_label(bars, fmt="%.1f")
        axis.set_xticks(range(len(values)), labels, fontsize=8)
        axis.set_title(title)
    return _save(figure, path)


def _save(figure: Any, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    logger.info("wrote %s", path)
    return path


def write_plots(results: Sequence[ArmResult], output_dir: Path) -> list[Path]:
    """All four figures into `output_dir`; returns their paths."""
    return [
        plot_losses(results, output_dir / LOSSES_PNG),
        plot_knn(results, output_dir / KNN_PNG),
        plot_features(results, output_dir / FEATURES_PNG),
        plot_throughput(results, output_dir / THROUGHPUT_PNG),
    ]
