"""benchmarks/gpu_check.py end to end on CPU with tiny models (the sections a GPU run executes)."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_every_section_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--json-out", str(out)],
                            capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["passed"] and report["environment"]["device"].startswith("cpu")
    rows = report["rows"]
    steps = [row for row in rows if row["section"] == "train_step"]
    variants = {(row["recipe"], row["compile"], row["checkpointing"]) for row in steps}
    assert variants == {(r, c, k) for r in ("dinov2", "simdinov2") for c in (False, True) for k in (False, True)}
    assert all(row["status"] == "ok" and row["step_time_s"] > 0 and row["tflops_per_step"] > 0 for row in steps)
    assert all(row["time_ratio_vs_dinov2"] > 0 for row in steps if row["recipe"] == "simdinov2")
    (timm_row,) = [row for row in rows if row["section"] == "backbone_vs_timm"]
    assert timm_row["status"] == "ok" and timm_row["ours_params_M"] > 0 and timm_row["time_ratio_ours_vs_timm"] > 0
    (tiny_row,) = [row for row in rows if row["section"] == "tiny_recipe_device_vs_cpu"]
    assert tiny_row["status"] == "ok" and tiny_row["max_abs_deviation"] == 0.0  # CPU against CPU: the same run
    assert "| train_step | simdinov2 compiled + act. ckpt | ok |" in result.stdout


def test_gpu_check_fails_without_the_device():
    result = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda"], capture_output=True, text=True,
                            cwd=ROOT, env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""})  # fmt: skip
    assert result.returncode == 1 and "CUDA is not available" in result.stderr
