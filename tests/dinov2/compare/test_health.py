"""Collapse and divergence detection on real teacher exports and real Digits features."""

import json
import math
import os

import pytest
import torch
from synthetic_runs import constant_features, metrics_record, unchanged, write_run

from dinov2.compare.collect import collect_run
from dinov2.compare.features import coding_rate, make_eval_data
from dinov2.compare.health import assess_run
from dinov2.compare.runs import load_run


@pytest.fixture(scope="module")
def digits_16px():
    return make_eval_data("Digits:split=TRAIN", "Digits:split=VAL", resize_size=16, crop_size=16)


def collect(run_dir, data):
    return collect_run(
        run_dir,
        run_dir.name,
        data,
        device=torch.device("cpu"),
        meta_arch_factory=None,
        coding_rate_eps=0.05,
        collapse_rank=1.5,
    )


def test_constant_teacher_features_are_flagged_as_collapsed(tmp_path, digits_16px) -> None:
    records = [metrics_record(i, total_loss=1.0 - 0.1 * i) for i in range(2)]
    collapsed = collect(
        write_run(tmp_path / "collapsed", records=records, exports={1: constant_features}),
        digits_16px,
    )
    assert collapsed.health.status == "collapsed", collapsed.health
    assert collapsed.final.effective_rank == pytest.approx(1.0, abs=1e-3)
    assert "--collapse-rank" in collapsed.health.reason
    # all images share one feature: k-NN can only vote for one class, the coding rate is that of one vector
    assert collapsed.final.coding_rate == pytest.approx(0.5 * math.log(1 + 192 / 0.05), rel=1e-3)

    healthy = collect(
        write_run(tmp_path / "healthy", records=records, exports={1: unchanged}),
        digits_16px,
    )
    assert healthy.health.status == "ok", healthy.health
    assert healthy.final.effective_rank > 3.0
    assert healthy.final.knn_top1 > 30.0  # a random ViT already separates digits (chance: 10 %)
    # the evaluation is stored in the run and reused while the export is unchanged ...
    stored = healthy.run.run_dir / "eval" / "compare" / "step_2.json"
    record = json.loads(stored.read_text())
    record["evaluation"]["knn_top1"] = -1.0
    stored.write_text(json.dumps(record))
    assert collect(healthy.run.run_dir, digits_16px).final.knn_top1 == -1.0
    # ... and recomputed when the export changes
    export = healthy.run.run_dir / "eval" / "training_1" / "teacher_checkpoint.pth"
    os.utime(export, ns=(export.stat().st_atime_ns, export.stat().st_mtime_ns + 10**9))
    assert collect(healthy.run.run_dir, digits_16px).final.knn_top1 == healthy.final.knn_top1


def test_nan_loss_is_divergence(tmp_path) -> None:
    records = [metrics_record(0, total_loss=2.0, dino_local_crops_loss=1.0)]
    records.append(metrics_record(10, total_loss=math.nan, dino_local_crops_loss=math.inf))
    run = load_run(write_run(tmp_path / "nan", records=records), "nan")
    health = assess_run(run, final_effective_rank=50.0)
    assert health.status == "diverged"
    assert "dino_local_crops_loss non-finite at iteration 10" in health.reason
    assert "total_loss non-finite at iteration 10" in health.reason

    stopped = load_run(
        write_run(tmp_path / "stopped", log_lines=["NonFiniteLossError: non-finite loss at iteration 3: ..."]), "s"
    )
    assert assess_run(stopped, final_effective_rank=None, failure="exit code 1").status == "diverged"
    assert assess_run(load_run(tmp_path / "nan", "x"), final_effective_rank=None).status == "diverged"


def nan_weights(model: torch.nn.Module) -> None:
    with torch.no_grad():
        model.cls_token.fill_(math.nan)


def test_nan_teacher_is_divergence_even_with_finite_logged_losses(tmp_path, digits_16px) -> None:
    run_dir = write_run(tmp_path / "nan_teacher", records=[metrics_record(0, total_loss=1.0)], exports={0: nan_weights})
    result = collect(run_dir, digits_16px)
    assert result.health.status == "diverged", result.health
    assert "not finite" in result.health.reason
    assert math.isnan(result.final.knn_top1)


def test_failures_and_threshold(tmp_path) -> None:
    run = load_run(write_run(tmp_path / "ok", records=[metrics_record(0, total_loss=1.0)]), "ok")
    assert assess_run(run, final_effective_rank=1.4).status == "collapsed"
    assert assess_run(run, final_effective_rank=1.4, collapse_rank=1.2).status == "ok"
    failed = assess_run(run, final_effective_rank=None, failure="ValueError: bad key")
    assert (failed.status, failed.reason) == ("failed", "ValueError: bad key")
    with pytest.raises(ValueError, match="collapse_rank=0.5 must be >= 1"):
        assess_run(run, final_effective_rank=3.0, collapse_rank=0.5)


def test_coding_rate_closed_forms() -> None:
    d, n, eps = 8, 16, 0.5
    assert coding_rate(torch.zeros(n, d), eps) == 0.0
    # Z^T Z = (n / d) I: R = d / 2 log(1 + 1 / eps)
    orthogonal = torch.eye(d).repeat(n // d, 1)
    assert coding_rate(orthogonal, eps) == pytest.approx(d / 2 * math.log(1 + 1 / eps))
    # n identical unit rows: R = 1/2 log(1 + d / eps)
    same = torch.nn.functional.normalize(torch.ones(n, d), dim=1)
    assert coding_rate(same, eps) == pytest.approx(0.5 * math.log(1 + d / eps))
    with pytest.raises(ValueError, match="eps=0"):
        coding_rate(same, 0)
