"""Whether the launcher tests run, skip or fail, decided in a fresh pytest process with the environment set
each way: a reachable cluster runs them; no cluster skips them with the command that enables them; no cluster
under CI=true fails them. `make test`'s wrapper leaves a running cluster alone and keeps the suite's status."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
QUICK_TEST = "tests/dinov2/run/test_slurm_jobs.py::test_slurm_task_environment_is_detected_without_exports"


def cluster_is_up() -> bool:
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return ping.returncode == 0 and "UP" in ping.stdout


def run_quick_launcher_test(*, ci: str | None, without_slurm: bool) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name != "CI"}
    if ci is not None:
        env["CI"] = ci
    if without_slurm:  # a fresh machine: no SLURM commands on the PATH at all
        env["PATH"] = str(pathlib.Path(sys.executable).parent)
    command = [sys.executable, "-m", "pytest", "-q", "-rs", QUICK_TEST]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_without_a_cluster_the_launcher_tests_skip_naming_the_command():
    result = run_quick_launcher_test(ci=None, without_slurm=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    reasons = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(reasons) == 1 and "sudo bash tools/local_slurm.sh start" in reasons[0], result.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_without_a_cluster_ci_fails_the_launcher_tests(ci):
    result = run_quick_launcher_test(ci=ci, without_slurm=True)
    assert result.returncode != 0
    assert "1 error" in result.stdout and "skipped" not in result.stdout
    assert "CI=true requires the launcher tests" in result.stdout
    assert "sudo bash tools/local_slurm.sh start" in result.stdout


def test_with_the_cluster_up_the_launcher_tests_run_under_ci():
    if not cluster_is_up():
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail("CI=true but no SLURM cluster answers `scontrol ping`", pytrace=False)
        pytest.skip("no SLURM cluster (`scontrol ping` failed); `sudo bash tools/local_slurm.sh start` enables this")
    result = run_quick_launcher_test(ci="true", without_slurm=False)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout + result.stderr


def test_make_test_wrapper_keeps_a_running_cluster_and_the_command_status():
    if not cluster_is_up():
        pytest.skip("no SLURM cluster (`scontrol ping` failed); `sudo bash tools/local_slurm.sh start` enables this")
    wrapped = subprocess.run(["bash", str(REPO / ".ci" / "with_local_slurm"), "bash", "-c", "exit 3"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert wrapped.returncode == 3
    assert "using the SLURM cluster that is already running" in wrapped.stderr
    assert cluster_is_up()
