"""One-shot GPU check: training-step speed / memory / MFU, backbone vs timm, GPU-vs-CPU losses; one table + JSON.

    python benchmarks/gpu_check.py                           # one H100 / H200, under 8 minutes
    python benchmarks/gpu_check.py --device cpu --tiny       # the same sections on tiny models (CPU test)

Sections, all in this one process:

1. ViT-L/16 training steps of the DINOv2 and the SimDINOv2 recipe (configs/dinov2_vitl16.yaml,
   configs/simdinov2_vitl16.yaml; B = --batch-size images, 2 x 224 + 10 x 96 crops) in each recipe's own mixed
   precision (single process: autocast per submodule, loss scaling for fp16), each eager and compiled
   (`compile: true`), each without and with activation checkpointing (`student.gradient_checkpointing`).
   Per row: median step time, peak allocated memory, MFU = counted model FLOPs per step (FlopCounterMode on
   the eager step, so the recomputation of checkpointing is not counted as useful work) / time / the GPU's
   dense peak in the student backbone's dtype (benchmarks/peak_flops.py; none for an unlisted GPU), and the
   SimDINOv2 / DINOv2 ratio of time and memory for the same variant.
2. The SimDINOv2 ViT-L/16 backbone (no drop path) against timm's VisionTransformer of the same shape (4
   registers, LayerScale), forward + backward on the global crops in bf16 autocast, alternated.
3. 50 steps of the tiny SimDINOv2 recipe (configs/tiny/simdinov2_digits.yaml, fp32 with TF32 matmuls as in
   training) on the device and on the CPU from the same weights and batches: every step's loss must agree
   within --loss-rtol / --loss-atol.

Any exception, a loss mismatch or a total time over --budget-s marks the check failed: the table shows it
and the exit status is 1. The JSON file (--json-out) holds every row and the environment.
"""

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import sys
import time
import traceback
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from peak_flops import compute_precision, peak_flops  # noqa: E402
from train_step import StepRunner, median, synthetic_batch  # noqa: E402

from dinov2 import distributed  # noqa: E402
from dinov2.models import build_model_from_cfg  # noqa: E402
from dinov2.train.compile import compile_meta_arch  # noqa: E402
from dinov2.train.train import allow_tf32_matmuls, apply_optim_scheduler, clip_and_step  # noqa: E402
from dinov2.utils.config import load_config, scaled_lr  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {"dinov2": "configs/dinov2_vitl16.yaml", "simdinov2": "configs/simdinov2_vitl16.yaml"}
TINY_RECIPES = {"dinov2": "configs/tiny/dinov2_test.yaml", "simdinov2": "configs/tiny/simdinov2_test.yaml"}
TINY_RECIPE = "configs/tiny/simdinov2_digits.yaml"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"


# ----------------------------------------------------------------------------------------------------------
# 1. training steps
# ----------------------------------------------------------------------------------------------------------
def training_rows(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    recipes = TINY_RECIPES if args.tiny else RECIPES
    rows: list[dict[str, Any]] = []
    for recipe, config in recipes.items():
        flops: float | None = None
        for compiled in (False, True):
            for checkpointing in (False, True):
                row: dict[str, Any] = {"section": "train_step", "recipe": recipe, "compile": compiled,
                                       "checkpointing": checkpointing, "config": config}  # fmt: skip
                try:
                    free_memory(device)
                    opts = [
                        f"train.batch_size_per_gpu={args.batch_size}",
                        f"student.gradient_checkpointing={checkpointing}",
                    ]
                    runner = StepRunner(os.path.join(ROOT, config), opts, device)
                    if compiled:
                        compile_meta_arch(runner.model, backend=args.compile_backend)
                    if flops is None:  # model FLOPs of one step, counted once per recipe on the eager model
                        flops = runner.flops_per_step()
                    runner.timed_steps(args.warmup)  # includes compilation
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    times = runner.timed_steps(args.steps)
                    dtype = runner.model.precision[("student", "backbone")].param_dtype
                    precision = compute_precision(dtype, tf32=torch.backends.cuda.matmul.allow_tf32)
                    peak = peak_flops(device_name(device), precision) if device.type == "cuda" else None
                    row.update(
                        batch_size=args.batch_size,
                        dtype=str(dtype).removeprefix("torch."),
                        step_time_s=median(times),
                        peak_memory_GiB=peak_memory_gib(device),
                        tflops_per_step=flops / 1e12,
                        mfu=flops / median(times) / peak if peak else None,
                        status="ok",
                    )
                    del runner
                except Exception:  # every failure is reported in the table and fails the check
                    row.update(status="FAILED", error=traceback.format_exc(limit=4))
                rows.append(row)
    for row in rows:
        if row["recipe"] != "simdinov2" or row["status"] != "ok":
            continue
        base = next(r for r in rows if r["recipe"] == "dinov2" and (r["compile"], r["checkpointing"]) ==
                    (row["compile"], row["checkpointing"]))  # fmt: skip
        if base["status"] == "ok":
            row["time_ratio_vs_dinov2"] = row["step_time_s"] / base["step_time_s"]
            if row["peak_memory_GiB"] is not None:
                row["memory_ratio_vs_dinov2"] = row["peak_memory_GiB"] / base["peak_memory_GiB"]
    return rows


# ----------------------------------------------------------------------------------------------------------
# 2. backbone vs timm
# ----------------------------------------------------------------------------------------------------------
def timm_row(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    row: dict[str, Any] = {"section": "backbone_vs_timm"}
    try:
        import timm
        from timm.models.vision_transformer import VisionTransformer
    except ImportError as err:
        row.update(status="skipped", error=f"timm is not installed ({err}); pip install timm to run this row")
        return row
    try:
        free_memory(device)
        config = os.path.join(ROOT, (TINY_RECIPES if args.tiny else RECIPES)["simdinov2"])
        cfg = load_config(config, ["student.drop_path_rate=0.0"])
        ours, _, _ = build_model_from_cfg(cfg)
        s = cfg.student
        depth = s.depth if s.depth is not None else ours.n_blocks
        theirs = VisionTransformer(
            img_size=cfg.crops.global_crops_size, patch_size=s.patch_size, embed_dim=ours.embed_dim, depth=depth,
            num_heads=ours.num_heads, mlp_ratio=4.0, qkv_bias=s.qkv_bias, init_values=s.layerscale,
            reg_tokens=s.num_register_tokens, num_classes=0, global_pool="token",
        )  # fmt: skip
        models = {"ours": ours.to(device).train(), "timm": theirs.to(device).train()}
        n_params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        images = torch.randn(2 * args.batch_size, 3, cfg.crops.global_crops_size, cfg.crops.global_crops_size,
                             device=device)  # fmt: skip

        def step(name: str) -> float:
            model = models[name]
            model.zero_grad(set_to_none=True)
            synchronize(device)
            start = time.perf_counter()
            autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
            with autocast:
                cls = model(images, is_training=True)["x_norm_clstoken"] if name == "ours" else model(images)
            cls.float().square().mean().backward()
            synchronize(device)
            return time.perf_counter() - start

        for _ in range(args.warmup):
            step("ours"), step("timm")
        times: dict[str, list[float]] = {"ours": [], "timm": []}
        for _ in range(args.steps):
            for name in times:
                times[name].append(step(name))
        row.update(
            timm_version=timm.__version__,
            dtype=str(dtype).removeprefix("torch."),
            batch_size=2 * args.batch_size,
            ours_params_M=n_params["ours"] / 1e6,
            timm_params_M=n_params["timm"] / 1e6,
            ours_time_s=median(times["ours"]),
            timm_time_s=median(times["timm"]),
            time_ratio_ours_vs_timm=median(times["ours"]) / median(times["timm"]),
            status="ok",
        )
    except Exception:
        row.update(status="FAILED", error=traceback.format_exc(limit=4))
    return row


# ----------------------------------------------------------------------------------------------------------
# 3. tiny recipe: device vs CPU
# ----------------------------------------------------------------------------------------------------------
def tiny_losses(device: torch.device, batches: list[dict[str, Any]]) -> list[float]:
    """Losses of len(batches) training steps of the tiny recipe on `device` (constant schedules)."""
    runner = StepRunner(os.path.join(ROOT, TINY_RECIPE), [], device)
    cfg = runner.cfg
    lr = scaled_lr(cfg, 1)
    apply_optim_scheduler(runner.optimizer, lr=lr, wd=cfg.optim.weight_decay, last_layer_lr=lr)
    losses = []
    for batch in batches:
        on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        runner.optimizer.zero_grad(set_to_none=True)
        total, _ = runner.model.forward_backward(on_device, cfg.teacher.teacher_temp)
        clip_and_step(runner.model, runner.optimizer, cfg.optim.clip_grad)
        runner.model.update_teacher(cfg.teacher.momentum_teacher)
        losses.append(float(total))
    return losses


def tiny_recipe_row(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    row: dict[str, Any] = {"section": "tiny_recipe_device_vs_cpu", "config": TINY_RECIPE, "steps": args.tiny_steps}
    try:
        cfg = load_config(os.path.join(ROOT, TINY_RECIPE))
        generator_state = torch.get_rng_state()
        torch.manual_seed(1234)
        dtype = torch.float32
        batches = [synthetic_batch(cfg, dtype, torch.device("cpu")) for _ in range(args.tiny_steps)]
        torch.set_rng_state(generator_state)
        on_device = tiny_losses(device, batches)
        on_cpu = tiny_losses(torch.device("cpu"), batches)
        deviations = [abs(a - b) for a, b in zip(on_device, on_cpu, strict=True)]
        allowed = [args.loss_atol + args.loss_rtol * abs(b) for b in on_cpu]
        worst = max(range(len(deviations)), key=lambda i: deviations[i] / allowed[i])
        ok = all(math.isfinite(a) for a in on_device) and all(d <= t for d, t in zip(deviations, allowed, strict=True))
        row.update(
            first_loss_device=on_device[0],
            first_loss_cpu=on_cpu[0],
            last_loss_device=on_device[-1],
            last_loss_cpu=on_cpu[-1],
            max_abs_deviation=max(deviations),
            worst_step=worst,
            rtol=args.loss_rtol,
            atol=args.loss_atol,
            status="ok" if ok else "FAILED",
        )
        if not ok:
            row["error"] = (
                f"step {worst}: device {on_device[worst]:.6g} vs cpu {on_cpu[worst]:.6g} "
                f"(|diff| {deviations[worst]:.3g} > {allowed[worst]:.3g})"
            )
    except Exception:
        row.update(status="FAILED", error=traceback.format_exc(limit=4))
    return row


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------
def fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def print_table(rows: list[dict[str, Any]], header: str) -> None:
    print(header)
    print("| section | variant | status | step / fwd+bwd time s | peak mem GiB | MFU | ratio | notes |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if row["section"] == "train_step":
            variant = (f"{row['recipe']} {'compiled' if row['compile'] else 'eager'}"
                       f"{' + act. ckpt' if row['checkpointing'] else ''}")  # fmt: skip
            ratio = row.get("time_ratio_vs_dinov2")
            notes = (f"B={row.get('batch_size')}, {row.get('dtype')}, {fmt(row.get('tflops_per_step'), '.4g')} "
                     f"TFLOP/step; SimDINOv2/DINOv2 memory {fmt(row.get('memory_ratio_vs_dinov2'))}")  # fmt: skip
            cells = [fmt(row.get("step_time_s")), fmt(row.get("peak_memory_GiB"), ".2f"), fmt(row.get("mfu"), ".3f"),
                     f"SimDINOv2/DINOv2 time {fmt(ratio)}" if ratio is not None else "-", notes]  # fmt: skip
        elif row["section"] == "backbone_vs_timm":
            variant = "SimDINOv2 backbone vs timm ViT"
            cells = [f"{fmt(row.get('ours_time_s'))} vs {fmt(row.get('timm_time_s'))}", "-", "-",
                     f"ours/timm {fmt(row.get('time_ratio_ours_vs_timm'))}",
                     f"timm {row.get('timm_version', '-')}, params {fmt(row.get('ours_params_M'), '.1f')}M vs "
                     f"{fmt(row.get('timm_params_M'), '.1f')}M"]  # fmt: skip
        else:
            variant = f"tiny recipe, {row['steps']} steps, device vs CPU"
            cells = ["-", "-", "-", f"max |loss diff| {fmt(row.get('max_abs_deviation'), '.2e')}",
                     f"last loss {fmt(row.get('last_loss_device'), '.5f')} vs {fmt(row.get('last_loss_cpu'), '.5f')}, "
                     f"rtol {row.get('rtol')} atol {row.get('atol')}"]  # fmt: skip
        if row["status"] != "ok":
            cells[-1] = f"{cells[-1]}; {row.get('error', '').strip().splitlines()[-1] if row.get('error') else ''}"
        print(f"| {row['section']} | {variant} | {row['status']} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models everywhere (the CPU test of this script)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default 32, --tiny 4)")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per row (default 5, --tiny 1)")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured steps per row (default 3, --tiny 1)")
    parser.add_argument("--tiny-steps", type=int, default=None, help="tiny-recipe steps (default 50, --tiny 2)")
    parser.add_argument("--loss-rtol", type=float, default=0.02, help="device vs CPU loss tolerance (relative)")
    parser.add_argument("--loss-atol", type=float, default=0.02, help="device vs CPU loss tolerance (absolute)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (--tiny: aot_eager)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="fail when the whole check takes longer")
    parser.add_argument("--json-out", default="gpu_check.json", help="where to write every row as JSON")
    args = parser.parse_args()
    defaults = dict(batch_size=(4, 32), steps=(1, 5), warmup=(1, 3), tiny_steps=(2, 50))
    for name, (tiny, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    if args.tiny and args.compile_backend == "inductor" and args.device == "cpu":
        args.compile_backend = "aot_eager"  # the CPU test checks the plumbing; inductor numerics have their own test
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but CUDA is not available", file=sys.stderr)
        return 1
    distributed.enable()
    allow_tf32_matmuls()  # as training does
    start = time.perf_counter()
    sections: list[Callable[[argparse.Namespace, torch.device], Any]] = [training_rows, timm_row, tiny_recipe_row]
    rows: list[dict[str, Any]] = []
    for section in sections:
        result = section(args, device)
        rows += result if isinstance(result, list) else [result]
    elapsed = time.perf_counter() - start
    over_budget = elapsed > args.budget_s
    environment = {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "tiny": args.tiny,
        "elapsed_s": elapsed,
        "budget_s": args.budget_s,
    }
    failed = [row for row in rows if row["status"] == "FAILED"]
    header = (f"gpu_check on {environment['device']} (torch {environment['torch']}), {elapsed:.0f} s"
              f"{' - OVER the budget of %.0f s' % args.budget_s if over_budget else ''}")  # fmt: skip
    print_table(rows, header)
    with open(args.json_out, "w") as handle:
        json.dump(
            {"environment": environment, "rows": rows, "passed": not failed and not over_budget}, handle, indent=1
        )
    print(f"wrote {args.json_out}; {'PASSED' if not failed and not over_budget else 'FAILED'}")
    for row in failed:
        print(f"--- {row['section']} {row.get('recipe', '')}:\n{row.get('error', '')}", file=sys.stderr)
    return 0 if not failed and not over_budget else 1


if __name__ == "__main__":
    sys.exit(main())
