"""`report.md` and `summary.json` of an A/B comparison.

Every number of the final table comes from the runs' own files: the loss from `training_metrics.json`
(exact value at the last logged iteration), time and memory from `logs/log.txt`, the k-NN accuracy,
effective rank and coding rate from the evaluations stored in the run (`<run>/eval/compare/step_<n>.json`).
`summary.json` holds the same numbers unrounded.
"""

import dataclasses
import datetime
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Sequence

import torch

from dinov2.compare.collect import ArmResult
from dinov2.compare.health import DEFAULT_COLLAPSE_RANK
from dinov2.compare.plots import FEATURES_PNG, KNN_PNG, LOSSES_PNG, THROUGHPUT_PNG
from dinov2.compare.runs import IGNORED_CONFIG_KEYS, ConfigDifference, final_metric

REPORT_FILENAME = "report.md"
SUMMARY_FILENAME = "summary.json"

# (summary key, row title, format) of the final table, in display order.
FINAL_ROWS: tuple[tuple[str, str, str], ...] = (
    ("knn_top1_step0", "k-NN top-1 (%), random-init teacher (step 0)", "{:.2f}"),
    ("knn_top1_final", "k-NN top-1 (%), final teacher", "{:.2f}"),
    ("linear_top1", "linear top-1 (%), if run", "{:.2f}"),
    ("effective_rank_final", "effective rank of the final teacher features", "{:.2f}"),
    ("coding_rate_final", "coding rate of the final teacher features", "{:.2f}"),
    ("final_total_loss", "total loss at the last iteration", "{:.4f}"),
    ("iterations", "iterations", "{:d}"),
    ("training_seconds", "training time (s)", "{:.1f}"),
    ("seconds_per_iter", "seconds / iteration", "{:.4f}"),
    ("images_per_second", "images / s", "{:.2f}"),
    ("peak_memory_mb", "peak memory (MB)", "{:.0f}"),
    ("status", "status", "{}"),
)


def summarize(result: ArmResult) -> dict[str, Any]:
    """The final-table numbers of one arm (None where the run has no such number)."""
    run = result.run
    iterations = run.last_iteration + 1 if run.last_iteration is not None else None
    seconds = run.log.seconds_per_iter
    initial, final = result.initial, result.final
    return {
        "label": result.label,
        "run_dir": str(run.run_dir),
        "knn_top1_step0": initial.knn_top1 if initial is not None else None,
        "knn_top1_final": final.knn_top1 if final is not None and result.evaluations[-1][0] > 0 else None,
        "final_step": result.evaluations[-1][0] if result.evaluations else None,
        "linear_top1": result.linear_top1,
        "effective_rank_final": final.effective_rank if final is not None else None,
        "coding_rate_final": final.coding_rate if final is not None else None,
        "final_total_loss": final_metric(run.records, "total_loss"),
        "iterations": iterations,
        "training_seconds": seconds * iterations if seconds is not None and iterations is not None else None,
        "seconds_per_iter": seconds,
        "images_per_second": run.images_per_second,
        "peak_memory_mb": run.log.peak_memory_mb,
        "status": result.health.status,
        "status_reason": result.health.reason,
        "knn_over_training": [[step, evaluation.knn_top1] for step, evaluation in result.evaluations],
    }


def format_value(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return fmt.format(value)


def machine_description() -> str:
    """e.g. '2-core x86_64 CPU, no GPU, torch 2.14.1'."""
    cores = os.cpu_count()
    if torch.cuda.is_available():
        gpus = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    else:
        gpus = "no GPU"
    return f"{cores}-core {platform.machine()} CPU, {gpus}, torch {torch.__version__}"


def _markdown_value(value: Any) -> str:
    return f"`{json.dumps(value)}`" if not isinstance(value, str) else f"`{value}`"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


@dataclasses.dataclass(frozen=True)
class SweepEntry:
    base_label: str
    perturbation: str
    result: ArmResult | None  # None when the run left no config (it failed before writing it)
    no_op: bool  # the perturbation does not change what this arm computes (`launch.is_no_op`)
    failure: str | None


def write_report(
    output_dir: Path,
    results: Sequence[ArmResult],
    differences: Sequence[ConfigDifference],
    *,
    command: str,
    eval_description: str,
    collapse_rank: float = DEFAULT_COLLAPSE_RANK,
    sweep: Sequence[SweepEntry] = (),
    extra_images: Sequence[tuple[str, Path]] = (),
) -> Path:
    """Write `report.md` and `summary.json` into `output_dir` (plots are expected there already)."""
    summaries = [summarize(result) for result in results]
    labels = [result.label for result in results]
    lines = [
        f"# A/B report: {' vs '.join(labels)}",
        "",
        f"Written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine_description()}.",
        "",
        f"Command: `{command}`",
        "",
        "## Arms",
        "",
    ]
    lines += _table(
        ["arm", "config", "run directory"],
        [[result.label, f"`{result.source}`", f"`{result.run.run_dir}`"] for result in results],
    )
    ignored = ", ".join(f"`{key}`" for key in IGNORED_CONFIG_KEYS)
    lines += [
        "",
        f"## Config differences ({len(differences)} keys; {ignored} left out)",
        "",
    ]
    if differences:
        lines += _table(
            ["key", *labels],
            [[f"`{d.key}`", _markdown_value(d.a), _markdown_value(d.b)] for d in differences],
        )
    else:
        lines.append("The two configs are identical.")
    lines += ["", "## Final table", "", f"k-NN: {eval_description}, weighted vote (k = 20, T = 0.07).", ""]
    lines += _table(
        ["", *labels],
        [[title, *(format_value(summary[key], fmt) for summary in summaries)] for key, title, fmt in FINAL_ROWS],
    )
    all_steps = sorted({step for result in results for step, _ in result.evaluations})
    if all_steps:
        lines += ["", "## Teacher k-NN top-1 (%) over training", ""]
        by_step = [dict(summary["knn_over_training"]) for summary in summaries]
        lines += _table(
            ["steps", *labels],
            [[str(step), *(format_value(values.get(step), "{:.2f}") for values in by_step)] for step in all_steps],
        )
    lines += [
        "",
        "## Plots",
        "",
        f"![loss terms]({LOSSES_PNG})",
        "",
        f"![k-NN over training]({KNN_PNG})",
        "",
        f"![coding rate and effective rank]({FEATURES_PNG})",
        "",
        f"![images/s and peak memory]({THROUGHPUT_PNG})",
    ]
    for title, image in extra_images:
        lines += ["", f"![{title}]({os.path.relpath(image, output_dir)})"]
    lines += [
        "",
        "## Divergence and collapse",
        "",
        f"A run **diverged** when its loss became NaN/inf; it **collapsed** when the effective rank of its final "
        f"teacher's features is at most {collapse_rank} (`--collapse-rank`; 1 = every image has the same feature "
        "direction).",
        "",
    ]
    lines += _table(["arm", "status", "why"], [[s["label"], s["status"], s["status_reason"]] for s in summaries])
    sweep_summaries = []
    if sweep:
        lines += [
            "",
            "## Robustness sweep (the paper's Table 5 in miniature)",
            "",
        ]
        rows = []
        for entry in sweep:
            summary = summarize(entry.result) if entry.result is not None else None
            status = summary["status"] if summary is not None else "failed"
            reason = summary["status_reason"] if summary is not None else (entry.failure or "no run directory")
            if entry.no_op:
                reason += " (the perturbation does not change what this arm computes)"
            rows.append(
                [
                    entry.base_label,
                    entry.perturbation,
                    status,
                    format_value(summary["knn_top1_final"] if summary else None, "{:.2f}"),
                    format_value(summary["effective_rank_final"] if summary else None, "{:.2f}"),
                    reason,
                ]
            )
            sweep_summaries.append(
                {"arm": entry.base_label, "perturbation": entry.perturbation, "no_op": entry.no_op, **(summary or {})}
                | ({"status": "failed", "status_reason": reason} if summary is None else {})
            )
        lines += _table(["arm", "perturbation", "status", "final k-NN top-1", "effective rank", "why"], rows)
    lines.append("")
    report_path = output_dir / REPORT_FILENAME
    report_path.write_text("\n".join(lines))
    summary_record = {
        "arms": summaries,
        "config_differences": [dataclasses.asdict(d) for d in differences],
        "sweep": sweep_summaries,
        "collapse_rank": collapse_rank,
    }
    (output_dir / SUMMARY_FILENAME).write_text(json.dumps(summary_record, indent=1, default=str))
    return report_path
