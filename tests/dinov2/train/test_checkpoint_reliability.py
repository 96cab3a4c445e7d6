"""Checkpoint faults, each reproduced for real: crafted checkpoint directories, a checkpoint of the other objective,
duplicate metrics lines after a SIGKILL and resume, config changes on resume (other process count), disk full."""

import json
import logging
import os
import pathlib
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed.checkpoint as dcp

from dinov2.distributed import free_port
from dinov2.train.checkpointer import Checkpointer, CheckpointSaveError, ResumeError, UnsafeCheckpointError
from dinov2.train.ssl_meta_arch import SSLMetaArch
from dinov2.train.train import build_optimizer, get_args_parser, get_params_groups, main, restore
from dinov2.utils.config import load_config
from simdinov2.train.build import build_meta_arch
from simdinov2.train.meta_arch import SimDINOMetaArch

ROOT = pathlib.Path(__file__).parents[3]
TINY = ROOT / "configs" / "tiny" / "dinov2_test.yaml"
TINY_SIMDINO = ROOT / "configs" / "tiny" / "simdinov2_test.yaml"
# 4 iterations (E = 2): checkpoints after iterations 1 and 3 (model_final)
RUN_OPTS = ["optim.epochs=2", "checkpointing.period_iterations=2", "evaluation.eval_period_iterations=0"]


def run_main(output_dir: pathlib.Path, *opts: str, resume: bool = True, eval_only: bool = False) -> dict:
    argv = ["--config-file", str(TINY), "--output-dir", str(output_dir)]
    argv += ["--resume" if resume else "--no-resume"] + (["--eval-only"] if eval_only else [])
    return main(get_args_parser().parse_args([*argv, *RUN_OPTS, *opts]))


def metrics_iterations(output_dir: pathlib.Path) -> list[int]:
    lines = (output_dir / "training_metrics.json").read_text().splitlines()
    return [json.loads(line)["iteration"] for line in lines]


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> pathlib.Path:
    output_dir = tmp_path_factory.mktemp("genuine")
    run_main(output_dir)
    return output_dir


# ----------------------------------------------------------------------------------------------------------
# 1. crafted checkpoint directories
# ----------------------------------------------------------------------------------------------------------
class TouchPayload:
    """Unpickles into a call of os.system that creates `marker`."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class ExecPayload(TouchPayload):
    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def craft_metadata(checkpoint: pathlib.Path, kind: str, marker: pathlib.Path) -> None:
    metadata_file = checkpoint / ".metadata"
    if kind == "system":
        payload = TouchPayload(marker)
    elif kind == "exec":
        payload = ExecPayload(marker)
    else:  # the genuine metadata, one field of it replaced by the payload
        with open(metadata_file, "rb") as handle:
            payload = pickle.load(handle)
        payload.planner_data = TouchPayload(marker)
    metadata_file.write_bytes(pickle.dumps(payload))


def craft_optimizer_item(output_dir: pathlib.Path, marker: pathlib.Path) -> None:
    """Rewrite model_final as a real DCP checkpoint whose non-tensor item `optimizer.param_groups...lr` is a payload."""
    model = SSLMetaArch(load_config(TINY, RUN_OPTS))
    optimizer = build_optimizer(model.cfg, get_params_groups(model))
    checkpointer = Checkpointer(output_dir=output_dir, model=model, optimizer=optimizer, max_to_keep=2)
    checkpoint = output_dir / "checkpoints" / "model_final"
    checkpointer.load(str(checkpoint))
    state = checkpointer._state()
    state["optimizer"]["param_groups"][0]["lr"] = TouchPayload(marker)
    for name in (".metadata", "__0_0.distcp"):
        (checkpoint / name).unlink()
    dcp.save(state, checkpoint_id=str(checkpoint))
    # the probe is real: DCP's stock reader and planner run the payload
    dcp.load(checkpointer._state(), checkpoint_id=str(checkpoint))
    assert marker.exists(), "the crafted optimizer item does not run its payload"
    marker.unlink()


def assert_payload_is_live(path: pathlib.Path, marker: pathlib.Path) -> None:
    """The probe is real: plain unpickling (what DCP's reader does) runs the payload."""
    with open(path, "rb") as handle:
        try:
            pickle.load(handle)
        except Exception:  # the genuine metadata object may not accept the payload's return value
            pass
    assert marker.exists(), f"{path} does not run its payload"
    marker.unlink()


CRAFTED = [
    (kind, entry)
    for kind in ("system", "exec", "nested")
    for entry in ("MODEL.WEIGHTS", "resume", "eval-only")
] + [("optimizer-item", "resume")]  # fmt: skip


@pytest.mark.parametrize(("kind", "entry"), CRAFTED)
def test_crafted_checkpoint_is_refused_and_runs_nothing(genuine, tmp_path, kind, entry):
    crafted = tmp_path / "crafted"
    shutil.copytree(genuine, crafted)
    marker = tmp_path / "marker"
    checkpoint = crafted / "checkpoints" / "model_final"
    if kind == "optimizer-item":
        craft_optimizer_item(crafted, marker)
        with pytest.raises(UnsafeCheckpointError, match=r"optimizer\.param_groups.*GLOBAL posix\.system"):
            run_main(crafted, "optim.epochs=3")
    else:
        craft_metadata(checkpoint, kind, marker)
        assert_payload_is_live(checkpoint / ".metadata", marker)
        with pytest.raises(UnsafeCheckpointError, match=re.escape(f"refusing to read {checkpoint / '.metadata'}")):
            if entry == "MODEL.WEIGHTS":
                run_main(tmp_path / "new", f"MODEL.WEIGHTS={checkpoint}")
            elif entry == "resume":
                run_main(crafted, "optim.epochs=3")
            else:
                run_main(crafted, eval_only=True)
    assert not marker.exists()


def test_genuine_checkpoint_resumes_and_loads_in_one_process(genuine, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(genuine, output_dir)
    run_main(output_dir, "optim.epochs=3")
    assert metrics_iterations(output_dir) == list(range(6))
    run_main(output_dir, eval_only=True)
    assert (output_dir / "eval" / "manual_5" / "teacher_checkpoint.pth").is_file()


# ----------------------------------------------------------------------------------------------------------
# 1 (2 processes) and 9: the 1-process checkpoint resumes on 2 gloo processes, with the changes logged
# ----------------------------------------------------------------------------------------------------------
def train_tool(output_dir: pathlib.Path, n_processes: int, *opts: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(name, None)
    script = [str(ROOT / "tools" / "train.py"), "--config-file", str(TINY), "--output-dir", str(output_dir),
              *RUN_OPTS, *opts]  # fmt: skip
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n_processes}",
                f"--master_port={free_port()}"]  # fmt: skip
    result = subprocess.run([*launcher, *script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_resume_on_two_processes_logs_the_lr_and_every_changed_key_before_the_first_step(genuine, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(genuine, output_dir)
    train_tool(output_dir, 2, "optim.epochs=3")
    log = (output_dir / "logs" / "log.txt").read_text()
    resumed_at = log.index("resumed from")
    first_step = log.index("Training [4/6]")
    batches = r"global batch 4 \(4 per process x 1 processes x 1\) -> 8 \(4 per process x 2 processes x 1\)"
    lr_line = re.search(rf"the learning rate changes on resume: optim.lr ([\d.e-]+) -> ([\d.e-]+) .*{batches}", log)
    assert lr_line is not None, log[resumed_at:first_step]
    assert float(lr_line[1]) == pytest.approx(0.004 * (4 / 1024) ** 0.5, rel=1e-5)  # 0.00025
    assert float(lr_line[2]) == pytest.approx(0.004 * (8 / 1024) ** 0.5, rel=1e-5)  # 0.000354
    assert resumed_at < lr_line.start() < first_step
    # the copied run also moved: train.output_dir changed; unchanged keys are not listed
    for change in ("optim.epochs: 2 -> 3", "optim.lr: 0.00025 -> 0.00035355", f"train.output_dir: '{genuine}' -> "):
        assert resumed_at < log.index(change) < first_step, change
    assert "resuming with 3 config values that differ" in log
    assert "student.arch" not in log[resumed_at:first_step]
    assert metrics_iterations(output_dir) == list(range(6))
    # the 2-process checkpoint written by the resumed run loads on one process
    run_main(output_dir, eval_only=True)
    assert (output_dir / "eval" / "manual_5" / "teacher_checkpoint.pth").is_file()


# ----------------------------------------------------------------------------------------------------------
# 6. a checkpoint of the other objective given as MODEL.WEIGHTS
# ----------------------------------------------------------------------------------------------------------
def simdino_cfg(*opts: str):
    return load_config(TINY_SIMDINO, list(opts))


def test_dinov2_weights_into_simdinov2_load_the_backbones_only_and_say_so(genuine, tmp_path, caplog):
    checkpoint = genuine / "checkpoints" / "model_final"
    cfg = simdino_cfg(f"MODEL.WEIGHTS={checkpoint}")
    model = build_meta_arch(cfg)
    assert isinstance(model, SimDINOMetaArch)
    heads_before = {k: v.clone() for k, v in model.state_dict().items() if "backbone" not in k}
    with caplog.at_level(logging.INFO, logger="dinov2.train.checkpointer"):
        assert restore(cfg, model, Checkpointer(output_dir=tmp_path, model=model, optimizer=None, max_to_keep=1),
                       resume=False) is None  # fmt: skip
    dinov2_model = SSLMetaArch(load_config(TINY, RUN_OPTS))
    Checkpointer(output_dir=tmp_path, model=dinov2_model, optimizer=None, max_to_keep=1).load(
        str(checkpoint), model_only=True
    )
    expected = dinov2_model.state_dict()
    loaded = model.state_dict()
    backbone_keys = [k for k in loaded if k.startswith(("student.backbone.", "teacher.backbone."))]
    assert len(backbone_keys) > 20
    for key in backbone_keys:
        torch.testing.assert_close(loaded[key], expected[key], msg=key)
    for key, value in heads_before.items():
        torch.testing.assert_close(loaded[key], value, msg=key)  # the SimDINO heads keep their initialisation
    message = caplog.text
    assert f"{checkpoint} is a SSLMetaArch checkpoint and this run trains SimDINOMetaArch" in message
    assert f"loaded the {len(backbone_keys)} student.backbone / teacher.backbone tensors" in message
    for skipped in ("dino_loss.center", "ibot_patch_loss.center", "student.dino_head.last_layer.weight_g",
                    "teacher.dino_head.last_layer.weight_v"):  # fmt: skip
        assert skipped in message.split("not loaded")[1].split("freshly initialised")[0], skipped


def test_simdinov2_weights_into_dinov2_load_the_backbones_only(tmp_path):
    simdino = SimDINOMetaArch(simdino_cfg())
    optimizer = build_optimizer(simdino.cfg, get_params_groups(simdino))
    saved = Checkpointer(output_dir=tmp_path, model=simdino, optimizer=optimizer, max_to_keep=1).save(
        "model_0000000", iteration=0
    )
    model = SSLMetaArch(load_config(TINY, [f"MODEL.WEIGHTS={saved}"]))
    center_before = model.dino_loss.center.clone()
    restore(model.cfg, model, Checkpointer(output_dir=tmp_path / "b", model=model, optimizer=None, max_to_keep=1),
            resume=False)  # fmt: skip
    torch.testing.assert_close(model.student["backbone"].pos_embed, simdino.student["backbone"].pos_embed)
    torch.testing.assert_close(model.teacher["backbone"].state_dict(), simdino.teacher["backbone"].state_dict())
    torch.testing.assert_close(model.dino_loss.center, center_before)
    # resuming (or --eval-only of) a run of one objective from the other's checkpoint is refused
    optimizer = build_optimizer(model.cfg, get_params_groups(model))
    checkpointer = Checkpointer(output_dir=tmp_path, model=model, optimizer=optimizer, max_to_keep=1)
    for model_only in (False, True):
        with pytest.raises(ResumeError, match="it is a SimDINOMetaArch checkpoint and this run trains SSLMetaArch"):
            checkpointer.load(saved, model_only=model_only)


def test_other_partial_loads_are_refused_naming_the_keys(genuine, tmp_path):
    checkpoint = str(genuine / "checkpoints" / "model_final")
    # same objective, a head the checkpoint does not have
    separate = SSLMetaArch(load_config(TINY, ["ibot.separate_head=true"]))
    with pytest.raises(ResumeError, match=r"keys missing from the checkpoint: \[student\.ibot_head\.last_layer"):
        Checkpointer(output_dir=tmp_path, model=separate, optimizer=None, max_to_keep=1).load(
            checkpoint, model_only=True
        )
    # other objective and another backbone (3 blocks): the backbones do not match either
    deeper = SimDINOMetaArch(simdino_cfg("student.depth=3"))
    with pytest.raises(ResumeError, match=r"backbone keys missing from the checkpoint: \[student\.backbone\.blocks\.2"):
        Checkpointer(output_dir=tmp_path, model=deeper, optimizer=None, max_to_keep=1).load(
            checkpoint, model_only=True, backbone_across_objectives=True
        )


# ----------------------------------------------------------------------------------------------------------
# 8. SIGKILL after logging past the last checkpoint, then resume: one clean metrics file
# ----------------------------------------------------------------------------------------------------------
def test_killed_and_resumed_run_has_one_metrics_line_per_iteration(tmp_path):
    output_dir = tmp_path / "run"
    opts = ["optim.epochs=4", "checkpointing.period_iterations=3"]  # checkpoints after iterations 2, 5, 7
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "tools" / "train.py"), "--config-file", str(TINY),
               "--output-dir", str(output_dir), *RUN_OPTS, *opts]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = output_dir / "training_metrics.json"
    deadline = time.time() + 240
    while process.poll() is None and time.time() < deadline:
        if metrics.exists() and '"iteration": 4' in metrics.read_text():
            break
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-3000:]
    checkpointed = int((output_dir / "checkpoints" / "last_checkpoint").read_text().removeprefix("model_"))
    logged = metrics_iterations(output_dir)
    assert max(logged) > checkpointed, "the kill came too late to leave lines past the checkpoint"

    run_main(output_dir, *opts)
    assert metrics_iterations(output_dir) == list(range(8))


# ----------------------------------------------------------------------------------------------------------
# 10. disk full while saving (a real 12 MB tmpfs)
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def small_tmpfs(tmp_path):
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount_point)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_disk_full_during_a_save_names_the_checkpoint_and_keeps_the_previous(small_tmpfs):
    torch.manual_seed(0)
    # no optimizer step yet: the checkpoint holds the weights only (about 7.8 MB); two do not fit in 12 MB
    model = SSLMetaArch(load_config(TINY, ["student.depth=1"]))
    optimizer = build_optimizer(model.cfg, get_params_groups(model))
    checkpointer = Checkpointer(output_dir=small_tmpfs, model=model, optimizer=optimizer, max_to_keep=2)
    first = checkpointer.save("model_0000000", iteration=0)
    saved = {key: value.clone() for key, value in model.state_dict().items()}
    with torch.no_grad():
        for value in model.parameters():
            value.add_(1.0)
    with pytest.raises(CheckpointSaveError) as failure:
        checkpointer.save("model_0000001", iteration=1)
    message = str(failure.value)
    assert f"could not write checkpoint {small_tmpfs / 'checkpoints' / 'model_0000001'}" in message
    assert "free space and quota" in message
    assert f"The previous checkpoint {first} (iteration 0) is intact" in message
    assert "No space left on device" in message or "unexpected pos" in message
    assert sorted(os.listdir(small_tmpfs / "checkpoints")) == ["last_checkpoint", "model_0000000"]
    # the previous checkpoint loads and holds the saved weights
    fresh = SSLMetaArch(load_config(TINY, ["student.depth=1"]))
    fresh_optimizer = build_optimizer(fresh.cfg, get_params_groups(fresh))
    restored = Checkpointer(output_dir=small_tmpfs, model=fresh, optimizer=fresh_optimizer, max_to_keep=2)
    assert restored.load(restored.latest()).iteration == 0
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, saved[key], msg=key)
