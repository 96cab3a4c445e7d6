"""Reading run directories and listing config differences."""

import json
import math

import pytest
from omegaconf import OmegaConf
from synthetic_runs import TEST_CONFIG, metrics_record, unchanged, write_run

from dinov2.compare.runs import (
    config_differences,
    final_metric,
    list_exports,
    load_run,
    metric_names,
    metric_series,
    read_log_summary,
    read_metrics,
)
from dinov2.utils.config import load_config

LOG_LINES = [
    "I20261126 05:49:20 1 dinov2.train.train train.py:441] run: RunContext(device=device(type='cpu'), world_size=2, "
    "rank=0, lr=0.0005, epoch_length=2, max_iter=4)",
    "I20261126 05:49:24 1 dinov2.logging.helpers helpers.py:161] Training [0/4]  eta: 0:00:01  it/s: 1.42  "
    "total_loss: 7.0 (7.0)  time: 0.7  data: 0.07  max mem: 836 MB",
    "I20261126 05:49:25 1 dinov2.logging.helpers helpers.py:161] Training [3/4]  eta: 0:00:00  it/s: 1.38  "
    "total_loss: 6.3 (6.5)  time: 0.7  data: 0.07  max mem: 912 MB",
    "I20261126 05:49:25 1 dinov2.logging.helpers helpers.py:178] Training total time: 0:00:04 (0.7443 s / it)",
    "I20261126 05:49:29 1 dinov2.logging.helpers helpers.py:178] Training total time: 0:00:00 (0.0000 s / it)",
]


def test_metrics_series_use_exact_values_and_tolerate_nan(tmp_path) -> None:
    records = [
        metrics_record(0, total_loss=5.0, koleo_loss=1.0, teacher_cls_effective_rank=3.0),
        metrics_record(1, total_loss=4.0, koleo_loss=0.5),
        metrics_record(3, total_loss=math.nan, koleo_loss=0.25),
    ]
    path = tmp_path / "training_metrics.json"
    path.write_text("".join(json.dumps(record) + "\n" for record in records) + '{"iteration": 4, "tot')
    read = read_metrics(path)  # the truncated last line is skipped
    assert [record["iteration"] for record in read] == [0, 1, 3]
    assert metric_names(read) == ["total_loss", "koleo_loss", "teacher_cls_effective_rank"]
    steps, values = metric_series(read, "total_loss")
    assert steps == [0, 1, 3] and values[:2] == [5.0, 4.0] and math.isnan(values[2])
    assert metric_series(read, "teacher_cls_effective_rank") == ([0], [3.0])
    assert final_metric(read, "koleo_loss") == 0.25  # `last`, not the window median (1000.25)
    assert final_metric(read, "missing") is None


def test_corrupt_metrics_line_in_the_middle_is_an_error(tmp_path) -> None:
    path = tmp_path / "training_metrics.json"
    path.write_text('{"iteration": 0}\nnot json\n{"iteration": 1}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_metrics(path)


def test_log_summary_and_exports(tmp_path) -> None:
    run_dir = write_run(
        tmp_path / "run",
        records=[metrics_record(i, total_loss=1.0, current_batch_size=4.0) for i in range(4)],
        log_lines=LOG_LINES,
        exports={1: unchanged, 3: unchanged},
    )
    (run_dir / "eval" / "manual_7").mkdir()  # not a periodic export
    summary = read_log_summary(run_dir)
    assert summary.seconds_per_iter == 0.7443 and summary.peak_memory_mb == 912.0
    assert summary.non_finite_iteration is None
    assert [step for step, _ in list_exports(run_dir)] == [2, 4]
    run = load_run(run_dir, "A")
    assert run.last_iteration == 3 and run.log.world_size == 2 and run.global_batch_size == 8
    assert run.images_per_second == pytest.approx(8 / 0.7443)


def test_non_finite_error_is_read_from_the_log(tmp_path) -> None:
    run_dir = write_run(
        tmp_path / "run",
        log_lines=["E... dinov2.train.train] NonFiniteLossError: non-finite loss at iteration 17: total_loss=nan"],
    )
    assert read_log_summary(run_dir).non_finite_iteration == 17


def test_config_differences_name_exactly_the_changed_keys(tmp_path) -> None:
    base = load_config(TEST_CONFIG, ["train.output_dir=/x/a"])
    changed = load_config(
        TEST_CONFIG,
        [
            "train.output_dir=/x/b",  # always differs between two runs: left out
            "teacher.momentum_teacher=0.9",
            "dino.head_normalize=false",
            "crops.global_crops_scale=[0.5,1.0]",
            "dino.mcr.eps=0.05",  # the default: no difference
            "student.num_register_tokens=0",  # also the default
        ],
    )
    differences = config_differences(base, changed)
    assert [d.key for d in differences] == [
        "crops.global_crops_scale",
        "dino.head_normalize",
        "teacher.momentum_teacher",
    ]
    by_key = {d.key: (d.a, d.b) for d in differences}
    assert by_key["dino.head_normalize"] == (True, False)
    assert by_key["crops.global_crops_scale"] == ([0.4, 1.0], [0.5, 1.0])
    assert config_differences(base, base) == []
    # int vs float of the same value is no difference; bool vs int is
    a = OmegaConf.create({"x": 1, "y": True, "z": {"w": 2}})
    b = OmegaConf.create({"x": 1.0, "y": 1, "z": {"v": 2}})
    assert [(d.key, d.a, d.b) for d in config_differences(a, b)] == [
        ("y", True, 1),
        ("z.v", "<absent>", 2),
        ("z.w", 2, "<absent>"),
    ]
