"""The scheduled values (iBOT weight, MCR eps / coeff, clip threshold) reach the losses and the optimizer step,
are logged every iteration, and continue exactly after a resume."""

import json
import pathlib
import re
import shutil

import pytest
import torch
from batches import make_batches

from dinov2.train.schedulers import build_schedulers
from dinov2.train.ssl_meta_arch import SSLMetaArch
from dinov2.train.train import build_optimizer, clip_and_step, get_args_parser, get_params_groups, main
from dinov2.utils.config import load_config
from simdinov2.train.build import build_meta_arch

CONFIGS = pathlib.Path(__file__).parents[3] / "configs" / "tiny"
SCHEDULE_OPTS = ["optim.epochs=4", "checkpointing.period_iterations=2", "checkpointing.max_to_keep=3",
                 "optim.clip_grad=2.0", "optim.clip_grad_end=0.5", "optim.peak_epochs=1",
                 "dino.mcr.eps_end=0.3", "dino.mcr.coeff_end=0.2", "ibot.loss_weight_end=0.1",
                 "ibot.loss_weight_warmup_epochs=1"]  # fmt: skip
SCHEDULED = ("lr", "clip_grad", "ibot_loss_weight", "mcr_eps", "mcr_coeff")


def test_simdino_losses_use_the_values_set_for_the_iteration():
    torch.manual_seed(0)
    model = build_meta_arch(load_config(CONFIGS / "simdinov2_test.yaml")).train()
    batch = make_batches(n_batches=1, n_images=4)[0]
    model.set_loss_parameters(ibot_loss_weight=0.25, mcr_eps=0.2, mcr_coeff=0.5)
    total, metrics = model.forward_backward(batch, 0.07)
    assert metrics["dino_mcr_effective_eps"] == pytest.approx(0.2)  # one process: W eps = eps
    torch.testing.assert_close(metrics["dino_mcr_loss"], -0.5 * metrics["dino_mcr_comp_loss"]
                               - metrics["dino_mcr_expa_loss"])  # fmt: skip
    torch.testing.assert_close(total, metrics["dino_mcr_loss"] + 0.25 * metrics["ibot_comp_loss"])


def test_dinov2_ibot_weight_and_clip_threshold_are_applied():
    torch.manual_seed(0)
    model = SSLMetaArch(load_config(CONFIGS / "dinov2_test.yaml")).train()
    batch = make_batches(n_batches=1, n_images=4)[0]
    model.set_loss_parameters(ibot_loss_weight=0.3)
    total, metrics = model.forward_backward(batch, 0.07)
    expected = (metrics["dino_local_crops_loss"] + metrics["dino_global_crops_loss"]
                + 0.1 * metrics["koleo_loss"] + 0.3 * metrics["ibot_loss"])  # fmt: skip
    torch.testing.assert_close(total, expected)
    optimizer = build_optimizer(model.cfg, get_params_groups(model))
    norms = clip_and_step(model, optimizer, 1e-3)
    assert norms["backbone_grad_norm"] > 1e-3
    clipped = torch.nn.utils.get_total_norm([p.grad for p in model.student["backbone"].parameters()
                                             if p.grad is not None])  # fmt: skip
    assert clipped == pytest.approx(1e-3, rel=1e-3)


def logged(output_dir: pathlib.Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (output_dir / "training_metrics.json").read_text().splitlines()]
    # exact values of the iteration ("last"); a resumed run's line replaces the earlier one
    return {record["iteration"]: record["last"] for record in records}


@pytest.fixture(scope="module")
def scheduled_run(tmp_path_factory) -> pathlib.Path:
    output_dir = tmp_path_factory.mktemp("scheduled")
    argv = ["--config-file", str(CONFIGS / "simdinov2_test.yaml"), "--output-dir", str(output_dir), *SCHEDULE_OPTS]
    main(get_args_parser().parse_args(argv), meta_arch_factory=build_meta_arch)
    return output_dir


def test_every_iteration_logs_its_scheduled_values(scheduled_run):
    cfg = load_config(scheduled_run / "config.yaml")
    schedules = build_schedulers(cfg, lr=cfg.optim.lr, epoch_length=cfg.train.OFFICIAL_EPOCH_LENGTH)
    records = logged(scheduled_run)
    assert sorted(records) == list(range(8))
    for iteration, record in records.items():
        expected = {"lr": schedules.lr[iteration], "clip_grad": schedules.clip_grad[iteration],
                    **schedules.loss_parameters(iteration)}  # fmt: skip
        assert {name: record[name] for name in SCHEDULED} == pytest.approx(expected), iteration
        assert record["dino_mcr_effective_eps"] == pytest.approx(record["mcr_eps"])  # the loss used it
    assert records[0]["ibot_loss_weight"] == 0.0 and records[1]["ibot_loss_weight"] == 1.0
    assert records[7]["mcr_eps"] > 0.25 and records[7]["clip_grad"] < 0.7


def test_resumed_run_continues_every_schedule_exactly(scheduled_run, tmp_path):
    output_dir = tmp_path / "resumed"
    shutil.copytree(scheduled_run, output_dir)
    (output_dir / "checkpoints" / "last_checkpoint").write_text("model_0000003")
    argv = ["--config-file", str(CONFIGS / "simdinov2_test.yaml"), "--output-dir", str(output_dir), *SCHEDULE_OPTS]
    main(get_args_parser().parse_args(argv), meta_arch_factory=build_meta_arch)
    reference, resumed = logged(scheduled_run), logged(output_dir)
    starts = re.findall(r"starting training at iteration (\d+)", (output_dir / "logs" / "log.txt").read_text())
    assert starts[-1] == "4", f"the resumed run must redo iterations 4..7, started at {starts}"
    assert sorted(resumed) == list(range(8))
    for iteration in range(4, 8):
        for name in (*SCHEDULED, "total_loss", "dino_mcr_loss", "ibot_comp_loss"):
            assert resumed[iteration][name] == pytest.approx(reference[iteration][name], rel=1e-6), (iteration, name)
