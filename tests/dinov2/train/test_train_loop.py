"""The training entry point end to end on CPU: kill-and-resume, teacher export, NaN abort, config file."""

import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from dinov2.models import build_model_from_cfg
from dinov2.train.checkpointer import Checkpointer, ResumeError
from dinov2.train.ssl_meta_arch import SSLMetaArch
from dinov2.train.train import NonFiniteLossError, get_args_parser, main, restore
from dinov2.utils.checkpoint import load_pretrained_backbone
from dinov2.utils.config import ConfigError, load_config

ROOT = pathlib.Path(__file__).parents[3]
TINY = ROOT / "configs" / "tiny" / "dinov2_test.yaml"
# 8 iterations (E = 2), checkpoints after iterations 1, 3, 5 and model_final after 7, teacher exports at 3 and 7.
RUN_OPTS = ["optim.epochs=4", "checkpointing.period_iterations=2", "checkpointing.max_to_keep=2",
            "evaluation.eval_period_iterations=4"]  # fmt: skip


def run_main(output_dir: pathlib.Path, *opts: str, resume: bool = True, eval_only: bool = False) -> dict:
    argv = ["--config-file", str(TINY), "--output-dir", str(output_dir)]
    argv += ["--resume" if resume else "--no-resume"] + (["--eval-only"] if eval_only else [])
    return main(get_args_parser().parse_args([*argv, *RUN_OPTS, *opts]))


def losses_by_iteration(output_dir: pathlib.Path) -> dict[int, dict[str, float]]:
    """Exact per-iteration values; a later line for the same iteration (a resumed run) replaces the earlier."""
    records = {}
    for line in (output_dir / "training_metrics.json").read_text().splitlines():
        record = json.loads(line)
        records[record["iteration"]] = record["last"]
    return records


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> pathlib.Path:
    output_dir = tmp_path_factory.mktemp("reference")
    run_main(output_dir)
    return output_dir


def test_output_layout_and_resolved_config(reference_run):
    cfg = OmegaConf.load(reference_run / "config.yaml")
    assert cfg.optim.lr == pytest.approx(cfg.optim.base_lr * math.sqrt(4 / 1024))
    assert cfg.train.output_dir == str(reference_run)
    assert sorted(os.listdir(reference_run / "checkpoints")) == ["last_checkpoint", "model_0000003", "model_0000005",
                                                                 "model_final"]  # fmt: skip
    assert (reference_run / "checkpoints" / "last_checkpoint").read_text() == "model_final"
    assert (reference_run / "logs" / "log.txt").is_file()
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(reference_run / "tensorboard"))
    records = losses_by_iteration(reference_run)
    assert sorted(records) == list(range(8))
    expected = {"total_loss", "dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss", "lr", "wd",
                "mom", "last_layer_lr", "teacher_temp", "teacher_cls_effective_rank", "backbone_grad_norm"}  # fmt: skip
    assert expected <= set(records[7])


def test_teacher_export_loads_into_the_backbone(reference_run):
    path = reference_run / "eval" / "training_7" / "teacher_checkpoint.pth"
    exported = torch.load(path, weights_only=True)["teacher"]
    assert {key.split(".")[0] for key in exported} == {"backbone", "dino_head"}
    assert "dino_head.last_layer.weight_g" in exported
    cfg = load_config(TINY, RUN_OPTS)
    backbone, _ = build_model_from_cfg(cfg, only_teacher=True)
    load_pretrained_backbone(backbone, path)
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(value, exported[f"backbone.{name}"])
    # the export is the teacher of model_final
    model = SSLMetaArch(cfg)
    Checkpointer(output_dir=reference_run, model=model, optimizer=None, max_to_keep=2).load(
        str(reference_run / "checkpoints" / "model_final"), model_only=True
    )
    for name, value in model.teacher.state_dict().items():
        torch.testing.assert_close(value, exported[name])


def test_sigkilled_run_resumes_on_the_uninterrupted_loss_curve(reference_run, tmp_path):
    output_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "tools" / "train.py"), "--config-file", str(TINY),
               "--output-dir", str(output_dir), *RUN_OPTS]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tag = output_dir / "checkpoints" / "last_checkpoint"
    deadline = time.time() + 240
    while not tag.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-3000:]
    assert not (output_dir / "checkpoints" / "model_final").exists(), "the run finished before it was killed"
    killed_at = len(losses_by_iteration(output_dir))

    run_main(output_dir)
    starts = re.findall(r"starting training at iteration (\d+)", (output_dir / "logs" / "log.txt").read_text())
    assert len(starts) == 2 and int(starts[1]) >= 2, f"the second run did not resume: started at {starts}"
    reference, resumed = losses_by_iteration(reference_run), losses_by_iteration(output_dir)
    assert sorted(resumed) == list(range(8)) and killed_at < 8
    for iteration in range(8):
        for name in ("total_loss", "dino_local_crops_loss", "ibot_loss", "koleo_loss", "lr", "backbone_grad_norm"):
            assert resumed[iteration][name] == pytest.approx(reference[iteration][name], rel=1e-6), (iteration, name)
    final = torch.load(output_dir / "eval" / "training_7" / "teacher_checkpoint.pth", weights_only=True)["teacher"]
    expected = torch.load(reference_run / "eval" / "training_7" / "teacher_checkpoint.pth", weights_only=True)
    for name, value in expected["teacher"].items():
        torch.testing.assert_close(final[name], value, msg=name)


def test_resumed_run_replaces_the_tensorboard_points_after_its_checkpoint(reference_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # the run as a preemption after iteration 7 but before model_final would leave it: TensorBoard has
    # points up to 7, the last checkpoint is model_0000005, so iterations 6 and 7 are trained again
    output_dir = tmp_path / "run"
    shutil.copytree(reference_run, output_dir)
    shutil.rmtree(output_dir / "checkpoints" / "model_final")
    (output_dir / "checkpoints" / "last_checkpoint").write_text("model_0000005")
    run_main(output_dir)
    events = EventAccumulator(str(output_dir / "tensorboard"))
    events.Reload()
    steps = [event.step for event in events.Scalars("total_loss")]
    assert steps == list(range(8)), steps  # each iteration once: the first run's 6 and 7 are purged
    logged = {}  # what this run's metrics file says (the file is trimmed at the resume point too)
    for line in (output_dir / "training_metrics.json").read_text().splitlines():
        record = json.loads(line)
        logged[record["iteration"]] = record["total_loss"]  # the windowed median, as TensorBoard gets it
    assert sorted(logged) == steps
    for event in events.Scalars("total_loss"):
        assert event.value == pytest.approx(logged[event.step], rel=1e-6), event.step


def test_interrupted_save_leaves_the_previous_checkpoint(reference_run, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(reference_run, output_dir)
    # what a save killed half-way leaves behind: a temporary directory with part of the files
    partial = output_dir / "checkpoints" / ".tmp_model_0000009"
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"truncated")
    model = SSLMetaArch(load_config(TINY, RUN_OPTS))
    checkpointer = Checkpointer(output_dir=output_dir, model=model, optimizer=None, max_to_keep=2)
    assert checkpointer.latest() == str(output_dir / "checkpoints" / "model_final")
    assert not partial.exists()


def test_nan_loss_stops_with_step_and_terms_and_keeps_the_checkpoint(reference_run, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(reference_run, output_dir)
    with pytest.raises(NonFiniteLossError, match=r"iteration 8: .*dino_global_crops_loss=nan"):
        # the smallest positive float32 temperature: schema-valid, and the teacher logits overflow to inf
        run_main(output_dir, "optim.epochs=5", "teacher.teacher_temp=1.0e-45", "teacher.warmup_teacher_temp=1.0e-45")
    assert (output_dir / "checkpoints" / "last_checkpoint").read_text() == "model_final"
    # --eval-only exports the teacher of the last good checkpoint
    run_main(output_dir, eval_only=True)
    assert (output_dir / "eval" / "manual_7" / "teacher_checkpoint.pth").is_file()


def test_unknown_key_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="optim.epoch"):
        run_main(tmp_path, "optim.epoch=3")


def test_model_weights_and_pretrained_backbone_are_loaded(reference_run):
    cfg = load_config(TINY, [*RUN_OPTS, f"MODEL.WEIGHTS={reference_run / 'checkpoints' / 'model_final'}"])
    model = SSLMetaArch(cfg)
    checkpointer = Checkpointer(output_dir=reference_run, model=model, optimizer=None, max_to_keep=2)
    assert restore(cfg, model, checkpointer, resume=False) is None  # model only: training restarts at 0
    export = torch.load(reference_run / "eval" / "training_7" / "teacher_checkpoint.pth", weights_only=True)
    for name, value in model.teacher.state_dict().items():
        torch.testing.assert_close(value, export["teacher"][name])

    path = reference_run / "eval" / "training_7" / "teacher_checkpoint.pth"
    model = SSLMetaArch(load_config(TINY, [f"student.pretrained_weights={path}"]))
    for name, value in model.student["backbone"].state_dict().items():
        torch.testing.assert_close(value, export["teacher"][f"backbone.{name}"])
        torch.testing.assert_close(model.teacher["backbone"].state_dict()[name], value)


def test_resume_failures_raise(reference_run, tmp_path):
    output_dir = tmp_path / "run"
    (output_dir / "checkpoints").mkdir(parents=True)
    (output_dir / "checkpoints" / "last_checkpoint").write_text("model_0000042")
    model = SSLMetaArch(load_config(TINY))
    with pytest.raises(ResumeError, match="model_0000042"):
        Checkpointer(output_dir=output_dir, model=model, optimizer=None, max_to_keep=1).latest()
    # a checkpoint of a different model (other head size) does not load, and says why
    other = SSLMetaArch(load_config(TINY, ["dino.head_n_prototypes=32", "ibot.head_n_prototypes=32"]))
    checkpointer = Checkpointer(output_dir=reference_run, model=other, optimizer=None, max_to_keep=2)
    with pytest.raises(ResumeError, match="could not restore checkpoint"):
        checkpointer.load(str(reference_run / "checkpoints" / "model_final"), model_only=True)


def test_bad_image_counter_is_logged(tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(7):
        Image.new("RGB", (32, 32), color=(30 * i, 255 - 30 * i, 7 * i)).save(images / f"img{i}.png")
    (images / "img7.png").write_bytes(b"not a png")
    output_dir = tmp_path / "run"
    # 2 iterations of 4 images: one pass over the 8 files, so the broken one is read once
    run_main(output_dir, f"train.dataset_path=ImageFolder:root={images}", "train.max_bad_image_fraction=0.5",
             "optim.epochs=1", "optim.warmup_epochs=0", "teacher.warmup_teacher_temp_epochs=0",
             "optim.freeze_last_layer_epochs=0")  # fmt: skip
    records = [json.loads(line) for line in (output_dir / "training_metrics.json").read_text().splitlines()]
    assert records[-1]["iteration"] == 1
    assert records[-1]["last"]["bad_images"] == 1.0
    assert records[-1]["last"]["bad_image_fraction"] == pytest.approx(1 / 8)  # distinct files: 1 failed of 8 read


SIMDINOV2_TINY = ROOT / "configs" / "tiny" / "simdinov2_test.yaml"


@pytest.mark.parametrize(
    ("config", "log_period", "found_at"),
    [(SIMDINOV2_TINY, 1, None), (TINY, 5, 3), (SIMDINOV2_TINY, 5, 3)],
    ids=["simdinov2-log-every-step", "dinov2-log-every-5", "simdinov2-log-every-5"],
)
def test_diverging_run_ends_in_non_finite_error_naming_iteration_and_terms(config, log_period, found_at, tmp_path):
    from simdinov2.train.build import build_meta_arch

    # base_lr 1e6 (the fault probe): the first non-finite step is iteration 2 for both objectives. With a log
    # period of 5 the loop reads the device at iterations 0, 1 and 3 (checkpoints every 2): found at 3, before
    # model_0000003 is written.
    argv = ["--config-file", str(config), "--output-dir", str(tmp_path), "optim.base_lr=1e6", "optim.epochs=6",
            "checkpointing.period_iterations=2", f"train.log_period_iterations={log_period}"]  # fmt: skip
    with pytest.raises(NonFiniteLossError) as error:
        main(get_args_parser().parse_args(argv), meta_arch_factory=build_meta_arch)
    message = str(error.value)
    assert re.search(r"non-finite loss at iteration 2: .*total_loss=nan", message), message
    loss_term = "dino_mcr_loss" if config == SIMDINOV2_TINY else "dino_global_crops_loss"
    assert f"{loss_term}=nan" in message
    assert (f"found at iteration {found_at}" in message) == (found_at is not None), message
    assert (tmp_path / "checkpoints" / "last_checkpoint").read_text() == "model_0000001"
    assert "model_0000001, is untouched" in message
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["last_checkpoint", "model_0000001"]


# 12 iterations logged on each one (tiny recipe), no periodic checkpoint: a stop request saves at the next iteration.
SIGNAL_OPTS = ["optim.epochs=6", "checkpointing.period_iterations=0", "evaluation.eval_period_iterations=0"]


@pytest.fixture(scope="module")
def signal_reference(tmp_path_factory) -> pathlib.Path:
    output_dir = tmp_path_factory.mktemp("signal_reference")
    run_main(output_dir, *SIGNAL_OPTS)
    return output_dir


def stop_training_subprocess(output_dir: pathlib.Path, signum: int, *opts: str) -> tuple[int, str]:
    """Start tools/train.py, send `signum` to its process group once iteration 1 is logged; (exit code, output)."""
    command = [sys.executable, str(ROOT / "tools" / "train.py"), "--config-file", str(TINY),
               "--output-dir", str(output_dir), *RUN_OPTS, *SIGNAL_OPTS, *opts]  # fmt: skip
    # a session of its own: the signal goes to the whole process group, data-loader workers included, as Ctrl-C
    # in a terminal and SLURM's scancel do
    process = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    metrics = output_dir / "training_metrics.json"
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signum)
    stdout, stderr = process.communicate(timeout=240)
    return process.returncode, stdout.decode() + stderr.decode()


@pytest.mark.parametrize(
    ("signum", "exit_code", "num_workers"),
    [(signal.SIGTERM, 143, 0), (signal.SIGINT, 130, 0), (signal.SIGINT, 130, 2)],
    ids=["TERM", "INT", "INT-workers"],
)
def test_signal_saves_logs_exits_and_resumes_on_the_uninterrupted_loss_curve(
    signal_reference, tmp_path, signum, exit_code, num_workers
):
    output_dir = tmp_path / "stopped"
    returncode, log = stop_training_subprocess(output_dir, signum, f"train.num_workers={num_workers}")
    name = signal.Signals(signum).name
    assert returncode == exit_code, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    stopped_at = int(re.search(rf"training stopped after iteration (\d+) on signal {name}", log)[1])
    assert stopped_at < 11, "the run finished before the signal"
    assert f"stop requested by {name}: saved {output_dir}/checkpoints/model_{stopped_at:07d}" in log
    assert "rerun the same command to resume" in log
    assert (output_dir / "checkpoints" / "last_checkpoint").read_text() == f"model_{stopped_at:07d}"
    if num_workers:
        return  # augmentations drawn in workers do not resume their random streams: not comparable (see docs)

    run_main(output_dir, *SIGNAL_OPTS)
    reference, resumed = losses_by_iteration(signal_reference), losses_by_iteration(output_dir)
    assert sorted(resumed) == list(range(12))
    for iteration in range(12):
        for metric in ("total_loss", "dino_local_crops_loss", "ibot_loss", "koleo_loss", "backbone_grad_norm"):
            assert resumed[iteration][metric] == pytest.approx(reference[iteration][metric], rel=1e-6), (
                iteration,
                metric,
            )


def test_second_ctrl_c_exits_at_once():
    script = (
        "import os, signal, time\n"
        "from dinov2.run import preemption\n"
        "with preemption.handle_stop_signals(signal.SIGTERM, signal.SIGINT):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.1)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)\n"
        "print('not reached')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert result.returncode == 130, result.stderr
    assert "received SIGINT again: exiting now" in result.stderr and "not reached" not in result.stdout
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------------------
# Continued pretraining: student.pretrained_weights and student.freeze_backbone_epochs
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def released_backbone(tmp_path_factory) -> pathlib.Path:
    """A hub-format file (flat backbone keys) of the tiny config's backbone, with non-initial weights."""
    cfg = load_config(TINY, RUN_OPTS)
    torch.manual_seed(123)
    backbone, _ = build_model_from_cfg(cfg, only_teacher=True)
    with torch.no_grad():
        for param in backbone.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    path = tmp_path_factory.mktemp("released") / "tiny_pretrain.pth"
    torch.save(backbone.state_dict(), path)
    return path


def test_teacher_equals_student_at_step_0_and_heads_are_fresh(released_backbone):
    released = torch.load(released_backbone, weights_only=True)
    torch.manual_seed(0)
    model = SSLMetaArch(load_config(TINY, [f"student.pretrained_weights={released_backbone}"]))
    assert model.student.state_dict().keys() == model.teacher.state_dict().keys()
    for name, value in model.student.state_dict().items():
        assert torch.equal(model.teacher.state_dict()[name], value), name
    for name, value in released.items():
        assert torch.equal(model.student["backbone"].state_dict()[name], value), name
    torch.manual_seed(0)
    fresh = SSLMetaArch(load_config(TINY))
    for name, value in fresh.student["dino_head"].state_dict().items():  # heads: the random init of the seed
        assert torch.equal(model.student["dino_head"].state_dict()[name], value), name


def test_freeze_backbone_epochs_keeps_both_backbones_bit_identical_then_releases(released_backbone, tmp_path):
    output_dir = tmp_path / "frozen"
    # 8 iterations of E = 2: the backbone is frozen during iterations 0-3 (checkpoint model_0000003 is taken
    # after them), trains during 4-7 (model_final).
    run_main(output_dir, f"student.pretrained_weights={released_backbone}", "student.freeze_backbone_epochs=2",
             resume=False)  # fmt: skip
    released = torch.load(released_backbone, weights_only=True)
    cfg = load_config(TINY, RUN_OPTS)

    def restored(name: str) -> SSLMetaArch:
        model = SSLMetaArch(cfg)
        Checkpointer(output_dir=output_dir, model=model, optimizer=None, max_to_keep=2).load(
            str(output_dir / "checkpoints" / name), model_only=True
        )
        return model

    initial_heads = SSLMetaArch(cfg).student["dino_head"].state_dict()
    frozen = restored("model_0000003")
    for role in ("student", "teacher"):
        for name, value in released.items():
            assert torch.equal(getattr(frozen, role)["backbone"].state_dict()[name], value), (role, name)
    heads = frozen.student["dino_head"].state_dict()
    assert any(not torch.equal(value, initial_heads[name]) for name, value in heads.items()), "the heads learn"
    final = restored("model_final")
    for role in ("student", "teacher"):
        state = getattr(final, role)["backbone"].state_dict()
        moved = [name for name, value in released.items() if not torch.equal(state[name], value)]
        assert len(moved) > len(released) // 2, (role, moved)
    records = losses_by_iteration(output_dir)
    assert [records[i]["backbone_grad_norm"] for i in range(4)] == [0.0] * 4
    assert all(records[i]["backbone_grad_norm"] > 0 for i in range(4, 8))
    assert "student backbone released" in (output_dir / "logs" / "log.txt").read_text()


def test_a_training_checkpoint_directory_is_a_pretrained_weights_format(reference_run):
    """student.pretrained_weights=<run>/checkpoints/model_final: its teacher backbone, the same as the export."""
    checkpoint_dir = reference_run / "checkpoints" / "model_final"
    exported = torch.load(reference_run / "eval" / "training_7" / "teacher_checkpoint.pth", weights_only=True)
    model = SSLMetaArch(load_config(TINY, [f"student.pretrained_weights={checkpoint_dir}"]))
    for role in ("student", "teacher"):
        for name, value in model.student["backbone"].state_dict().items():
            assert torch.equal(getattr(model, role)["backbone"].state_dict()[name], value)
            torch.testing.assert_close(value, exported["teacher"][f"backbone.{name}"], rtol=0, atol=0)


def test_freeze_backbone_epochs_must_leave_training_time():
    with pytest.raises(ValueError, match=r"student.freeze_backbone_epochs=4 must be in \[0, optim.epochs=4\)"):
        SSLMetaArch(load_config(TINY, [*RUN_OPTS, "student.freeze_backbone_epochs=4"]))
