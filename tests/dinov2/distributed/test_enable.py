import logging
import os

import pytest
import torch

from dinov2 import distributed
from dinov2.distributed import detect_environment, parse_slurm_nodelist
from dinov2.utils.device import cuda_device_index

TORCHRUN = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "4"}  # fmt: skip
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
         "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_JOB_NUM_NODES": "2", "SLURM_STEP_ID": "0"}  # fmt: skip


def test_nodelist_expansion_keeps_zero_padding():
    assert parse_slurm_nodelist("gpu[01-03,7],cpu7") == ["gpu01", "gpu02", "gpu03", "gpu7", "cpu7"]
    assert parse_slurm_nodelist("node9") == ["node9"]
    assert parse_slurm_nodelist("a[098-100]") == ["a098", "a099", "a100"]


def test_detection_plain_torchrun_slurm():
    assert detect_environment({}) is None
    assert detect_environment(TORCHRUN) == {"launcher": "torchrun", **TORCHRUN}
    slurm = detect_environment(SLURM)
    assert slurm is not None
    assert slurm["launcher"] == "slurm" and slurm["MASTER_ADDR"] == "gpu01"
    assert (slurm["RANK"], slurm["WORLD_SIZE"], slurm["LOCAL_RANK"], slurm["LOCAL_WORLD_SIZE"]) == ("5", "8", "1", "4")
    assert 20000 <= int(slurm["MASTER_PORT"]) <= 60000
    assert detect_environment(SLURM)["MASTER_PORT"] == slurm["MASTER_PORT"]  # same on every task of the job
    assert detect_environment({**SLURM, "MASTER_PORT": "1234"})["MASTER_PORT"] == "1234"
    # torchrun started inside a SLURM task: the torchrun variables win (FIX)
    assert detect_environment({**SLURM, **TORCHRUN})["launcher"] == "torchrun"


def test_partial_launcher_environment_names_the_variables():
    with pytest.raises(RuntimeError, match=r"\['RANK', 'WORLD_SIZE'\] are set but .*MASTER_ADDR"):
        detect_environment({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(RuntimeError, match="SLURM_JOB_NUM_NODES=3"):
        detect_environment({**SLURM, "SLURM_JOB_NUM_NODES": "3"})


def test_plain_python_has_no_process_group(tmp_path):
    distributed.disable()
    environment = distributed.enable()
    assert environment.launcher == "python" and environment.world_size == 1
    assert not distributed.is_enabled()
    assert environment.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RuntimeError, match="already called"):
        distributed.enable()
    x = torch.ones(3)
    assert distributed.all_reduce_mean_(x) is x and x.tolist() == [1, 1, 1]
    distributed.disable()


def test_a_single_slurm_task_initialises_gloo(monkeypatch, tmp_path):
    distributed.disable()
    for name in TORCHRUN:
        monkeypatch.delenv(name, raising=False)
    single = {**SLURM, "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0",
              "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_NUM_NODES": "1",
              "MASTER_PORT": str(distributed.free_port())}  # fmt: skip
    for name, value in single.items():
        monkeypatch.setenv(name, value)
    try:
        environment = distributed.enable(backend="gloo")
        assert environment.launcher == "slurm" and environment.backend == "gloo"
        assert distributed.is_enabled() and distributed.get_global_size() == 1
        x = torch.full((2,), 3.0)
        distributed.all_reduce_sum_(x)
        assert x.tolist() == [3.0, 3.0]
    finally:
        distributed.disable()
        for name in TORCHRUN:  # exported by enable(); monkeypatch would restore them at teardown
            os.environ.pop(name, None)


def test_setup_logging_writes_the_rank_file(tmp_path):
    from dinov2.logging import setup_logging

    setup_logging(tmp_path)
    logging.getLogger("dinov2.some.module").info("hello from the test")
    for handler in logging.getLogger("dinov2").handlers:
        handler.flush()
    assert "hello from the test" in (tmp_path / "logs" / "log.txt").read_text()


def _slurm_task(local_id: int, cuda_visible_devices: str) -> dict[str, str]:
    """The variables SLURM sets for task `local_id` of node 0 (2 nodes x 4 tasks), as srun exports them."""
    return {**SLURM, "SLURM_PROCID": str(local_id), "SLURM_LOCALID": str(local_id),
            "CUDA_VISIBLE_DEVICES": cuda_visible_devices}  # fmt: skip


def _device_of(environ: dict[str, str]) -> int:
    detected = detect_environment(environ)
    assert detected is not None
    n_visible = len(environ["CUDA_VISIBLE_DEVICES"].split(","))  # what torch.cuda.device_count() then reports
    return cuda_device_index(int(detected["LOCAL_RANK"]), n_visible)


def test_cuda_device_under_slurm_in_both_gpu_layouts():
    # --gpus-per-node=4 (or --gres=gpu:4), 4 tasks per node: every task sees the node's 4 GPUs
    assert [_device_of(_slurm_task(i, "0,1,2,3")) for i in range(4)] == [0, 1, 2, 3]
    # --gpus-per-task=1 or --gpu-bind=single:1: task i sees only its own GPU (physical i), as ordinal 0
    assert [_device_of(_slurm_task(i, str(i))) for i in range(4)] == [0, 0, 0, 0]
    # more tasks than visible GPUs on the node: the local rank wraps around
    assert _device_of(_slurm_task(3, "0,1")) == 1
    with pytest.raises(ValueError, match="no visible CUDA device"):
        cuda_device_index(0, 0)
