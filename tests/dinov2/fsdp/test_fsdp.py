"""FSDP2 on CPU/gloo: 2 processes equal 1 process on the same global batch; checkpoints reshard across world sizes."""

import os
import pathlib
import subprocess
import sys

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

from dinov2.distributed import free_port
from dinov2.train.checkpointer import Checkpointer
from dinov2.train.ssl_meta_arch import SSLMetaArch
from dinov2.train.train import build_optimizer, get_params_groups
from dinov2.utils.config import load_config

WORKER = pathlib.Path(__file__).with_name("fsdp_worker.py")
TINY = pathlib.Path(__file__).parents[3] / "configs" / "tiny" / "dinov2_test.yaml"
# KoLeo is local to each rank (nearest neighbours within the rank's batch) and the iBOT centre averages the
# per-rank means, so neither equals the single-process value; Sinkhorn-Knopp and the DINO/iBOT losses do.
OVERRIDES = ["dino.koleo_loss_weight=0", "train.centering=sinkhorn_knopp"]


def run_worker(out: pathlib.Path, n_processes: int, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(name, None)
    script = [str(WORKER), "--out", str(out), *extra, *OVERRIDES]
    if n_processes == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n_processes}",
                   f"--master_port={free_port()}", *script]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return torch.load(out, weights_only=False)


def test_two_gloo_processes_equal_one_process_and_checkpoints_reshard(tmp_path):
    single = run_worker(tmp_path / "single.pt", 1)
    sharded = run_worker(tmp_path / "sharded.pt", 2, "--checkpoint-dir", str(tmp_path / "run"))
    assert (single["launcher"], single["world_size"]) == ("python", 1)
    assert (sharded["launcher"], sharded["backend"], sharded["world_size"]) == ("torchrun", "gloo", 2)

    for step, (a, b) in enumerate(zip(single["losses"], sharded["losses"], strict=True)):
        assert a.keys() == b.keys()
        for name in a:
            assert abs(a[name] - b[name]) <= 1e-5 * max(1.0, abs(a[name])), (step, name, a[name], b[name])
    assert single["state"].keys() == sharded["state"].keys()
    for name, value in single["state"].items():
        torch.testing.assert_close(sharded["state"][name], value, rtol=1e-4, atol=1e-4, msg=name)
    # the run changed the weights (the comparison is not between two untouched initialisations)
    assert not torch.allclose(single["state"]["student.backbone.blocks.0.attn.qkv.weight"],
                              single["state"]["teacher.backbone.blocks.0.attn.qkv.weight"])  # fmt: skip

    # The teacher export gathers the full teacher to rank 0 in the official format.
    exported = torch.load(tmp_path / "run" / "eval" / "final" / "teacher_checkpoint.pth", weights_only=True)["teacher"]
    teacher_names = {name.removeprefix("teacher.") for name in sharded["state"] if name.startswith("teacher.")}
    assert exported.keys() == teacher_names
    for name, value in exported.items():
        torch.testing.assert_close(value, sharded["state"][f"teacher.{name}"], msg=name)

    # The 2-process checkpoint resumes in this single process (no process group): model and optimizer.
    torch.manual_seed(1)
    model = SSLMetaArch(load_config(TINY, OVERRIDES)).train()
    optimizer = build_optimizer(model.cfg, get_params_groups(model))
    checkpointer = Checkpointer(output_dir=tmp_path / "run", model=model, optimizer=optimizer, max_to_keep=1)
    trainer_state = checkpointer.load(checkpointer.latest())
    assert trainer_state.iteration == 2 and trainer_state.world_size == 2
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, sharded["state"][name], msg=name)
    loaded_optimizer = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    for name, param_state in sharded["optimizer"]["state"].items():
        for key, value in param_state.items():
            torch.testing.assert_close(loaded_optimizer["state"][name][key], value, msg=f"{name}.{key}")


def test_frozen_backbone_stays_bit_identical_under_fsdp_then_trains(tmp_path):
    """student.freeze_backbone_epochs toggles requires_grad on sharded parameters: FSDP2 must honour both ways."""
    run = run_worker(tmp_path / "frozen.pt", 2, "--steps", "3", "--freeze-steps", "2")
    initial, frozen, final = run["snapshots"]["initial"], run["snapshots"]["frozen"], run["state"]
    backbone = [name for name in initial if name.startswith(("student.backbone.", "teacher.backbone."))]
    for name in backbone:
        assert torch.equal(frozen[name], initial[name]), name
    heads = [name for name in initial if name.startswith("student.dino_head.")]
    assert any(not torch.equal(frozen[name], initial[name]) for name in heads), "the heads train while frozen"
    moved = [name for name in backbone if name.startswith("student.") and not torch.equal(final[name], initial[name])]
    assert len(moved) > len(backbone) // 4, moved


def test_fsdp2_with_compiled_checkpointed_blocks_equals_one_plain_process(tmp_path):
    # aot_eager traces forward and backward like inductor (graph breaks, FSDP2 hooks, checkpoint regions)
    # without code generation, which keeps this test fast; test_compile_and_checkpointing.py covers inductor.
    single = run_worker(tmp_path / "single.pt", 1, "--steps", "2")
    sharded = run_worker(tmp_path / "sharded.pt", 2, "--steps", "2", "--compile-backend", "aot_eager",
                         "student.gradient_checkpointing=true")  # fmt: skip
    for step, (a, b) in enumerate(zip(single["losses"], sharded["losses"], strict=True)):
        for name in a:
            assert abs(a[name] - b[name]) <= 1e-5 * max(1.0, abs(a[name])), (step, name, a[name], b[name])
    for name, value in single["state"].items():
        torch.testing.assert_close(sharded["state"][name], value, rtol=1e-4, atol=1e-4, msg=name)
