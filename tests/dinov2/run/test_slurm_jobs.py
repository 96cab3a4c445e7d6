"""Tiny training jobs submitted through `tools/train.py --submit` to a real SLURM cluster (no mocks).

The cluster is the one-node cluster of `tools/local_slurm.sh` (`make test` starts it when it runs as root with
apt-get). Without a cluster these tests are skipped, under `CI=true` they fail. Each job runs two
CPU tasks that train together over gloo. Every job gets a fresh output folder: job ids restart at 1 when
the cluster's state is wiped, and submitit would otherwise read an old job's result files.
"""

import contextlib
import io
import json
import os
import pathlib
import re
import runpy
import signal
import subprocess
import sys
import time
import unittest.mock

import pytest
import submitit

from dinov2.distributed import detect_environment
from dinov2.utils.config import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[3]
TINY = REPO / "configs" / "tiny" / "dinov2_test.yaml"
N_ITERATIONS = 8
# 8 iterations of batch 4 per task; no periodic checkpoints, so that a resumed run can only have resumed
# from the checkpoint taken when it was asked to stop; the teacher is exported after the last iteration
TRAIN_OPTS = ("train.OFFICIAL_EPOCH_LENGTH=2", "optim.epochs=4", "checkpointing.period_iterations=0",
              f"evaluation.eval_period_iterations={N_ITERATIONS}")  # fmt: skip
TORCHRUN_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
JOB_DEADLINE_S = 420  # a hung job fails the test (and is cancelled) instead of blocking the suite


ENABLE_COMMAND = "sudo bash tools/local_slurm.sh start"


def ci_requires_cluster() -> bool:
    """Under CI (`CI=true`, as CI services set it) these tests are required: a missing cluster is a failure."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    """Skip with the command that enables these tests when the controller does not answer; fail under CI."""
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        answer = ping.stdout + ping.stderr
        up = ping.returncode == 0 and "UP" in answer
    except (FileNotFoundError, subprocess.TimeoutExpired) as error:
        answer, up = repr(error), False
    if up:
        return
    if ci_requires_cluster():
        pytest.fail(
            f"SLURM is not reachable (`scontrol ping`: {answer.strip()!r}) and CI=true requires the launcher tests: "
            f"run `{ENABLE_COMMAND}` (`make test` does it as root), then rerun them.",
            pytrace=False,
        )
    pytest.skip(f"no SLURM cluster (`scontrol ping` failed); `{ENABLE_COMMAND}` enables these tests")


@pytest.fixture
def jobs():
    """Job ids submitted by a test; whatever is still queued or running at its end is cancelled."""
    submitted: list[str] = []
    yield submitted
    if submitted:
        subprocess.run(["scancel", *submitted], capture_output=True, check=False)


def submit_tool(tool: str, argv: list[str], jobs: list[str], job_dir: pathlib.Path) -> submitit.SlurmJob:
    """Run `tools/<tool>.py --submit ARGV` in this process (as `python tools/<tool>.py` would): 2 CPU tasks."""
    path = REPO / "tools" / f"{tool}.py"
    stdout = io.StringIO()
    saved_argv = sys.argv
    sys.argv = [str(path), "--submit", "--ngpus", "0", "--tasks-per-node", "2", "--cpus-per-task", "1",
                "--timeout", "30", *argv]  # fmt: skip
    try:
        with contextlib.redirect_stdout(stdout):
            runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv = saved_argv
    match = re.search(r"submitted job (\d+)", stdout.getvalue())
    assert match, f"tools/{tool}.py --submit did not report a job id: {stdout.getvalue()!r}"
    jobs.append(match.group(1))
    return submitit.SlurmJob(folder=job_dir, job_id=match.group(1), tasks=(0, 1))


def submit_training(output_dir: pathlib.Path, jobs: list[str], *opts: str) -> submitit.SlurmJob:
    argv = ["--config-file", str(TINY), "--output-dir", str(output_dir), *TRAIN_OPTS, *opts]
    return submit_tool("train", argv, jobs, output_dir)


def wait_until(condition, what: str, job: submitit.SlurmJob, timeout_s: float = JOB_DEADLINE_S) -> None:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            logs = "\n".join(f"--- task {t} stderr:\n{(job.task(t).stderr() or '')[-2000:]}" for t in range(2))
            pytest.fail(f"job {job.job_id}: {what} did not happen within {timeout_s} s (state {job.state})\n{logs}")
        time.sleep(0.1)


def metric_records(output_dir: pathlib.Path) -> list[dict]:
    path = output_dir / "training_metrics.json"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def sacct_states(job: submitit.SlurmJob) -> list[str]:
    """States of every run of the job, once it has ended (`--duplicates`: one record per run of a requeued job)."""

    def states() -> list[str]:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "--duplicates", "-j", job.job_id, "-o", "State"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        return out.split()

    wait_until(lambda: states()[-1:] in (["COMPLETED"], ["FAILED"], ["CANCELLED"]), "the job's end", job, 60)
    return states()


@pytest.fixture(scope="module")
def reference_job(tmp_path_factory, slurm_cluster):
    """One uninterrupted 2-task training job (shared by the tests that compare against it)."""
    output_dir = tmp_path_factory.mktemp("reference")
    submitted: list[str] = []
    # a submitting shell inside another launcher: sbatch copies these into the job, which must ignore them
    leaked = {"MASTER_ADDR": "10.9.9.9", "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    try:
        with unittest.mock.patch.dict(os.environ, leaked):
            job = submit_training(output_dir, submitted)
        wait_until(job.done, "completion", job)
        return output_dir, job.results(), job.job_id
    finally:
        subprocess.run(["scancel", *submitted], capture_output=True, check=False)


def launcher_free_environment() -> dict[str, str]:
    """This process's environment without torchrun's variables (a test that ran `enable()` may have left them)."""
    return {name: value for name, value in os.environ.items() if name not in TORCHRUN_VARIABLES}


def test_slurm_task_environment_is_detected_without_exports(tmp_path):
    """Each srun task's own SLURM variables give its rank, the world size and one master address/port."""
    dump = f"env -0 > {tmp_path}/env.$SLURM_PROCID"
    subprocess.run(["srun", "-N1", "-n2", "bash", "-c", dump], timeout=60, check=True, env=launcher_free_environment())
    tasks = [
        dict(item.split("=", 1) for item in (tmp_path / f"env.{rank}").read_text().split("\0") if "=" in item)
        for rank in range(2)
    ]
    detected = sorted((detect_environment(env) for env in tasks), key=lambda d: d["RANK"])
    assert [d["launcher"] for d in detected] == ["slurm", "slurm"]
    assert [(d["RANK"], d["LOCAL_RANK"]) for d in detected] == [("0", "0"), ("1", "1")]
    assert {(d["WORLD_SIZE"], d["LOCAL_WORLD_SIZE"], d["MASTER_ADDR"], d["MASTER_PORT"]) for d in detected} == {
        ("2", "2", "localhost", detected[0]["MASTER_PORT"])
    }


def test_python_in_a_batch_script_outside_srun_is_refused(tmp_path):
    """`sbatch -n2 --wrap "python ..."` runs one process for two tasks: an error instead of a hang."""
    subprocess.run(["sbatch", "--wait", "-n2", "-o", str(tmp_path / "out"), "--wrap", f"env -0 > {tmp_path}/env"],
                   capture_output=True, timeout=120, check=True, env=launcher_free_environment())  # fmt: skip
    batch = dict(item.split("=", 1) for item in (tmp_path / "env").read_text().split("\0") if "=" in item)
    assert batch["SLURM_PROCID"] == "0" and batch["SLURM_NTASKS"] == "2" and "SLURM_STEP_ID" not in batch
    with pytest.raises(RuntimeError, match="SLURM_NTASKS=2 tasks but this process runs in its batch script"):
        detect_environment(batch)
    assert detect_environment({**batch, "SLURM_NTASKS": "1"}) is None


def test_two_task_training_job_completes_with_both_ranks(reference_job):
    output_dir, results, job_id = reference_job
    assert len(results) == 2 and all(r["total_loss"] > 0 for r in results)
    assert [r["iteration"] for r in metric_records(output_dir)] == list(range(N_ITERATIONS))
    final = output_dir / "checkpoints" / "model_final"
    assert (output_dir / "checkpoints" / "last_checkpoint").read_text().strip() == "model_final"
    # both ranks wrote their shard and RNG state, and each logged its own place in the 2-process group
    assert {p.name for p in final.glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}
    assert {p.name for p in final.glob("rng_state.rank*.pth")} == {"rng_state.rank0.pth", "rng_state.rank1.pth"}
    for rank, name in [(0, "log.txt"), (1, "log.txt.rank1")]:
        log = (output_dir / "logs" / name).read_text()
        assert f"launcher='slurm', rank={rank}, world_size=2" in log and "backend='gloo'" in log, name
        stderr = (output_dir / f"{job_id}_{rank}_log.err").read_text()
        assert "ignored ['MASTER_ADDR', 'RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE'] inherited" in stderr


def test_usr2_checkpoints_requeues_and_resumes_without_repeating(reference_job, tmp_path, jobs):
    """SLURM's time-limit warning (sent by hand): checkpoint at the next iteration, requeue, resume, finish."""
    reference_dir, _, _ = reference_job
    job = submit_training(tmp_path, jobs)
    wait_until(lambda: len(metric_records(tmp_path)) >= 1, "the first iteration", job)
    subprocess.run(["scancel", f"--signal={signal.SIGUSR2.name[3:]}", job.job_id], check=True)
    wait_until(job.done, "completion after the requeue", job)
    results = job.results()

    assert len(results) == 2 and all(r is not None for r in results)
    assert sacct_states(job) == ["REQUEUED", "COMPLETED"]
    log = (tmp_path / "logs" / "log.txt").read_text()
    stopped = [int(i) for i in re.findall(r"stopped after iteration (\d+) on signal SIGUSR2", log)]
    starts = [int(i) for i in re.findall(r"starting training at iteration (\d+)", log)]
    assert len(stopped) == 1 and stopped[0] < N_ITERATIONS - 1, f"not stopped mid-run: {stopped}"
    assert starts == [0, stopped[0] + 1]
    # every iteration ran exactly once, and the resumed iterations match the uninterrupted job's values
    records = metric_records(tmp_path)
    assert [r["iteration"] for r in records] == list(range(N_ITERATIONS))
    for record, reference in zip(records, metric_records(reference_dir), strict=True):
        for name in ("total_loss", "dino_local_crops_loss", "ibot_loss", "koleo_loss", "lr"):
            assert record["last"][name] == pytest.approx(reference["last"][name], rel=1e-5, abs=1e-7), (
                record["iteration"],
                name,
            )
    assert (tmp_path / "checkpoints" / "last_checkpoint").read_text().strip() == "model_final"


def test_wrong_config_is_refused_before_submitting(tmp_path, jobs):
    """A misspelt key fails here, as a local run would, and nothing reaches the queue."""
    with pytest.raises(ConfigError, match="lerning_rate"):
        submit_training(tmp_path, jobs, "optim.lerning_rate=0.1")
    assert jobs == [] and not list(tmp_path.glob("*_submission.sh"))


def test_a_job_that_fails_on_the_cluster_fails_fast_with_the_error_in_the_log(tmp_path, jobs):
    """An image folder that exists at submission (the check passes) but holds no image: the job fails at once."""
    empty = tmp_path / "images"
    empty.mkdir()
    job = submit_training(tmp_path, jobs, f"train.dataset_path=ImageFolder:root={empty}")
    wait_until(job.done, "failure", job, timeout_s=240)
    with pytest.raises(submitit.core.utils.FailedJobError, match="contains no image files"):
        job.results()
    assert sacct_states(job) == ["FAILED"]  # (waits for the job's end: the log is complete then)
    assert "FileNotFoundError" in (job.task(0).stderr() or "") and str(empty) in (job.task(0).stderr() or "")
    assert not (tmp_path / "training_metrics.json").exists()


def test_evaluation_tool_submits_too(reference_job, tmp_path, jobs):
    """k-NN of the reference job's teacher export, as a 2-task SLURM job (features gathered over the ranks)."""
    reference_dir, _, _ = reference_job
    teacher = reference_dir / "eval" / f"training_{N_ITERATIONS - 1}" / "teacher_checkpoint.pth"
    argv = ["--config-file", str(reference_dir / "config.yaml"), "--pretrained-weights", str(teacher),
            "--train-dataset", "Digits:split=VAL", "--val-dataset", "Digits:split=VAL", "--nb_knn", "1",
            "--resize-size", "16", "--crop-size", "16", "--num-workers", "0",
            "--output-dir", str(tmp_path)]  # fmt: skip
    job = submit_tool("eval_knn", argv, jobs, tmp_path)
    wait_until(job.done, "completion", job)
    results = job.results()
    # train set == val set: every val feature is its own nearest neighbour
    assert results[0]["('full', 1) Top 1"] == 100.0
    written = [json.loads(line) for line in (tmp_path / "results_eval_knn.json").read_text().splitlines()]
    assert written == [results[0]]
