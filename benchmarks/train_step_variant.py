"""Step time and peak memory of one config with and without extra overrides, alternated in one process.

    # activation checkpointing at ViT-S/16 with the paper's crops (2 x 224 + 10 x 96), CPU, fp32
    python benchmarks/train_step_variant.py --config-file configs/simdinov2_vitl16.yaml --precision fp32 \
        --variant student.gradient_checkpointing=true -- student.arch=vit_small train.batch_size_per_gpu=8
    # compile: true on the tiny recipe (the first steps, which compile, are the warm-up and are not timed)
    python benchmarks/train_step_variant.py --config-file configs/tiny/simdinov2_digits.yaml --precision fp32 \
        --variant compile=true --warmup 3

A = the config with the common overrides, B = A plus `--variant`. The measured steps alternate A and B so that
machine noise hits both alike; the step is benchmarks/train_step.py's (forward_backward + clip + AdamW + EMA on a
synthetic batch). CPU memory is the peak RSS of a fresh process that runs one side alone (train_step.py
--json), CUDA memory the peak allocated during the measured steps. Prints both sides and the B / A ratios.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from train_step import StepRunner, alternate_steps, child_peak_rss, median, precision_overrides  # noqa: E402

from dinov2 import distributed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--variant", nargs="+", required=True, metavar="KEY=VALUE", help="overrides of side B")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps per side first")
    parser.add_argument("--precision", choices=["config", "fp32", "bf16", "fp16"], default="config")
    parser.add_argument("opts", nargs="*", help="config overrides key=value of both sides")
    args = parser.parse_args()
    device = distributed.enable().device
    common = [*precision_overrides(args.precision), *args.opts]
    sides = {"A": common, "B": [*common, *args.variant]}
    runners = {name: StepRunner(args.config_file, opts, device) for name, opts in sides.items()}
    times, memory = alternate_steps(runners, warmup=args.warmup, steps=args.steps, device=device)
    if device.type != "cuda":
        for name, opts in sides.items():
            probe = argparse.Namespace(precision=args.precision, opts=[*args.opts, *opts[len(common) :]])
            memory[name] = child_peak_rss(args.config_file, probe)
    unit = "peak allocated GiB" if device.type == "cuda" else "peak RSS GiB (fresh process)"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"device: {device_name}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"config {args.config_file} --precision {args.precision} {' '.join(args.opts)}; {args.steps} alternated steps, "
        f"{args.warmup} warm-up each"
    )
    for name in ("A", "B"):
        label = "baseline" if name == "A" else " ".join(args.variant)
        all_times = ", ".join(f"{t:.3f}" for t in times[name])
        print(f"{name} ({label}): step {median(times[name]):.3f} s (all: {all_times}), {unit} {memory[name]:.3f}")
    print(f"ratio B/A: time {median(times['B']) / median(times['A']):.3f}, memory {memory['B'] / memory['A']:.3f}")


if __name__ == "__main__":
    main()
