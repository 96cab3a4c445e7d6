"""report.md / summary.json of evaluated runs: final table, linear results, sweep table, NaN display."""

import json
import math

from synthetic_runs import metrics_record, write_run

from dinov2.compare.collect import ArmResult, read_linear_result
from dinov2.compare.features import FeatureEvaluation
from dinov2.compare.health import Health
from dinov2.compare.report import SweepEntry, write_report
from dinov2.compare.runs import config_differences, load_run

LOG = [
    "I... dinov2.train.train] run: RunContext(device=device(type='cpu'), world_size=1, rank=0, lr=0.1)",
    "I... Training [1/2]  eta: 0:00:00  it/s: 2.00  total_loss: 1.0  max mem: 700 MB",
    "I... Training total time: 0:00:01 (0.5000 s / it)",
]


def evaluation(knn: float, rank: float) -> FeatureEvaluation:
    return FeatureEvaluation(knn={"('full', 20) Top 1": knn}, knn_top1=knn, effective_rank=rank, coding_rate=rank * 2)


def arm(run_dir, label, evaluations, health: Health | None = None) -> ArmResult:
    run = load_run(run_dir, label)
    return ArmResult(
        label=label,
        run=run,
        evaluations=evaluations,
        health=health or Health("ok", "fine"),
        linear_top1=read_linear_result(run),
        source=label,
    )


def test_report_tables_linear_results_and_sweep(tmp_path) -> None:
    records = [metrics_record(0, total_loss=3.0), metrics_record(1, total_loss=2.5)]
    run_a = write_run(tmp_path / "a", records=records, log_lines=LOG)
    changed = ("student.layerscale=1.0", "teacher.momentum_teacher=0.9")
    run_b = write_run(tmp_path / "b", overrides=changed, records=records, log_lines=LOG)
    linear_dir = run_b / "eval" / "training_1" / "linear"
    linear_dir.mkdir(parents=True)
    (linear_dir / "results_eval_linear.json").write_text(
        json.dumps({"iter": 10, "best_classifier": {"name": "x", "accuracy": 71.5}}) + "\n"
        + json.dumps({"iter": 20, "best_classifier": {"name": "y", "accuracy": 73.25}}) + "\n"
    )  # fmt: skip
    a = arm(run_a, "A", [(0, evaluation(10.0, 1.0)), (2, evaluation(55.5, 9.0))])
    b = arm(run_b, "B", [(0, evaluation(40.0, 5.0)), (2, evaluation(math.nan, math.nan))])
    assert (a.linear_top1, b.linear_top1) == (None, 73.25)  # the latest record of the file
    failed_sweep = SweepEntry(base_label="A", perturbation="p", result=None, no_op=False, failure="ValueError: no")
    collapsed = arm(run_b, "B, p", [(2, evaluation(12.0, 1.0))], Health("collapsed", "effective rank 1.000"))
    sweep = [failed_sweep, SweepEntry(base_label="B", perturbation="p", result=collapsed, no_op=True, failure=None)]
    write_report(
        tmp_path,
        [a, b],
        config_differences(a.run.config, b.run.config),
        command="python tools/compare.py ...",
        eval_description="Digits",
        sweep=sweep,
    )
    report = (tmp_path / "report.md").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "| `teacher.momentum_teacher` | `0.992` | `0.9` |" in report
    assert "| k-NN top-1 (%), final teacher | 55.50 | NaN |" in report
    assert "| linear top-1 (%), if run | - | 73.25 |" in report
    assert "| images / s | 8.00 | 8.00 |" in report  # batch 4 / 0.5 s
    assert "| peak memory (MB) | 700 | 700 |" in report
    assert "| total loss at the last iteration | 2.5000 | 2.5000 |" in report  # `last`, not the median
    assert "| training time (s) | 1.0 | 1.0 |" in report
    assert "| 2 | 55.50 | NaN |" in report  # k-NN over training
    assert "| A | p | failed | - | - | ValueError: no |" in report
    assert "| B | p | collapsed | 12.00 | 1.00 | effective rank 1.000 (the perturbation does not change" in report
    assert summary["arms"][0]["knn_over_training"] == [[0, 10.0], [2, 55.5]]
    assert [entry["status"] for entry in summary["sweep"]] == ["failed", "collapsed"]
    assert summary["config_differences"] == [{"key": "teacher.momentum_teacher", "a": 0.992, "b": 0.9}]
