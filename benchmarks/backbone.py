"""Forward+backward throughput of our ViT-S/16 and ViT-B/16 against timm's, measured alternately in one run.

    python benchmarks/backbone.py                      # CPU (and CUDA when present), short run
    python benchmarks/backbone.py --batch-size 64 --reps 20 --devices cuda

Both models are built with the same shape and no LayerScale (timm's `vit_*_patch16_224` have none), with
timm's classifier removed (`num_classes=0`), so both return the [B, D] CLS embedding; the loss is its sum.
Repetitions alternate ours / timm so that machine noise hits both alike; the median time per
repetition gives images/s and the ratio ours / timm (target >= 0.95).
"""

import argparse
import pathlib
import statistics
import sys
import time
from typing import Callable

import timm
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dinov2.models.vision_transformer import vit_base, vit_small  # noqa: E402

PAIRS: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "ViT-S/16": (lambda: vit_small(patch_size=16, img_size=224), "vit_small_patch16_224"),
    "ViT-B/16": (lambda: vit_base(patch_size=16, img_size=224), "vit_base_patch16_224"),
}


def step(model: nn.Module, images: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    model(images).sum().backward()


def timed_step(model: nn.Module, images: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step(model, images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def compare(name: str, device: torch.device, batch_size: int, reps: int, warmup: int, dtype: torch.dtype) -> float:
    build_ours, timm_name = PAIRS[name]
    torch.manual_seed(0)
    ours = build_ours().to(device).train()
    theirs = timm.create_model(timm_name, pretrained=False, num_classes=0).to(device).train()
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    images = torch.randn(batch_size, 3, 224, 224, device=device)
    times: dict[str, list[float]] = {"ours": [], "timm": []}
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        for _ in range(warmup):
            step(ours, images)
            step(theirs, images)
        for _ in range(reps):
            times["ours"].append(timed_step(ours, images, device))
            times["timm"].append(timed_step(theirs, images, device))
    ours_ips = batch_size / statistics.median(times["ours"])
    timm_ips = batch_size / statistics.median(times["timm"])
    ratio = ours_ips / timm_ips
    print(f"{device.type:4s} {name}  batch {batch_size}  {str(dtype).removeprefix('torch.')}  "
          f"ours {ours_ips:8.1f} img/s ({n_ours / 1e6:.1f} M params)  timm {timm_ips:8.1f} img/s "
          f"({n_theirs / 1e6:.1f} M params)  ratio {ratio:.3f}")  # fmt: skip
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs="*", default=None, help="default: cpu, plus cuda when available")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 2 on CPU, 64 on CUDA")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per model (default: 3 CPU, 20 CUDA)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--models", nargs="*", default=list(PAIRS), choices=list(PAIRS))
    args = parser.parse_args()
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} CPU threads")
    for device_name in devices:
        device = torch.device(device_name)
        on_cuda = device.type == "cuda"
        batch_size = args.batch_size or (64 if on_cuda else 2)
        reps = args.reps or (20 if on_cuda else 3)
        dtype = torch.bfloat16 if on_cuda else torch.float32
        for name in args.models:
            compare(name, device, batch_size, reps, args.warmup if not on_cuda else max(args.warmup, 3), dtype)


if __name__ == "__main__":
    main()
