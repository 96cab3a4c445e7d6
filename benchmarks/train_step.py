"""Step time, peak memory and (CUDA) MFU of one training step: forward_backward + clip + AdamW + EMA.

    # CPU, the tiny recipe
    python benchmarks/train_step.py --config-file configs/tiny/dinov2_digits.yaml
    # CUDA, ViT-L/16 in bf16 (one GPU, no FSDP: autocast per submodule)
    python benchmarks/train_step.py --config-file configs/dinov2_vitl16.yaml --precision bf16 \
        train.batch_size_per_gpu=32
    # Two configs alternated in one run, printing B / A ratios
    python benchmarks/train_step.py --compare configs/tiny/dinov2_digits.yaml OTHER.yaml

TF32 is set by the training's own `allow_tf32_matmuls`. MFU divides by the dense peak of the exact GPU
model at the precision the matmuls run in (benchmarks/peak_flops.py: bf16 / fp16, or TF32 for fp32); an
unknown GPU prints MFU as unknown, and `--peak-tflops` sets the peak. Batches are synthetic (random crops,
real iBOT masks from the collate function) so that only the step is timed. CUDA memory is the peak
allocated during the measured steps of each config (reset in between); CPU memory is the peak resident
set size of a fresh child process that runs that config alone.
`META_ARCH_FACTORY` builds the meta-architecture that the config selects (simdinov2's `build_meta_arch`).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.peak_flops import compute_precision, peak_flops  # noqa: E402
from dinov2 import distributed  # noqa: E402
from dinov2.data import MaskingGenerator, collate_data_and_cast  # noqa: E402
from dinov2.train.ssl_meta_arch import SSLMetaArch  # noqa: E402
from dinov2.train.train import (  # noqa: E402
    allow_tf32_matmuls,
    apply_optim_scheduler,
    build_model,
    build_optimizer,
    clip_and_step,
    fix_random_seeds,
    get_params_groups,
    input_dtype,
)
from dinov2.utils.config import load_config  # noqa: E402
from simdinov2.train.build import build_meta_arch  # noqa: E402

# DINOv2 or SimDINO(v2), as the config selects (dino.use_mcr / ibot.use_mcr).
META_ARCH_FACTORY: Callable[[DictConfig], SSLMetaArch] = build_meta_arch

PRECISION_KEYS = [
    f"compute_precision.{role}.{key}.mixed_precision.{field}"
    for role in ("student", "teacher")
    for key in ("backbone", "dino_head", "ibot_head")
    for field in ("param_dtype", "reduce_dtype")
]


def precision_overrides(precision: str) -> list[str]:
    if precision == "config":
        return []
    return [f"{key}={precision}" for key in PRECISION_KEYS] + [f"compute_precision.grad_scaler={precision == 'fp16'}"]


def synthetic_batch(cfg: DictConfig, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """A collated batch of random crops of the config's sizes (B = train.batch_size_per_gpu)."""
    n_images, n_local = cfg.train.batch_size_per_gpu, cfg.crops.local_crops_number
    size, local_size = cfg.crops.global_crops_size, cfg.crops.local_crops_size
    samples = [
        (
            {
                "global_crops": list(torch.randn(2, 3, size, size).unbind(0)),
                "local_crops": list(torch.randn(n_local, 3, local_size, local_size).unbind(0)),
            },
            (),
        )
        for _ in range(n_images)
    ]
    n_side = size // cfg.student.patch_size
    batch = collate_data_and_cast(
        samples,
        tuple(cfg.ibot.mask_ratio_min_max),
        cfg.ibot.mask_sample_probability,
        dtype,
        n_tokens=n_side * n_side,
        mask_generator=MaskingGenerator((n_side, n_side), max_num_patches=int(0.5 * n_side * n_side)),
    )
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class StepRunner:
    """One config's model, optimizer and batch; `step()` runs one full training step."""

    def __init__(self, config_file: str, opts: list[str], device: torch.device) -> None:
        self.cfg = load_config(config_file, opts)
        self.device = device
        fix_random_seeds(0)
        self.model = build_model(self.cfg, device, META_ARCH_FACTORY).train()
        self.optimizer = build_optimizer(self.cfg, get_params_groups(self.model))
        apply_optim_scheduler(self.optimizer, lr=1e-4, wd=0.04, last_layer_lr=1e-4)
        self.batch = synthetic_batch(self.cfg, input_dtype(self.model), device)
        self.n_params = sum(p.numel() for p in self.model.student.parameters())

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.model.forward_backward(self.batch, 0.07)
        clip_and_step(self.model, self.optimizer, self.cfg.optim.clip_grad)
        self.model.update_teacher(0.994)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed_steps(self, n_steps: int) -> list[float]:
        times = []
        for _ in range(n_steps):
            self.synchronize()
            start = time.perf_counter()
            self.step()
            self.synchronize()
            times.append(time.perf_counter() - start)
        return times

    def flops_per_step(self) -> float:
        with FlopCounterMode(display=False) as counter:
            self.step()
        return float(counter.get_total_flops())


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def measure_one(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    runner = StepRunner(args.config_file, [*precision_overrides(args.precision), *args.opts], device)
    runner.timed_steps(args.warmup)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = runner.timed_steps(args.steps)
    result: dict[str, Any] = {
        "config": args.config_file,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "batch_size_per_gpu": runner.cfg.train.batch_size_per_gpu,
        "student_params_M": runner.n_params / 1e6,
        "step_time_s": median(times),
        "images_per_s": runner.cfg.train.batch_size_per_gpu / median(times),
    }
    if device.type == "cuda":
        result["peak_memory_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
        flops = runner.flops_per_step()
        result["tflops_per_step"] = flops / 1e12
        # the precision the student's matmuls run in: its compute dtype, fp32 on TF32 cores as training sets it
        precision = compute_precision(input_dtype(runner.model), tf32=torch.backends.cuda.matmul.allow_tf32)
        name = torch.cuda.get_device_name(device)
        peak = args.peak_tflops * 1e12 if args.peak_tflops is not None else peak_flops(name, precision)
        result["mfu_precision"] = precision
        result["mfu"] = (
            flops / median(times) / peak
            if peak is not None
            else f"unknown: no {precision} peak for {name!r} in benchmarks/peak_flops.py; pass --peak-tflops"
        )
    else:
        result["peak_rss_GiB"] = peak_rss_gib()
    return result


def peak_rss_gib() -> float:
    """Peak resident set size (GiB) of this process since its exec: VmHWM of /proc/self/status (Linux).

    Not `getrusage(...).ru_maxrss`: Linux carries a forked child's pre-exec high-water mark over the exec, so
    every child of the --compare parent would report at least the parent's RSS at fork time.
    """
    if not os.path.exists("/proc/self/status"):
        raise RuntimeError("CPU peak memory is read from /proc/self/status (VmHWM), which needs Linux")
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB -> GiB
    raise RuntimeError("/proc/self/status has no VmHWM line")


def child_peak_rss(config_file: str, args: argparse.Namespace) -> float:
    """Peak RSS (GiB) of a fresh process running only `config_file` (CPU memory cannot be reset in-process)."""
    command = [sys.executable, os.path.abspath(__file__), "--config-file", config_file, "--json",
               "--steps", "2", "--warmup", "1", "--precision", args.precision, *args.opts]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"memory probe {command} failed:\n{result.stderr[-3000:]}")
    output = result.stdout
    return float(json.loads(output.strip().splitlines()[-1])["peak_rss_GiB"])


def alternate_steps(
    runners: dict[str, "StepRunner"], *, warmup: int, steps: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """`warmup` unmeasured steps of each runner, then `steps` rounds of one timed step each, alternated so that
    machine noise hits every side alike. Returns the step times (s) per side and, on CUDA, the peak allocated
    memory (GiB) per side (empty on CPU, where the caller probes a fresh process)."""
    for runner in runners.values():
        runner.timed_steps(warmup)
    times: dict[str, list[float]] = {name: [] for name in runners}
    memory: dict[str, float] = {}
    for _ in range(steps):
        for name, runner in runners.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[name] += runner.timed_steps(1)
            if device.type == "cuda":
                memory[name] = max(memory.get(name, 0.0), torch.cuda.max_memory_allocated(device) / 2**30)
    return times, memory


def compare(args: argparse.Namespace, device: torch.device) -> None:
    config_a, config_b = args.compare
    opts = [*precision_overrides(args.precision), *args.opts]
    runners = {"A": StepRunner(config_a, opts, device), "B": StepRunner(config_b, opts, device)}
    times, memory = alternate_steps(runners, warmup=args.warmup, steps=args.steps, device=device)
    if device.type != "cuda":
        memory = {"A": child_peak_rss(config_a, args), "B": child_peak_rss(config_b, args)}
    unit = "peak allocated GiB" if device.type == "cuda" else "peak RSS GiB (fresh process)"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"device: {device_name}; {args.steps} alternated steps after {args.warmup} warm-up steps each")
    for name, config in (("A", config_a), ("B", config_b)):
        print(f"{name}: {config}: step {median(times[name]):.4f} s, {unit} {memory[name]:.3f}")
    print(f"ratio B/A: time {median(times['B']) / median(times['A']):.3f}, memory {memory['B'] / memory['A']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", help="one config to measure")
    parser.add_argument("--compare", nargs=2, metavar=("CONFIG_A", "CONFIG_B"), help="two configs, alternated")
    parser.add_argument("--steps", type=int, default=5, help="measured steps (per config)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    parser.add_argument("--precision", choices=["config", "fp32", "bf16", "fp16"], default="config")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="dense device peak (TFLOP/s) for MFU; default: benchmarks/peak_flops.py by exact GPU name and precision",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    parser.add_argument("opts", nargs="*", help="config overrides key=value, applied to every config")
    args = parser.parse_args()
    if (args.config_file is None) == (args.compare is None):
        parser.error("give exactly one of --config-file FILE or --compare FILE_A FILE_B")
    environment = distributed.enable()
    allow_tf32_matmuls()  # the training's own setting (dinov2.train.train.setup)
    if args.compare:
        compare(args, environment.device)
        return
    result = measure_one(args, environment.device)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
