"""Overrides shared by the arms, the sweep's perturbations, and the training command."""

from pathlib import Path

import pytest

from dinov2.compare.launch import Arm, common_overrides, is_no_op, sweep_arms, train_arguments
from dinov2.utils.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[3]
DINOV2 = REPO / "configs" / "tiny" / "dinov2_test.yaml"  # OFFICIAL_EPOCH_LENGTH 2, 3 epochs, no exports
SIMDINOV2 = REPO / "configs" / "tiny" / "simdinov2_test.yaml"


def test_common_overrides_make_the_arms_equal_in_length_data_seed_and_exports() -> None:
    overrides = common_overrides(
        [DINOV2, SIMDINOV2], ["train.batch_size_per_gpu=8"], train_dataset="Digits:split=VAL", iters=8, seed=None
    )
    assert overrides == [
        "train.batch_size_per_gpu=8",
        "train.dataset_path=Digits:split=VAL",
        "optim.epochs=4",
        "evaluation.eval_period_iterations=2",  # 8 iterations, 4 exports
        "train.seed=0",
    ]
    for path in (DINOV2, SIMDINOV2):
        cfg = load_config(path, overrides)
        assert cfg.optim.epochs * cfg.train.OFFICIAL_EPOCH_LENGTH == 8
    # 10 iterations: the largest k <= 4 dividing 10 is 2, so exports after steps 5 and 10
    assert common_overrides([DINOV2], [], train_dataset=None, iters=10, seed=5) == [
        "optim.epochs=5",
        "evaluation.eval_period_iterations=5",
        "train.seed=5",
    ]
    # the user's own export period and seed win
    mine = common_overrides(
        [DINOV2], ["evaluation.eval_period_iterations=1", "train.seed=7"], train_dataset=None, iters=None, seed=None
    )
    assert mine == ["evaluation.eval_period_iterations=1", "train.seed=7"]


def test_common_overrides_errors_name_the_fix(tmp_path) -> None:
    with pytest.raises(ConfigError, match="multiple of train.OFFICIAL_EPOCH_LENGTH=2"):
        common_overrides([DINOV2], [], train_dataset=None, iters=3, seed=None)
    with pytest.raises(ConfigError, match="either as --iters or as optim.epochs="):
        common_overrides([DINOV2], ["optim.epochs=2"], train_dataset=None, iters=4, seed=None)
    with pytest.raises(ConfigError, match="either as --train-dataset or as train.dataset_path="):
        common_overrides([DINOV2], ["train.dataset_path=X"], train_dataset="Y", iters=None, seed=None)
    longer_epochs = tmp_path / "epoch_5.yaml"
    longer_epochs.write_text("train:\n  OFFICIAL_EPOCH_LENGTH: 5\n")
    with pytest.raises(ConfigError, match=r"shared by the arms, got \[2, 5\]"):
        common_overrides([DINOV2, longer_epochs], [], train_dataset=None, iters=10, seed=None)


def test_sweep_perturbs_each_arm_and_spots_no_ops(tmp_path) -> None:
    arms = [
        Arm(name="a", label="DINOv2", config_file=DINOV2, overrides=("train.seed=0",)),
        Arm(name="b", label="SimDINOv2", config_file=SIMDINOV2, overrides=("train.seed=0",)),
    ]
    sweep = sweep_arms(arms)
    assert [(base.name, name) for base, name, _ in sweep] == [
        (arm, name)
        for arm in ("a", "b")
        for name in (
            "teacher momentum 0.9",
            "no last-layer normalization",
            "fixed teacher temperature 0.07",
            "no self-distillation (teacher momentum 0)",
        )
    ]
    configs = {(base.name, name): arm.config for base, name, arm in sweep}
    assert configs["a", "teacher momentum 0.9"].teacher.momentum_teacher == 0.9
    assert configs["b", "no last-layer normalization"].dino.head_normalize is False
    fixed = configs["a", "fixed teacher temperature 0.07"].teacher
    assert fixed.warmup_teacher_temp == fixed.teacher_temp == 0.07
    assert all(arm.config.train.seed == 0 for _, _, arm in sweep)
    no_ops = {(base.name, name) for base, name, arm in sweep if is_no_op(base, arm)}
    # SimDINOv2's recipe already starts the EMA at 0.9, and it has no teacher softmax to take a temperature
    assert no_ops == {("b", "teacher momentum 0.9"), ("b", "fixed teacher temperature 0.07")}
    no_ema = configs["b", "no self-distillation (teacher momentum 0)"].teacher
    assert no_ema.momentum_teacher == no_ema.final_momentum_teacher == 0
    _, _, perturbed = sweep[0]
    assert train_arguments(perturbed, tmp_path) == [
        "--config-file",
        str(DINOV2),
        "--output-dir",
        str(tmp_path / "sweep" / "a_1"),
        "train.seed=0",
        "teacher.momentum_teacher=0.9",
    ]
