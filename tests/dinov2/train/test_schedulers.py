import math

import pytest

from dinov2.train.schedulers import CosineScheduler
from dinov2.train.train import build_schedulers
from dinov2.utils.config import load_config


def test_warmup_includes_its_endpoint_and_cosine_follows():
    sched = CosineScheduler(base_value=1.0, final_value=0.1, total_iters=10, warmup_iters=4, start_warmup_value=0.0)
    assert [sched[i] for i in range(4)] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    # cosine part over n = 6 iterations: i = 0 is base, never reaches final inside the range
    assert sched[4] == pytest.approx(1.0)
    assert sched[5] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 6)))
    assert sched[9] > 0.1
    assert sched[10] == 0.1 and sched[10_000] == 0.1


def test_freeze_iters_are_zero_then_warmup():
    sched = CosineScheduler(base_value=2.0, final_value=2.0, total_iters=6, warmup_iters=2, freeze_iters=3)
    assert [sched[i] for i in range(6)] == pytest.approx([0, 0, 0, 0, 2, 2])


def test_too_long_warmup_names_the_keys():
    with pytest.raises(ValueError, match="optim.warmup_epochs"):
        CosineScheduler(base_value=1, final_value=0, total_iters=3, warmup_iters=4)


def test_official_schedules_at_given_iterations():
    # Default recipe, E = 1250: lr warm-up 12,500 its from optim.warmup_start_lr, teacher temp 0.04 -> 0.07
    # over 37,500 its (linspace, inclusive), last layer frozen for 1250 its.
    cfg = load_config(None)
    lr = 0.004
    s = build_schedulers(cfg, lr=lr, epoch_length=1250)
    assert s.lr[0] == 0.0
    assert s.lr[6250] == pytest.approx(lr * 6250 / 12499)
    assert s.lr[12499] == pytest.approx(lr)  # inclusive warm-up endpoint
    assert s.lr[125_000] == cfg.optim.min_lr
    assert s.teacher_temp[0] == pytest.approx(0.04)
    assert s.teacher_temp[37_499] == pytest.approx(0.07)
    assert s.teacher_temp[18_750] == pytest.approx(0.04 + 0.03 * 18_750 / 37_499)
    assert s.teacher_temp[100_000] == pytest.approx(0.07)
    assert s.momentum[0] == pytest.approx(0.992) and s.momentum[125_000] == 1.0
    assert s.momentum[62_500] == pytest.approx(0.996)
    assert s.wd[0] == pytest.approx(0.04) and s.wd[62_500] == pytest.approx(0.22)
    assert s.last_layer_lr[1249] == 0.0 and s.last_layer_lr[1250] == pytest.approx(s.lr[1250])


def test_warmup_start_lr_key_sets_the_first_value():
    cfg = load_config(None, ["optim.warmup_start_lr=1e-6"])
    s = build_schedulers(cfg, lr=0.004, epoch_length=1250)
    assert s.lr[0] == pytest.approx(1e-6)
    assert s.last_layer_lr[0] == 0.0


def test_zero_first_iters_does_not_shift_the_schedule():
    plain = CosineScheduler(base_value=1.0, final_value=0.0, total_iters=8, warmup_iters=3)
    frozen = CosineScheduler(base_value=1.0, final_value=0.0, total_iters=8, warmup_iters=3, zero_first_iters=4)
    assert [frozen[i] for i in range(8)] == pytest.approx([0, 0, 0, 0] + [plain[i] for i in range(4, 8)])
