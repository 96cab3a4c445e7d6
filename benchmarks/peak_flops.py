"""Dense tensor-core peak FLOP/s of one GPU by exact device name and compute dtype (vendor data sheets).

    from peak_flops import peak_flops
    peak = peak_flops(torch.cuda.get_device_name(), torch.bfloat16)  # None for an unlisted GPU

Only exact `torch.cuda.get_device_name()` strings are listed (an SXM and a PCIe part of the same GPU differ
by up to 30 %); an unlisted name returns None, so no MFU is reported rather than a wrong one. fp32 means
TF32 tensor-core matmuls (what training enables); values without sparsity.
"""

import torch

TFLOPS = 1e12


def _peaks(half: float, tf32: float) -> dict[torch.dtype, float]:
    return {torch.bfloat16: half * TFLOPS, torch.float16: half * TFLOPS, torch.float32: tf32 * TFLOPS}


# exact device name -> {compute dtype: dense peak FLOP/s}
PEAKS: dict[str, dict[torch.dtype, float]] = {
    "NVIDIA H100 80GB HBM3": _peaks(989.4, 494.7),  # SXM5
    "NVIDIA H100 PCIe": _peaks(756.0, 378.0),
    "NVIDIA H100 NVL": _peaks(835.5, 417.8),
    "NVIDIA H200": _peaks(989.4, 494.7),  # SXM
    "NVIDIA A100-SXM4-80GB": _peaks(312.0, 156.0),
    "NVIDIA A100-SXM4-40GB": _peaks(312.0, 156.0),
    "NVIDIA A100 80GB PCIe": _peaks(312.0, 156.0),
    "NVIDIA A100-PCIE-40GB": _peaks(312.0, 156.0),
}


def peak_flops(device_name: str, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of `device_name` (exact `torch.cuda.get_device_name()`) computing in `dtype`, or None."""
    return PEAKS.get(device_name, {}).get(dtype)
