"""Multi-seed study planning and aggregation: conditions, seeds, reuse of unchanged runs, paired tables."""

import math
from pathlib import Path

import pytest

from dinov2.compare.launch import Arm
from dinov2.compare.stats import paired_difference, summarize_seeds
from dinov2.compare.study import (
    BASELINE,
    RunOutcome,
    batch_size_conditions,
    condition_rows,
    perturbation_conditions,
    plan_runs,
)
from dinov2.utils.config import ConfigError, load_config, scaled_lr

REPO = Path(__file__).resolve().parents[3]
DINOV2_DEMO = REPO / "configs" / "tiny" / "dinov2_digits.yaml"
SIMDINOV2_DEMO = REPO / "configs" / "tiny" / "simdinov2_digits_demo.yaml"


def demo_arms() -> list[Arm]:
    shared = ("student.patch_size=8", "train.seed=0")
    return [
        Arm(name="dinov2", label="DINOv2", config_file=DINOV2_DEMO, overrides=shared),
        Arm(name="simdinov2", label="SimDINOv2", config_file=SIMDINOV2_DEMO, overrides=shared),
    ]


def test_batch_sizes_keep_the_number_of_images_and_scale_the_lr_by_the_recipe_rule() -> None:
    reference = demo_arms()[0].config  # batch 64, 10 iterations per epoch, 20 epochs
    conditions = batch_size_conditions(reference, [16, 64, 128])
    assert [c.batch_size for c in conditions] == [16, 128]  # 64 is the baseline itself
    base_images = 64 * 10 * 20
    base_lr = scaled_lr(reference, world_size=1)
    for condition in conditions:
        cfg = load_config(DINOV2_DEMO, list(condition.overrides))
        steps = int(cfg.optim.epochs * cfg.train.OFFICIAL_EPOCH_LENGTH)
        assert steps * cfg.train.batch_size_per_gpu == base_images
        assert steps % cfg.evaluation.eval_period_iterations == 0
        assert scaled_lr(cfg, world_size=1) == pytest.approx(base_lr * math.sqrt(condition.batch_size / 64))
    with pytest.raises(ConfigError, match="do not split"):
        batch_size_conditions(reference, [48])


def test_same_step_batch_sizes_keep_the_number_of_steps_and_scale_the_images() -> None:
    reference = demo_arms()[0].config  # batch 64, 10 iterations per epoch, 20 epochs: 200 steps
    conditions = batch_size_conditions(reference, [48, 64, 128], same_steps=True)
    assert [(c.name, c.slug, c.kind) for c in conditions] == [
        ("batch 48, 200 steps", "batch_48_same_steps", "batch size (same steps)"),
        ("batch 128, 200 steps", "batch_128_same_steps", "batch size (same steps)"),
    ]  # 48 does not divide an epoch's images, which only matters at a fixed budget of images
    base_lr = scaled_lr(reference, world_size=1)
    for condition in conditions:
        cfg = load_config(DINOV2_DEMO, list(condition.overrides))
        steps = int(cfg.optim.epochs * cfg.train.OFFICIAL_EPOCH_LENGTH)
        assert steps == 200
        assert steps * cfg.train.batch_size_per_gpu == 200 * condition.batch_size
        assert scaled_lr(cfg, world_size=1) == pytest.approx(base_lr * math.sqrt(condition.batch_size / 64))
    same_images = batch_size_conditions(reference, [128])
    assert same_images[0].slug != conditions[1].slug  # the two budgets train into different directories
    with pytest.raises(ConfigError, match="must be positive"):
        batch_size_conditions(reference, [0], same_steps=True)


def test_plan_gives_both_arms_the_same_seeds_and_reuses_runs_a_condition_leaves_unchanged() -> None:
    arms = demo_arms()
    seeded = plan_runs(arms, [BASELINE], [0, 1])
    assert [s.run.name for s in seeded] == [
        "baseline/dinov2/seed_0", "baseline/simdinov2/seed_0", "baseline/dinov2/seed_1", "baseline/simdinov2/seed_1",
    ]  # fmt: skip
    for spec in seeded:
        assert spec.run.config.train.seed == spec.seed
        assert spec.run.overrides.count(f"train.seed={spec.seed}") == 1  # the arm's own seed is replaced
    specs = plan_runs(arms, perturbation_conditions(), [1])
    assert len(specs) == len(perturbation_conditions()) * 2
    reused = {(s.condition.name, s.arm.name) for s in specs if s.reuses is not None}
    # SimDINOv2 already uses momentum 0.9 and has no teacher softmax: those runs are its baseline runs
    assert reused == {("teacher momentum 0.9", "simdinov2"), ("fixed teacher temperature 0.07", "simdinov2")}
    for spec in specs:
        if spec.reuses is not None:
            assert spec.reuses.name == f"baseline/{spec.arm.name}/seed_1"


def outcome(spec, knn: float | None, status: str = "ok") -> RunOutcome:
    return RunOutcome(spec=spec, result={"status": status, "knn_top1_final": knn})


def test_condition_rows_pair_by_seed_and_keep_diverged_runs_in_the_statuses() -> None:
    arms = demo_arms()
    momentum = perturbation_conditions()[0]
    specs = plan_runs(arms, [BASELINE, momentum], [0, 1, 2])
    knn = {
        ("baseline", "dinov2"): [50.0, 52.0, 47.0],
        ("baseline", "simdinov2"): [60.0, 61.0, 63.0],
        ("teacher momentum 0.9", "dinov2"): [40.0, math.nan, 30.0],
        ("teacher momentum 0.9", "simdinov2"): [60.0, 61.0, 63.0],
    }
    outcomes = [
        outcome(s, knn[(s.condition.name, s.arm.name)][s.seed],
                "diverged" if math.isnan(knn[(s.condition.name, s.arm.name)][s.seed]) else "ok")
        for s in specs
    ]  # fmt: skip
    baseline, perturbed = condition_rows(outcomes, arms)
    assert baseline.final_knn[0] == summarize_seeds([50.0, 52.0, 47.0])
    assert baseline.difference == paired_difference([50.0, 52.0, 47.0], [60.0, 61.0, 63.0])
    assert baseline.difference.verdict == "B > A"
    assert perturbed.statuses[0] == ("ok", "diverged", "ok")
    assert perturbed.final_knn[0].n == 2 and perturbed.final_knn[0].n_missing == 1
    assert perturbed.difference.n == 2  # the diverged seed has no pair
    assert perturbed.reused == (False, True)
    # within-arm change, paired by seed: DINOv2 momentum 0.9 minus DINOv2 baseline over seeds 0 and 2
    assert perturbed.change_from_baseline[0] == paired_difference([50.0, 52.0, 47.0], [40.0, math.nan, 30.0])
    assert perturbed.change_from_baseline[0].mean == pytest.approx(-13.5)
    assert perturbed.change_from_baseline[1] is None  # SimDINOv2's cell is its baseline runs
    assert baseline.change_from_baseline == (None, None)
    missing = condition_rows([o for o in outcomes if o.spec.seed != 2] + [RunOutcome(spec=specs[4], result=None)], arms)
    assert missing[0].statuses[0] == ("ok", "ok", "not run")


def test_study_report_keeps_diverged_and_missing_runs_and_draws_the_band_plots(tmp_path: Path) -> None:
    from PIL import Image

    from dinov2.compare.study_report import write_study_outputs

    arms = demo_arms()
    momentum = perturbation_conditions()[0]
    batch = batch_size_conditions(arms[0].config, [32])
    same_steps = batch_size_conditions(arms[0].config, [128], same_steps=True)
    specs = plan_runs(arms, [BASELINE, momentum, *batch, *same_steps], [0, 1])

    def result(spec) -> dict | None:
        if spec.condition.name == "batch 32" and spec.seed == 1:
            return None  # not run yet
        diverged = spec.condition is momentum and spec.arm.name == "dinov2" and spec.seed == 1
        final = math.nan if diverged else 50.0 + 10 * (spec.arm.name == "simdinov2") + spec.seed
        return {
            "status": "diverged" if diverged else "ok",
            "status_reason": "non-finite loss at iteration 12" if diverged else "effective rank 9.00",
            "knn_top1_step0": 10.0,
            "knn_top1_final": final,
            "knn_over_training": [[0, 10.0], [100, final - 5], [200, final]],
            "loss_curve": [[0, 5.0], [100, 4.0 - spec.seed], [199, 3.0]],
            "effective_rank_final": 9.0,
            "cpu_seconds_per_iter": 1.25,
            "peak_memory_mb": 1200.0,
        }

    outcomes = [RunOutcome(spec=spec, result=result(spec)) for spec in specs]
    report = write_study_outputs(
        outcomes, arms, tmp_path, command="cmd", eval_description="Digits", collapse_rank=1.5
    ).read_text()
    assert "2 of 16 (condition, arm, seed) results are missing" in report
    assert "### Baseline and batch size (same steps) conditions" in report
    # DINOv2 momentum 0.9: seed 0 only (seed 1 diverged): +0.00, no interval; SimDINOv2 unchanged
    assert "| teacher momentum 0.9 | +0.00 (n=1, no interval) | cannot tell | unchanged (baseline runs) | - |" in report
    assert "| batch 128, 200 steps | 50.50 +- 0.71 (n=2) | 2 ok |" in report
    assert "| teacher momentum 0.9 | 50.00 +- n/a (n=1) | 1 ok, 1 diverged |" in report
    assert "| batch 32 | 50.00 +- n/a (n=1) | 1 ok, 1 not run |" in report
    # per-seed differences 10 and 10: a zero-width interval, which is no evidence
    assert "| baseline | 50.50 +- 0.71 (n=2) | 2 ok | 60.50 +- 0.71 (n=2) | 2 ok | +10.00 [+10.00, +10.00] | " in report
    assert "| +10.00 [+10.00, +10.00] | cannot tell |" in report
    assert "non-finite loss at iteration 12" in report  # the diverged run keeps its line and reason
    cpu_row = "| CPU seconds / iteration (training process, start-up included) | 1.25 +- 0.00 (1.25 to 1.25, n=2) |"
    assert cpu_row in report
    for png in ("study_stability.png", "study_conditions.png", "study_batch_sizes.png"):
        with Image.open(tmp_path / png) as image:
            assert image.format == "PNG" and image.size[0] > 300
