import pytest
import torch

from benchmarks.peak_flops import DEVICE_PARTS, compute_precision, peak_flops


def test_each_h100_part_has_its_own_peak():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)  # SXM
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == pytest.approx(756.5e12)
    assert peak_flops("NVIDIA H100 NVL", "bf16") == pytest.approx(835.5e12)
    assert peak_flops("NVIDIA H200", "bf16") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == peak_flops("NVIDIA A100 80GB PCIe", "bf16") == 312e12


def test_the_peak_follows_the_precision():
    name = "NVIDIA H100 80GB HBM3"
    assert peak_flops(name, "tf32") == pytest.approx(peak_flops(name, "bf16") / 2)
    assert peak_flops(name, "fp32") == pytest.approx(66.9e12)
    assert peak_flops(name, "fp16") == peak_flops(name, "bf16")
    assert compute_precision(torch.float32, tf32=True) == "tf32"
    assert compute_precision(torch.float32, tf32=False) == "fp32"
    assert compute_precision(torch.bfloat16, tf32=True) == "bf16"
    assert compute_precision(torch.float16, tf32=False) == "fp16"


def test_unknown_or_partial_names_have_no_peak():
    assert peak_flops("NVIDIA GeForce RTX 4090", "bf16") is None
    assert peak_flops("H100", "bf16") is None  # no substring matching: the part decides the peak
    assert all(peak_flops(name, "tf32") for name in DEVICE_PARTS)
    with pytest.raises(ValueError, match="precision='int8'"):
        peak_flops("NVIDIA H100 PCIe", "int8")
