"""How well `eval.maskcut.ncut.estimate_eigensolve_seconds` predicts the NCut solve time, side by side.

For each device and patch count P, prints the estimate (one timed dense solve at the calibration size, scaled by
(P / calibration) ** 3) next to the measured time of `second_smallest_eigenvectors(affinity_graph(features))`
on random features [B, P, 384] (per image: the batch time / B), and their ratio. `tools/eval_maskcut.py` warns
with this estimate before a run above 1,024 patches.

    python benchmarks/maskcut_eigensolve.py [--devices cpu cuda] [--patches 1024 2304 3600] [--batch 1 4]
"""

import argparse
import importlib.util
import pathlib
import time

import torch

NCUT = pathlib.Path(__file__).resolve().parents[1] / "eval" / "maskcut" / "ncut.py"


def load_ncut():
    """eval/maskcut/ncut.py alone (the package also imports pycocotools and the CRF, not needed here)."""
    spec = importlib.util.spec_from_file_location("maskcut_ncut", NCUT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_seconds(ncut, n_patches: int, batch: int, device: torch.device) -> float:
    """Per-image seconds of one NCut solve (affinity + batched eigh), after one warm-up call."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(batch, n_patches, 384, generator=generator).to(device)
    ncut.second_smallest_eigenvectors(ncut.affinity_graph(features[:1, :64], tau=0.15))
    synchronize(device)
    start = time.perf_counter()
    vectors = ncut.second_smallest_eigenvectors(ncut.affinity_graph(features, tau=0.15))
    float(vectors[0, 0])
    synchronize(device)
    return (time.perf_counter() - start) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs="+", default=["cpu"])
    parser.add_argument("--patches", type=int, nargs="+", default=[1024, 2304, 3600])
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    args = parser.parse_args()
    ncut = load_ncut()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for name in args.devices:
        device = torch.device(name)
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        for n_patches in args.patches:
            estimate = ncut.estimate_eigensolve_seconds(n_patches, device)
            for batch in args.batch:
                measured = measured_seconds(ncut, n_patches, batch, device)
                print(
                    f"{label:>24} P={n_patches:5d} batch {batch}: estimate {estimate:8.3f} s, measured "
                    f"{measured:8.3f} s per image, measured / estimate {measured / estimate:5.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
