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


# ---------------------------------------------------------------------------------------------------------
# Schedules of the official SimDINO config keys
# ---------------------------------------------------------------------------------------------------------
def test_peak_epochs_hold_the_lr_after_the_warmup():
    cfg = load_config(None, ["optim.epochs=10", "optim.warmup_epochs=2", "optim.peak_epochs=3",
                             "optim.freeze_last_layer_epochs=1"])  # fmt: skip
    s = build_schedulers(cfg, lr=1.0, epoch_length=10)
    assert s.lr[19] == 1.0  # inclusive warm-up end
    assert [s.lr[i] for i in range(20, 50)] == [1.0] * 30  # plateau of 3 epochs
    assert s.lr[50] == 1.0 and s.lr[51] < 1.0  # cosine over the last 50 iterations starts at the base
    assert s.lr[75] == pytest.approx(cfg.optim.min_lr + 0.5 * (1 - cfg.optim.min_lr) * (1 + math.cos(math.pi / 2)))
    assert s.last_layer_lr[9] == 0.0 and s.last_layer_lr[30] == 1.0


def test_clip_eps_coeff_follow_a_cosine_to_their_end_values():
    cfg = load_config(None, ["optim.epochs=10", "optim.clip_grad=3.0", "optim.clip_grad_end=1.0", "dino.use_mcr=true",
                             "dino.mcr.eps=0.05", "dino.mcr.eps_end=0.45", "dino.mcr.coeff=1.0",
                             "dino.mcr.coeff_end=0.0"])  # fmt: skip
    s = build_schedulers(cfg, lr=1.0, epoch_length=10)
    assert s.clip_grad[0] == 3.0 and s.clip_grad[50] == pytest.approx(2.0) and s.clip_grad[100] == 1.0
    assert s.loss_parameters(0) == pytest.approx({"ibot_loss_weight": 1.0, "mcr_eps": 0.05, "mcr_coeff": 1.0})
    assert s.loss_parameters(50) == pytest.approx({"ibot_loss_weight": 1.0, "mcr_eps": 0.25, "mcr_coeff": 0.5})
    assert s.loss_parameters(25)["mcr_eps"] == pytest.approx(0.45 - 0.2 * (1 + math.cos(math.pi / 4)))
    assert s.loss_parameters(10_000) == {"ibot_loss_weight": 1.0, "mcr_eps": 0.45, "mcr_coeff": 0.0}


def test_null_end_values_keep_the_official_constants():
    s = build_schedulers(load_config(None), lr=1.0, epoch_length=10)
    assert {s.clip_grad[i] for i in (0, 500, 999)} == {3.0}
    assert s.mcr_eps is None and s.mcr_coeff is None  # DINOv2 objective: no coding rate to schedule
    assert {s.loss_parameters(i)["ibot_loss_weight"] for i in (0, 500, 999)} == {1.0}


def test_ibot_weight_freezes_warms_up_then_decays():
    cfg = load_config(None, ["optim.epochs=10", "ibot.loss_weight=2.0", "ibot.loss_weight_end=0.5",
                             "ibot.loss_weight_freeze_epochs=1", "ibot.loss_weight_warmup_epochs=2"])  # fmt: skip
    s = build_schedulers(cfg, lr=1.0, epoch_length=10)
    weights = [s.loss_parameters(i)["ibot_loss_weight"] for i in range(100)]
    assert weights[:10] == [0.0] * 10
    assert weights[10:30] == pytest.approx([2.0 * i / 19 for i in range(20)])
    assert weights[30] == 2.0 and weights[65] == pytest.approx(1.25, abs=0.06) and weights[99] > 0.5
    assert s.loss_parameters(100)["ibot_loss_weight"] == 0.5


@pytest.mark.parametrize(
    "opts, key",
    [
        (["dino.mcr.eps_end=0.1"], "dino.use_mcr=false"),
        (["dino.use_mcr=true", "dino.mcr.eps_end=0"], "dino.mcr.eps_end"),  # the schema at load time
        (["optim.clip_grad=0", "optim.clip_grad_end=1.0"], "optim.clip_grad"),
        (["ibot.loss_weight=0", "ibot.loss_weight_warmup_epochs=1"], "ibot.loss_weight=0"),
        (["optim.epochs=10", "optim.warmup_epochs=5", "optim.peak_epochs=6"], "optim.peak_epochs"),
    ],
)
def test_schedules_that_cannot_be_honoured_name_the_key(opts, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_schedulers(load_config(None, opts), lr=1.0, epoch_length=10)
