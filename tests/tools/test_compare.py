"""tools/compare.py end to end on Digits: two real tiny trainings, the report, the plots and its numbers."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from dinov2.compare.features import initial_teacher
from dinov2.compare.report import FINAL_ROWS, format_value
from dinov2.compare.runs import read_metrics
from dinov2.utils.checkpoint import load_backbone_state_dict
from dinov2.utils.config import load_config
from simdinov2.train.build import build_meta_arch

REPO = Path(__file__).resolve().parents[2]
DINOV2 = REPO / "configs" / "tiny" / "dinov2_test.yaml"
SIMDINOV2 = REPO / "configs" / "tiny" / "simdinov2_test.yaml"


def run_tool(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def flat_leaves(node, prefix=""):
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flat_leaves(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


@pytest.fixture(scope="module")
def comparison(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("ab")
    result = run_tool(
        "tools/compare.py", "--a", str(DINOV2), "--b", str(SIMDINOV2), "--output-dir", str(output), "--iters", "2",
        "evaluation.eval_period_iterations=2",
    )  # fmt: skip
    assert f"report: {output / 'report.md'}" in result.stdout
    assert "[dinov2_test] " in result.stdout and "Training [1/2]" in result.stdout  # training progress shown
    return output


def test_report_plots_and_table_equal_the_runs_own_files(comparison: Path) -> None:
    report = (comparison / "report.md").read_text()
    for png in ("losses.png", "knn.png", "features.png", "throughput.png"):
        with Image.open(comparison / png) as image:
            assert image.format == "PNG" and image.size[0] > 300
        assert f"]({png})" in report
    summary = json.loads((comparison / "summary.json").read_text())
    for arm, name in zip(summary["arms"], ("a", "b"), strict=True):
        run_dir = comparison / name
        records = read_metrics(run_dir / "training_metrics.json")
        log = (run_dir / "logs" / "log.txt").read_text()
        seconds_per_iter = float(re.findall(r"total time: \S+ \(([\d.]+) s / it\)", log)[-1])
        final_eval = json.loads((run_dir / "eval" / "compare" / "step_2.json").read_text())["evaluation"]
        initial_eval = json.loads((run_dir / "eval" / "compare" / "step_0.json").read_text())["evaluation"]
        assert arm["final_total_loss"] == records[-1]["last"]["total_loss"]
        assert arm["iterations"] == records[-1]["iteration"] + 1 == 2
        assert arm["seconds_per_iter"] == seconds_per_iter
        assert arm["images_per_second"] == pytest.approx(4 / seconds_per_iter)  # batch 4, one process
        assert arm["peak_memory_mb"] == max(float(m) for m in re.findall(r"max mem: (\d+) MB", log))
        assert arm["knn_top1_final"] == final_eval["knn_top1"] == final_eval["knn"]["('full', 20) Top 1"]
        assert arm["knn_top1_step0"] == initial_eval["knn_top1"]
        assert arm["effective_rank_final"] == final_eval["effective_rank"]
        assert arm["status"] == "ok"
        assert all(title in report for _, title, _ in FINAL_ROWS)  # the markdown table shows these numbers
        row = next(line for line in report.splitlines() if line.startswith("| total loss at the last iteration"))
        assert format_value(arm["final_total_loss"], "{:.4f}") in row
    # same seed and backbone: both arms start from the same random teacher
    assert summary["arms"][0]["knn_top1_step0"] == summary["arms"][1]["knn_top1_step0"]
    # each arm trained its own objective
    assert "dino_mcr_loss" in (comparison / "b" / "training_metrics.json").read_text()
    assert "dino_mcr_loss" not in (comparison / "a" / "training_metrics.json").read_text()


def test_report_lists_exactly_the_differing_config_keys(comparison: Path) -> None:
    flat_a = flat_leaves(OmegaConf.to_container(OmegaConf.load(comparison / "a" / "config.yaml")))
    flat_b = flat_leaves(OmegaConf.to_container(OmegaConf.load(comparison / "b" / "config.yaml")))
    expected = {key for key in flat_a if flat_a[key] != flat_b[key]} - {"train.output_dir"}
    assert {"dino.use_mcr", "train.centering", "dino.koleo_loss_weight"} <= expected
    assert "train.seed" not in expected and "optim.epochs" not in expected  # overrides applied to both arms
    report = (comparison / "report.md").read_text()
    section = report.split("## Config differences")[1].split("## Final table")[0]
    listed = set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE))
    assert listed == expected
    assert f"({len(expected)} keys;" in section
    summary = json.loads((comparison / "summary.json").read_text())
    assert {d["key"] for d in summary["config_differences"]} == expected


def test_runs_mode_collects_finished_runs_with_the_cached_numbers(comparison: Path, tmp_path: Path) -> None:
    run_tool("tools/compare.py", "--runs", str(comparison / "a"), str(comparison / "b"), "--output-dir", str(tmp_path))
    original = json.loads((comparison / "summary.json").read_text())["arms"]
    collected = json.loads((tmp_path / "summary.json").read_text())["arms"]
    for before, after in zip(original, collected, strict=True):
        for key in ("knn_top1_step0", "knn_top1_final", "final_total_loss", "peak_memory_mb", "images_per_second"):
            assert after[key] == before[key], key
    assert (tmp_path / "report.md").is_file()


def test_initial_teacher_is_the_teacher_the_run_started_from(tmp_path: Path) -> None:
    # lr 0 everywhere: after one step the teacher export still holds the initial weights
    run_dir = tmp_path / "run"
    frozen = ["optim.base_lr=0", "optim.min_lr=0", "optim.warmup_start_lr=0", "optim.epochs=1"]
    frozen += ["train.OFFICIAL_EPOCH_LENGTH=1", "optim.warmup_epochs=0", "evaluation.eval_period_iterations=1"]
    frozen += ["teacher.warmup_teacher_temp_epochs=0", "train.seed=3"]
    run_tool("tools/train.py", "--config-file", str(SIMDINOV2), "--output-dir", str(run_dir), *frozen)
    exported = load_backbone_state_dict(run_dir / "eval" / "training_0" / "teacher_checkpoint.pth")
    rebuilt = initial_teacher(load_config(run_dir / "config.yaml"), build_meta_arch).state_dict()
    assert set(exported) == set(rebuilt)
    for key, value in rebuilt.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=1e-7, msg=key)
    other_seed = initial_teacher(load_config(run_dir / "config.yaml", ["train.seed=4"]), build_meta_arch)
    assert not torch.equal(other_seed.state_dict()["cls_token"], rebuilt["cls_token"])


def test_seeds_train_both_arms_with_the_same_seeds_and_report_paired_statistics(tmp_path: Path) -> None:
    output = tmp_path / "seeds"
    args = ["tools/compare.py", "--a", str(DINOV2), "--b", str(SIMDINOV2), "--output-dir", str(output)]
    args += ["--iters", "2", "--seeds", "2", "--seed", "5", "--parallel", "evaluation.eval_period_iterations=2"]
    result = run_tool(*args)
    assert f"report: {output / 'study.md'}" in result.stdout
    study = json.loads((output / "study.json").read_text())
    assert study["seeds"] == [5, 6]
    knn: dict[tuple[str, int], float] = {}
    start_knn: dict[tuple[str, int], float] = {}
    for name in ("a", "b"):
        for seed in (5, 6):
            run_dir = output / "baseline" / name / f"seed_{seed}"
            assert load_config(run_dir / "config.yaml").train.seed == seed
            evaluation = json.loads((run_dir / "eval" / "compare" / "step_2.json").read_text())["evaluation"]
            knn[(name, seed)] = evaluation["knn_top1"]
            start_knn[(name, seed)] = json.loads((run_dir / "eval" / "compare" / "step_0.json").read_text())[
                "evaluation"
            ]["knn_top1"]
    # the same seed gives both arms the same random-init teacher; another seed another one
    assert start_knn[("a", 5)] == start_knn[("b", 5)] and start_knn[("a", 6)] == start_knn[("b", 6)]
    assert start_knn[("a", 5)] != start_knn[("a", 6)]
    (row,) = study["conditions"]
    for index, name in enumerate(("a", "b")):
        values = [knn[(name, 5)], knn[(name, 6)]]
        assert row["final_knn"][index]["mean"] == pytest.approx(sum(values) / 2)
        assert row["final_knn"][index]["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    differences = [knn[("b", seed)] - knn[("a", seed)] for seed in (5, 6)]
    difference = row["difference_b_minus_a"]
    assert difference["mean"] == pytest.approx(sum(differences) / 2)
    half = 12.706204736174707 * (abs(differences[0] - differences[1]) / 2**0.5) / 2**0.5  # t(0.975, 1)
    assert (difference["low"], difference["high"]) == (
        pytest.approx(difference["mean"] - half), pytest.approx(difference["mean"] + half)
    )  # fmt: skip
    report = (output / "study.md").read_text()
    assert "95 % Student t-interval" in report and "| baseline |" in report
    for png in ("study_stability.png", "study_conditions.png"):
        with Image.open(output / png) as image:
            assert image.format == "PNG" and image.size[0] > 300
        assert f"]({png})" in report
    # a second call finds every run finished: nothing is trained again, the numbers are the same
    again = run_tool(*args)
    assert "tools/train.py" not in again.stdout and "4 / 4 runs finished" in again.stdout
    assert json.loads((output / "study.json").read_text())["conditions"] == study["conditions"]
