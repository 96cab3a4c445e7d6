"""Report of a multi-seed study (`dinov2.compare.study`): tables over seeds, paired differences, band plots.

Writes into the output directory:

* `study.md`: per condition the final teacher k-NN of each arm (mean +- sample std over seeds, run
  statuses), the paired difference B - A with its 95 % t-interval, and each arm's change from its own
  baseline (condition - baseline, paired by seed, with interval); the k-NN over training and the loss at
  the end of the baseline runs; every run on its own line (failed, diverged and collapsed runs included);
* `study.json`: the same numbers unrounded, and every run's result;
* `study_stability.png` (baseline loss and k-NN curves), `study_conditions.png` (final k-NN per condition),
  `study_batch_sizes.png` (final k-NN against the batch size, when the study has batch-size conditions).

Bands in the plots are mean +- one sample standard deviation over seeds; thin lines / dots are the seeds.
"""

import dataclasses
import datetime
import json
import math
from pathlib import Path
from typing import Any, Sequence

from dinov2.compare.launch import Arm
from dinov2.compare.report import format_value, machine_description
from dinov2.compare.stats import paired_difference, summarize_seeds
from dinov2.compare.study import (
    ConditionRow,
    RunOutcome,
    condition_rows,
    format_difference,
    format_mean_std,
    status_counts,
)

REPORT_FILENAME = "study.md"
SUMMARY_FILENAME = "study.json"
STABILITY_PNG = "study_stability.png"
CONDITIONS_PNG = "study_conditions.png"
BATCH_SIZES_PNG = "study_batch_sizes.png"

GAIN_VERDICTS = {"B > A": "still improving", "B < A": "getting worse", "cannot tell": "cannot tell"}
STATISTICS_NOTE = (
    "Mean +- sample standard deviation (n - 1) over seeds; n counts the runs with a finite number (a diverged "
    "run has none and is counted in the status column). B - A is paired by seed (both arms share the seed, "
    "hence the initialisation seed and the data order); [low, high] is the 95 % Student t-interval on the "
    "per-seed differences, mean +- t(0.975, n-1) std / sqrt(n). 'cannot tell' = the interval contains 0, or "
    "all per-seed differences are equal (a zero-width interval from a few tied k-NN values is no evidence)."
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _verdict(row: ConditionRow) -> str:
    if row.difference.n == 0:
        return "-"
    verdict = row.difference.verdict
    if verdict == "B > A":
        return f"{row.arm_labels[1]} higher"
    if verdict == "B < A":
        return f"{row.arm_labels[0]} higher"
    return verdict


def _arm_cell(row: ConditionRow, index: int) -> str:
    cell = format_mean_std(row.final_knn[index])
    if row.reused[index]:
        cell += " (= baseline runs: the condition does not change this arm)"
    return cell


def condition_table(rows: Sequence[ConditionRow]) -> list[str]:
    """Markdown table: condition, per arm k-NN mean +- std and statuses, B - A with interval, verdict."""
    if not rows:
        return []
    labels = rows[0].arm_labels
    header = [
        "condition",
        f"{labels[0]} k-NN (%)",
        f"{labels[0]} runs",
        f"{labels[1]} k-NN (%)",
        f"{labels[1]} runs",
        f"{labels[1]} - {labels[0]} [95 % CI]",
        "verdict",
    ]
    body = [
        [
            row.condition.name,
            _arm_cell(row, 0),
            status_counts(row.statuses[0]),
            _arm_cell(row, 1),
            status_counts(row.statuses[1]),
            format_difference(row.difference),
            _verdict(row),
        ]
        for row in rows
    ]
    return _table(header, body)


CHANGE_VERDICTS = {"B > A": "higher", "B < A": "lower", "cannot tell": "cannot tell"}


def change_table(rows: Sequence[ConditionRow]) -> list[str]:
    """Markdown table: per arm, condition - the arm's own baseline (paired by seed) with interval and verdict
    ('higher' / 'lower' than the baseline, 'cannot tell'); rows without a change in either arm are left out."""
    rows = [row for row in rows if any(change is not None for change in row.change_from_baseline)]
    if not rows:
        return []
    labels = rows[0].arm_labels
    header = ["condition"]
    for label in labels:
        header += [f"{label}: condition - baseline [95 % CI]", f"{label} vs its baseline"]
    body = []
    for row in rows:
        cells = [row.condition.name]
        for index, change in enumerate(row.change_from_baseline):
            if change is None or change.n == 0:
                reason = "unchanged (baseline runs)" if row.reused[index] else "-"
                cells += [reason, "-"]
            else:
                cells += [format_difference(change), CHANGE_VERDICTS[change.verdict]]
        body.append(cells)
    return _table(header, body)


def _baseline(outcomes: Sequence[RunOutcome], arm: Arm) -> list[RunOutcome]:
    return [
        o
        for o in outcomes
        if o.spec.condition.kind == "baseline" and o.spec.arm.name == arm.name and o.result is not None
    ]


def _knn_by_step(outcome: RunOutcome) -> dict[int, float]:
    assert outcome.result is not None, "a finished run"
    return {int(step): float(value) for step, value in outcome.result.get("knn_over_training", [])}


def stability_table(outcomes: Sequence[RunOutcome], arms: Sequence[Arm]) -> list[str]:
    """k-NN over training of the baseline runs: per step, each arm's mean +- std and B - A with interval;
    and each arm's gain over the second half of training (final - half-way, paired within the arm's seeds)."""
    per_arm = [_baseline(outcomes, arm) for arm in arms]
    steps = sorted({step for runs in per_arm for run in runs for step in _knn_by_step(run)})
    if not steps:
        return []
    seeds = sorted({run.spec.seed for runs in per_arm for run in runs})

    def values(runs: list[RunOutcome], step: int) -> list[float | None]:
        by_seed = {run.spec.seed: _knn_by_step(run).get(step) for run in runs}
        return [by_seed.get(seed) for seed in seeds]

    header = ["steps", *(f"{arm.label} k-NN (%)" for arm in arms), f"{arms[1].label} - {arms[0].label} [95 % CI]"]
    rows = []
    for step in steps:
        a, b = values(per_arm[0], step), values(per_arm[1], step)
        rows.append(
            [str(step), format_mean_std(summarize_seeds(a)), format_mean_std(summarize_seeds(b)),
             format_difference(paired_difference(a, b))]
        )  # fmt: skip
    lines = _table(header, rows)
    half, last = steps[len(steps) // 2], steps[-1]
    lines += ["", f"Gain of the teacher k-NN from step {half} to step {last} (paired by seed within each arm):", ""]
    gain_rows = []
    for arm, runs in zip(arms, per_arm, strict=True):
        gain = paired_difference(values(runs, half), values(runs, last))
        gain_rows.append([arm.label, format_difference(gain), GAIN_VERDICTS[gain.verdict]])
    return lines + _table(["arm", f"k-NN(step {last}) - k-NN(step {half}) [95 % CI]", "verdict"], gain_rows)


BASELINE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("knn_top1_step0", "k-NN top-1 (%), random-init teacher (step 0)", "{:.2f}"),
    ("knn_top1_final", "k-NN top-1 (%), final teacher", "{:.2f}"),
    ("effective_rank_final", "effective rank of the final teacher features", "{:.2f}"),
    ("coding_rate_final", "coding rate of the final teacher features", "{:.2f}"),
    ("final_total_loss", "total loss at the last iteration", "{:.3f}"),
    ("cpu_seconds_per_iter", "CPU seconds / iteration (training process, start-up included)", "{:.2f}"),
    ("peak_memory_mb", "peak memory (MB, training process max RSS)", "{:.0f}"),
)


def _spread(values: Sequence[float | None], fmt: str) -> str:
    """'59.70 +- 2.10 (55.67-61.20, n=3)'."""
    summary = summarize_seeds(values)
    if summary.n == 0:
        return "-"
    if summary.n == 1:
        return f"{fmt.format(summary.mean)} (n=1)"
    low, high = fmt.format(summary.minimum), fmt.format(summary.maximum)
    return f"{fmt.format(summary.mean)} +- {fmt.format(summary.std)} ({low} to {high}, n={summary.n})"


def baseline_table(outcomes: Sequence[RunOutcome], arms: Sequence[Arm]) -> list[str]:
    """The baseline runs per arm: mean +- std (min to max, n) of the final-table numbers over seeds."""
    per_arm = [_baseline(outcomes, arm) for arm in arms]
    if not any(per_arm):
        return []
    steps = sorted({step for runs in per_arm for run in runs for step in _knn_by_step(run)} - {0})
    rows = []
    for key, title, fmt in BASELINE_ROWS:
        rows.append([title, *(_spread([run.value(key) for run in runs], fmt) for runs in per_arm)])
        if key == "knn_top1_step0":
            for step in steps[:-1]:
                rows.append(
                    [
                        f"k-NN top-1 (%), teacher after {step} steps",
                        *(_spread([_knn_by_step(run).get(step) for run in runs], fmt) for runs in per_arm),
                    ]
                )
    return _table(["", *(arm.label for arm in arms)], rows)


def runs_table(outcomes: Sequence[RunOutcome]) -> list[str]:
    """Every run: condition, arm, seed, status, final k-NN, effective rank, final loss, s/it, peak memory, why."""
    rows = []
    for outcome in outcomes:
        result = outcome.result or {}
        reuse = f" (= baseline seed {outcome.spec.seed})" if outcome.spec.reuses is not None else ""
        rows.append(
            [
                outcome.spec.condition.name,
                outcome.spec.arm.label,
                str(outcome.spec.seed),
                outcome.status + reuse,
                format_value(result.get("knn_top1_final"), "{:.2f}"),
                format_value(result.get("effective_rank_final"), "{:.2f}"),
                format_value(result.get("final_total_loss"), "{:.4f}"),
                format_value(result.get("iterations"), "{:d}"),
                format_value(result.get("seconds_per_iter"), "{:.2f}"),
                format_value(result.get("cpu_seconds_per_iter"), "{:.2f}"),
                format_value(result.get("peak_memory_mb"), "{:.0f}"),
                str(result.get("status_reason") or "").replace("|", "/")[:160],
            ]
        )
    header = ["condition", "arm", "seed", "status", "final k-NN (%)", "eff. rank", "final loss", "steps"]
    header += ["s / it", "CPU s / it", "peak MB", "why"]
    return _table(header, rows)


def _fill(axis: Any, xs: Sequence[float], means: Sequence[float], stds: Sequence[float], color: str) -> None:
    """Shade mean +- std."""
    low = [mean - std for mean, std in zip(means, stds, strict=True)]
    high = [mean + std for mean, std in zip(means, stds, strict=True)]
    axis.fill_between(xs, low, high, color=color, alpha=0.2)


def _band(axis: Any, curves: list[list[tuple[float, float]]], label: str, color: str) -> None:
    """Thin line per seed; mean line and mean +- std band over the x values every seed has."""
    for curve in curves:
        axis.plot([x for x, _ in curve], [y for _, y in curve], color=color, linewidth=0.6, alpha=0.4)
    shared = sorted(set.intersection(*(set(x for x, _ in curve) for curve in curves))) if curves else []
    if not shared:
        return
    lookups = [dict(curve) for curve in curves]
    stats = [summarize_seeds([lookup[x] for lookup in lookups]) for x in shared]
    means = [s.mean for s in stats]
    stds = [s.std if math.isfinite(s.std) else 0.0 for s in stats]
    axis.plot(shared, means, color=color, linewidth=2, label=f"{label} (n={len(curves)})")
    _fill(axis, shared, means, stds, color)


def plot_stability(outcomes: Sequence[RunOutcome], arms: Sequence[Arm], path: Path) -> Path:
    """Baseline runs: total loss over iterations and teacher k-NN over steps, mean +- std band per arm."""
    plt = _pyplot()
    figure, (loss_axis, knn_axis) = plt.subplots(1, 2, figsize=(12, 4.2))
    for index, arm in enumerate(arms):
        runs = _baseline(outcomes, arm)
        color = f"C{index}"
        losses = [[(float(x), float(y)) for x, y in run.result.get("loss_curve", [])] for run in runs if run.result]
        _band(loss_axis, [c for c in losses if c], arm.label, color)
        knn = [sorted(_knn_by_step(run).items()) for run in runs]
        _band(knn_axis, [c for c in knn if c], arm.label, color)
    loss_axis.set_title("total loss (baseline; band: mean +- std over seeds)")
    loss_axis.set_xlabel("iteration")
    knn_axis.set_title("teacher k-NN top-1 (%) (band: mean +- std)")
    knn_axis.set_xlabel("optimizer steps (0 = random-init teacher)")
    for axis in (loss_axis, knn_axis):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    return _save(plt, figure, path)


def _final_knn_points(axis: Any, x: float, outcomes: Sequence[RunOutcome], color: str, label: str | None) -> None:
    values = [o.value("knn_top1_final") for o in outcomes if o.result is not None]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    bad = len(values) - len(finite)
    axis.scatter([x] * len(finite), finite, color=color, s=14, alpha=0.6)
    summary = summarize_seeds(finite)
    if summary.n:
        axis.errorbar([x], [summary.mean], yerr=[summary.std if summary.n > 1 else 0.0], color=color, marker="D",
                      markersize=7, capsize=5, label=label)  # fmt: skip
    if bad:
        axis.scatter([x], [0], color=color, marker="x", s=60)
        axis.annotate(f"{bad} no k-NN", (x, 0), textcoords="offset points", xytext=(4, 4), fontsize=7)


def plot_conditions(outcomes: Sequence[RunOutcome], arms: Sequence[Arm], path: Path) -> Path:
    """Final k-NN per baseline / perturbation condition and arm: seed dots, mean with +- std error bar
    (x at 0: runs without a k-NN, i.e. diverged or failed)."""
    plt = _pyplot()
    names = []
    for outcome in outcomes:
        if outcome.spec.condition.kind in ("baseline", "perturbation") and outcome.spec.condition.name not in names:
            names.append(outcome.spec.condition.name)
    figure, axis = plt.subplots(figsize=(max(6, 2.2 * len(names)), 4.5))
    for index, arm in enumerate(arms):
        for position, name in enumerate(names):
            mine = [o for o in outcomes if o.spec.condition.name == name and o.spec.arm.name == arm.name]
            label = arm.label if position == 0 else None
            _final_knn_points(axis, position + (index - 0.5) * 0.3, mine, f"C{index}", label)
    axis.set_xticks(range(len(names)), [name.replace(" (", "\n(") for name in names], fontsize=8)
    axis.set_ylabel("final teacher k-NN top-1 (%)")
    axis.set_title("final k-NN per condition (dots: seeds; diamond: mean +- std)")
    axis.grid(alpha=0.3, axis="y")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    return _save(plt, figure, path)


def plot_batch_sizes(outcomes: Sequence[RunOutcome], arms: Sequence[Arm], path: Path, baseline_batch: int) -> Path:
    """Final k-NN against the batch size (baseline runs at `baseline_batch`): seed dots, mean +- std band.

    Solid lines: the same number of images for every batch ("batch size" conditions); dashed lines with
    hollow markers, when the study has them: the same number of steps ("batch size (same steps)"). The
    baseline belongs to both."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    budgets = [("batch size", "same images", "-", "D")]
    if any(o.spec.condition.kind == "batch size (same steps)" for o in outcomes):
        budgets.append(("batch size (same steps)", "same steps", "--", "o"))
    for index, arm in enumerate(arms):
        color = f"C{index}"
        for kind_shown, budget, linestyle, marker in budgets:
            points: dict[int, list[float]] = {}
            for outcome in outcomes:
                if outcome.spec.arm.name != arm.name or outcome.result is None:
                    continue
                kind = outcome.spec.condition.kind
                if kind not in ("baseline", kind_shown):
                    continue
                batch = baseline_batch if kind == "baseline" else int(outcome.spec.condition.batch_size or 0)
                value = outcome.value("knn_top1_final")
                points.setdefault(batch, []).append(value if value is not None else math.nan)
            batches = sorted(points)
            for batch in batches:
                finite = [v for v in points[batch] if math.isfinite(v)]
                axis.scatter([batch] * len(finite), finite, color=color, s=14, alpha=0.5)
            stats = [summarize_seeds(points[batch]) for batch in batches]
            shown = [(b, s) for b, s in zip(batches, stats, strict=True) if s.n]
            if shown:
                xs = [b for b, _ in shown]
                means = [s.mean for _, s in shown]
                stds = [s.std if math.isfinite(s.std) else 0.0 for _, s in shown]
                label = arm.label if len(budgets) == 1 else f"{arm.label}, {budget}"
                axis.plot(xs, means, color=color, marker=marker, linestyle=linestyle, label=label,
                          markerfacecolor="none" if linestyle == "--" else color)  # fmt: skip
                _fill(axis, xs, means, stds, color)
    if axis.has_data():
        axis.set_xscale("log", base=2)
    budget_note = "same number of images seen" if len(budgets) == 1 else "solid: same images; dashed: same steps"
    axis.set_xlabel(f"batch size (images / step; {budget_note})")
    axis.set_ylabel("final teacher k-NN top-1 (%)")
    axis.set_title("batch size (band: mean +- std over seeds)")
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    return _save(plt, figure, path)


def _save(plt: Any, figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_study_outputs(
    outcomes: Sequence[RunOutcome],
    arms: Sequence[Arm],
    output_dir: Path,
    *,
    command: str,
    eval_description: str,
    collapse_rank: float,
    title: str = "Multi-seed A/B study",
) -> Path:
    """Write `study.md`, `study.json` and the plots; returns the path of `study.md`. Runs that have not
    finished are listed as 'not run' (and the command that runs them is the one in the report)."""
    rows = condition_rows(outcomes, arms)
    seeds = sorted({o.spec.seed for o in outcomes})
    missing = [o for o in outcomes if o.result is None]
    lines = [
        f"# {title}",
        "",
        f"Written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine_description()}.",
        "",
        f"Command: `{command}`",
        "",
        f"Seeds: {', '.join(map(str, seeds))} (the same for both arms). k-NN: {eval_description}, teacher CLS "
        f"features, weighted vote (k = 20, T = 0.07). A run **diverged** when a loss became NaN/inf, **collapsed** "
        f"when the effective rank of its final teacher's features is at most {collapse_rank}.",
        "",
        STATISTICS_NOTE,
        "",
    ]
    if missing:
        lines += [f"**{len(missing)} of {len(outcomes)} (condition, arm, seed) results are missing**: status 'not run' "
                  "below; rerun the command above to run them.", ""]  # fmt: skip
    lines += ["## Final teacher k-NN per condition", ""]
    kinds = [kind for kind in dict.fromkeys(row.condition.kind for row in rows) if kind != "baseline"]
    baseline_rows = [row for row in rows if row.condition.kind == "baseline"]
    if not kinds:
        lines += condition_table(rows)
    for kind in kinds:
        lines += [f"### Baseline and {kind} conditions", ""]
        lines += condition_table(baseline_rows + [row for row in rows if row.condition.kind == kind])
        changes = change_table([row for row in rows if row.condition.kind == kind])
        if changes:
            lines += ["", "Change from the same arm's baseline (paired by seed):", ""] + changes
        lines.append("")
    lines += ["", "## Baseline runs per arm (mean +- std, min to max, over seeds)", ""]
    lines += baseline_table(outcomes, arms)
    lines += ["", "## Baseline: k-NN over training", ""]
    lines += stability_table(outcomes, arms)
    plots = [
        plot_stability(outcomes, arms, output_dir / STABILITY_PNG),
        plot_conditions(outcomes, arms, output_dir / CONDITIONS_PNG),
    ]
    if any(o.spec.condition.kind.startswith("batch size") for o in outcomes):
        baseline_cfg = arms[0].config
        baseline_batch = int(baseline_cfg.train.batch_size_per_gpu) * int(baseline_cfg.train.grad_accum_steps)
        plots.append(plot_batch_sizes(outcomes, arms, output_dir / BATCH_SIZES_PNG, baseline_batch))
    lines += ["", "## Plots", ""] + [f"![{plot.stem}]({plot.name})\n" for plot in plots]
    lines += ["## Every run", ""]
    lines += runs_table(outcomes)
    lines.append("")
    report = output_dir / REPORT_FILENAME
    report.write_text("\n".join(lines))
    record = {
        "seeds": seeds,
        "conditions": [
            {
                "condition": dataclasses.asdict(row.condition),
                "final_knn": [summary.to_json() for summary in row.final_knn],
                "statuses": row.statuses,
                "reused_baseline": row.reused,
                "difference_b_minus_a": row.difference.to_json(),
                "change_from_baseline": [None if c is None else c.to_json() for c in row.change_from_baseline],
            }
            for row in rows
        ],
        "runs": [
            {
                "condition": o.spec.condition.name,
                "arm": o.spec.arm.label,
                "seed": o.spec.seed,
                "run_dir": str(output_dir / o.spec.run_name),
                "reuses_baseline": o.spec.reuses is not None,
                "result": o.result,
            }
            for o in outcomes
        ],  # fmt: skip
    }
    (output_dir / SUMMARY_FILENAME).write_text(json.dumps(record, indent=1, default=str))
    return report
