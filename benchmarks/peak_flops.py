"""Dense peak FLOP/s of one GPU by exact device name and compute precision, for model FLOP utilisation (MFU).

    from benchmarks.peak_flops import compute_precision, peak_flops
    peak = peak_flops(torch.cuda.get_device_name(), compute_precision(torch.bfloat16, tf32=False))  # or None

Values are the vendors' data-sheet numbers without 2:4 sparsity (the sheets print the sparse figure, twice
these, first). Parts are matched by the exact name `torch.cuda.get_device_name()` reports, because one
marketing name covers several peaks (H100 SXM 989 vs PCIe 756 vs NVL 835 TFLOP/s in bf16). A name missing
from the table has no peak (None): callers print MFU as unknown and take the peak from a flag
(`--peak-tflops` in benchmarks/train_step.py).
"""

import torch

Precision = str  # one of PRECISIONS
PRECISIONS = ("bf16", "fp16", "tf32", "fp32")

# Dense TFLOP/s per part: tensor-core bf16 / fp16 / tf32 matmuls, and plain fp32 (CUDA cores).
_PART_TFLOPS: dict[str, dict[Precision, float]] = {
    "H100 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H200 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H200 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "GH200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
}

# `torch.cuda.get_device_name()` -> part. A100 SXM and PCIe have the same peaks.
DEVICE_PARTS: dict[str, str] = {
    "NVIDIA H100 80GB HBM3": "H100 SXM",
    "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H100 NVL": "H100 NVL",
    "NVIDIA H200": "H200 SXM",
    "NVIDIA H200 NVL": "H200 NVL",
    "NVIDIA GH200 480GB": "GH200",
    "NVIDIA A100-SXM4-40GB": "A100",
    "NVIDIA A100-SXM4-80GB": "A100",
    "NVIDIA A100-PCIE-40GB": "A100",
    "NVIDIA A100 80GB PCIe": "A100",
}


def compute_precision(param_dtype: torch.dtype, *, tf32: bool) -> Precision:
    """The precision the matmuls of a model computing in `param_dtype` run in.

    fp32 runs on TF32 tensor cores when `tf32` (`torch.backends.cuda.matmul.allow_tf32`, which training sets).
    """
    if param_dtype == torch.bfloat16:
        return "bf16"
    if param_dtype == torch.float16:
        return "fp16"
    if param_dtype == torch.float32:
        return "tf32" if tf32 else "fp32"
    raise ValueError(f"no peak for compute dtype {param_dtype}; expected bf16, fp16 or fp32")


def peak_flops(device_name: str, precision: Precision) -> float | None:
    """Dense peak FLOP/s of `device_name` (exact `torch.cuda.get_device_name()`) at `precision`, None if unknown."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {list(PRECISIONS)}")
    part = DEVICE_PARTS.get(device_name)
    return None if part is None else _PART_TFLOPS[part][precision] * 1e12
