"""The launcher pieces that need no running cluster: submit flags -> submitit parameters -> sbatch script,
SLURM node lists (checked against SLURM's own `scontrol show hostnames`), and the preemption handler."""

import argparse
import os
import pathlib
import runpy
import signal
import subprocess
import sys

import pytest
import submitit
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from submitit.slurm.slurm import _make_sbatch_string

from dinov2 import distributed
from dinov2.run import preemption
from dinov2.run.submit import add_submit_args, slurm_parameters, submit

REPO = pathlib.Path(__file__).resolve().parents[3]


def parse(*argv: str) -> argparse.Namespace:
    parser = add_submit_args(argparse.ArgumentParser())
    parser.add_argument("--output-dir", default=None)
    return parser.parse_args(list(argv))


def test_defaults_are_one_task_per_gpu_on_eight_gpus():
    params = slurm_parameters(parse())
    assert params == {
        "nodes": 1,
        "tasks_per_node": 8,
        "gpus_per_node": 8,
        "cpus_per_task": 10,
        "timeout_min": 2800,
        "slurm_signal_delay_s": 120,
        "slurm_srun_args": ["--kill-on-bad-exit=1"],
        "slurm_setup": [f"export PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}}"],
    }


def test_single_process_tools_refuse_several_tasks():
    parser = add_submit_args(argparse.ArgumentParser(), max_tasks=1)
    params = slurm_parameters(parser.parse_args([]))
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (1, 1, 1)
    with pytest.raises(ValueError, match="asks for 4 tasks, but this tool runs at most 1"):
        slurm_parameters(parser.parse_args(["--ngpus", "4"]))


def test_cpu_tasks_and_every_optional_flag():
    args = parse(
        "--nnodes", "4", "--ngpus", "0", "--tasks-per-node", "2", "--cpus-per-task", "3", "--timeout", "60",
        "--partition", "learn", "--account", "vision", "--qos", "high", "--comment", "deadline",
        "--exclude", "node[01-02]", "--constraint", "volta32gb", "--mem", "64", "--signal-delay", "30",
    )  # fmt: skip
    params = slurm_parameters(args)
    assert "gpus_per_node" not in params
    assert (params["nodes"], params["tasks_per_node"], params["cpus_per_task"]) == (4, 2, 3)
    assert params["timeout_min"] == 60 and params["slurm_signal_delay_s"] == 30 and params["mem_gb"] == 64
    expected = {"slurm_partition": "learn", "slurm_account": "vision", "slurm_qos": "high", "slurm_comment": "deadline",
                "slurm_exclude": "node[01-02]", "slurm_constraint": "volta32gb"}  # fmt: skip
    assert {key: params[key] for key in expected} == expected
    assert parse("--gpus-per-node", "2").ngpus == 2 and parse("--gpus", "3").ngpus == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [(("--nodes", "0"), "--nodes=0 must be at least 1"), (("--ngpus", "-1"), "--ngpus=-1 must be at least 0"),
     (("--tasks-per-node", "0"), "--tasks-per-node=0 must be at least 1")],
)  # fmt: skip
def test_bad_counts_name_the_flag(argv, message):
    with pytest.raises(ValueError, match=message):
        slurm_parameters(parse(*argv))


def test_parameters_render_into_the_sbatch_script(tmp_path):
    """submitit accepts every key and writes the matching #SBATCH lines (rendered by submitit, not submitted)."""
    args = parse("--ngpus", "2", "--partition", "learn", "--account", "vision", "--qos", "high", "--mem", "64",
                 "--exclude", "node3", "--constraint", "volta32gb", "--comment", "c1", "--timeout", "90")  # fmt: skip
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(name="dinov2:train", **slurm_parameters(args))
    script = _make_sbatch_string(command="python -m x", folder=tmp_path, **executor._executor.parameters)
    for line in ["--account=vision", "--qos=high", "--partition=learn", "--gpus-per-node=2", "--ntasks-per-node=2",
                 "--cpus-per-task=10", "--mem=64GB", "--exclude=node3", "--constraint=volta32gb", "--comment=c1",
                 "--time=90", "--signal=USR2@120", "--job-name=dinov2:train"]:  # fmt: skip
        assert f"#SBATCH {line}\n" in script, line
    assert "srun --unbuffered" in script and "--kill-on-bad-exit=1" in script
    assert f"export PYTHONPATH={REPO}" in script.split("srun")[0]  # the job imports this checkout


def test_submit_needs_a_folder():
    with pytest.raises(ValueError, match="--job-dir or --output-dir"):
        submit(print, parse("--ngpus", "0"), "x")


@pytest.mark.parametrize("nodelist", ["localhost", "gpu[01-03,7],cpu7", "a[098-100]", "n1,n[5-6]"])
def test_nodelist_expansion_matches_scontrol(nodelist):
    expanded = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    assert distributed.parse_slurm_nodelist(nodelist) == expanded.stdout.split()


@pytest.fixture
def usr2_restored():
    previous = signal.getsignal(signal.SIGUSR2)
    preemption.reset()
    yield
    preemption.reset()
    signal.signal(signal.SIGUSR2, previous)


def _poll(device: torch.device) -> int | None:
    """What the training loop does on a logged iteration: reduce the stop flags over ranks and agree."""
    flags = preemption.stop_flags(device)
    if dist.is_initialized():
        dist.all_reduce(flags)
    return preemption.agreed_stop(flags.tolist())


def test_signal_goes_to_the_fallback_until_the_loop_polls(usr2_restored):
    handed_over = []
    preemption.install_handler(signal.SIGUSR2, fallback=lambda signum, frame: handed_over.append(signum))
    os.kill(os.getpid(), signal.SIGUSR2)
    assert handed_over == [signal.SIGUSR2] and preemption.requested_signal() is None
    assert _poll(torch.device("cpu")) is None  # the loop polls from now on
    os.kill(os.getpid(), signal.SIGUSR2)
    assert handed_over == [signal.SIGUSR2] and preemption.requested_signal() == signal.SIGUSR2
    assert _poll(torch.device("cpu")) == signal.SIGUSR2
    error = preemption.TrainingPreempted(41, signal.SIGUSR2)
    assert str(error) == "stopped after iteration 41 on signal SIGUSR2"


def test_stop_signals_are_recorded_only_inside_the_block(usr2_restored):
    before = signal.getsignal(signal.SIGTERM)
    with preemption.handle_stop_signals(signal.SIGTERM, signal.SIGINT):
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: a request
        assert _poll(torch.device("cpu")) == signal.SIGINT
    assert preemption.requested_signal() is None
    assert signal.getsignal(signal.SIGTERM) is before and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _agree(rank: int, port: int, results: "mp.SimpleQueue") -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    cpu = torch.device("cpu")
    before = _poll(cpu)
    if rank == 1:
        preemption.request_stop(signal.SIGTERM)
    after = _poll(cpu)
    results.put((rank, before, after, preemption.requested_signal()))
    dist.destroy_process_group()


def test_one_rank_signalled_stops_every_rank_at_the_same_iteration():
    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_agree, args=(distributed.free_port(), results), nprocs=2)
    outcome = sorted(results.get() for _ in range(2))
    assert outcome == [(0, None, signal.SIGTERM, signal.SIGTERM), (1, None, signal.SIGTERM, signal.SIGTERM)]


def test_run_or_submit_checks_then_runs_here_without_submit():
    from dinov2.run.submit import run_or_submit

    echoed: list[str] = []
    calls: list[str] = []
    args = argparse.Namespace(submit=False, value=3)

    def entry(parsed):
        calls.append("entry")
        return parsed.value * 2

    assert run_or_submit(entry, args, name="t", check=lambda _: calls.append("check"), echo=echoed.append) == 6
    assert echoed == [] and calls == ["check", "entry"]

    def refuse(_):
        raise ValueError("bad flag")

    with pytest.raises(ValueError, match="bad flag"):
        run_or_submit(entry, argparse.Namespace(submit=True, value=3), name="t", check=refuse, echo=echoed.append)
    assert calls == ["check", "entry"] and echoed == []


DIGITS = ["--train-dataset", "Digits:split=TRAIN", "--val-dataset", "Digits:split=VAL"]
TINY_ARCH = ["--arch", "vit_tiny", "--patch-size", "8"]


@pytest.mark.parametrize(
    ("tool", "argv", "message"),
    [
        ("train", ["--config-file", "configs/tiny/dinov2_test.yaml", "optim.lrr=0.1"], "config key 'optim.lrr'"),
        ("train", ["--config-file", "configs/tiny/dinov2_test.yaml", "train.dataset_path=Digits:split=TRAINING"],
         "split='TRAINING'"),
        ("train", ["--config-file", "configs/tiny/dinov2_test.yaml", "dino.use_mcr=true"], "dino.use_mcr"),
        ("eval_knn", [*TINY_ARCH, "--opts", "student.pach_size=8", *DIGITS], "student.pach_size"),
        ("eval_knn", [*TINY_ARCH, "--train-dataset", "ImageFolder:root=/nonexistent/train", "--val-dataset",
                      "Digits:split=VAL"], "root='/nonexistent/train'"),
        ("eval_knn", [*TINY_ARCH, "--weights", "/nonexistent/backbone.pth", *DIGITS], "/nonexistent/backbone.pth"),
        ("eval_linear", [*TINY_ARCH, *DIGITS, "--test-datasets", "Digits:split=TEST"], "split='TEST'"),
        ("eval_logreg", [*TINY_ARCH, *DIGITS, "--finetune-dataset-str", "Digit:split=VAL"], "unknown dataset 'Digit'"),
        ("eval_segmentation", [*TINY_ARCH, "--data-root", "/nonexistent/ADEChallengeData2016"],
         "--data-root /nonexistent/ADEChallengeData2016 is not a folder"),
        ("eval_davis", [*TINY_ARCH, "--davis-root", "/nonexistent/DAVIS"], "--davis-root /nonexistent/DAVIS"),
        ("eval_maskcut", [*TINY_ARCH, "--images", "/nonexistent/val2017"], "--images /nonexistent/val2017"),
    ],
)  # fmt: skip
def test_submit_refuses_bad_arguments_before_submitting(tool, argv, message, tmp_path, monkeypatch):
    """The tool's check runs before submitit is asked for anything: with no SLURM command on the PATH, a
    submission attempt would fail on the missing `sbatch`; the error is the argument's own."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PATH", str(pathlib.Path(sys.executable).parent))
    path = REPO / "tools" / f"{tool}.py"
    output_dir = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [str(path), "--submit", "--ngpus", "0", "--output-dir", str(output_dir), *argv])
    with pytest.raises((ValueError, FileNotFoundError)) as raised:
        runpy.run_path(str(path), run_name="__main__")
    assert message in str(raised.value)
    assert not output_dir.exists()  # nothing was written: neither submitit's folder nor the tool's outputs
