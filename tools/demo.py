"""The CPU demo (`make demo`): a tiny DINOv2 vs a tiny SimDINOv2 on scikit-learn's Digits, in minutes.

    python tools/demo.py                      # what `make demo` runs; writes demo_output/
    python tools/demo.py --iters 50 --output-dir /tmp/demo   # shorter

Trains configs/tiny/dinov2_digits.yaml and configs/tiny/simdinov2_digits_demo.yaml at the same time (one CPU
thread each), both with the demo recipe's patch size 8 (same seed, data order, backbone and batch);
evaluates the teacher with k-NN after 0 (random init), 25 %, 50 %, 75 % and 100 % of the steps; writes the
A/B report (`report.md`, plots) and the CLS attention maps of both final teachers on Digits images.
Nothing is downloaded: Digits ships with scikit-learn. Rerunning reuses finished runs in the output directory
(delete it to train again). The numbers are one seed on this machine: float results differ between CPUs and
200 steps amplify the differences; `benchmarks/paper_claims.py` measures the spread over seeds.
"""

import argparse
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from dinov2.compare.collect import ArmResult  # noqa: E402
from dinov2.compare.launch import Arm, common_overrides  # noqa: E402
from dinov2.compare.pipeline import EvalOptions, run_comparison  # noqa: E402
from dinov2.compare.report import FINAL_ROWS, SUMMARY_FILENAME, format_value, machine_description  # noqa: E402
from dinov2.data import make_dataset  # noqa: E402
from dinov2.eval.attention_maps import attention_overlays, save_attention_figure  # noqa: E402
from dinov2.logging import setup_logging  # noqa: E402
from dinov2.models import build_model_from_cfg  # noqa: E402
from dinov2.utils.checkpoint import load_pretrained_backbone  # noqa: E402
from simdinov2.train.build import build_meta_arch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DINOV2_RECIPE = REPO / "configs" / "tiny" / "dinov2_digits.yaml"
SIMDINOV2_RECIPE = REPO / "configs" / "tiny" / "simdinov2_digits_demo.yaml"
# The demo recipe's change to the official tiny recipe (patch 8 instead of 4), applied to both arms so that the
# two share the backbone and differ only in their recipes (objective, heads, centering, KoLeo, EMA, LayerScale,
# blur probabilities, lr warm-up: the report lists every key).
SHARED_OVERRIDES = ("student.patch_size=8",)
ATTENTION_PNG = "attention_digits.png"
N_ATTENTION_IMAGES = 8


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--output-dir",
        default=str(REPO / "demo_output"),
        help="where runs and report go (default: demo_output/ in the repository)",
    )
    parser.add_argument("--iters", type=int, default=200, help="training steps per recipe (a multiple of 10)")
    parser.add_argument("--dinov2-config", default=str(DINOV2_RECIPE), help="DINOv2 recipe")
    parser.add_argument("--simdinov2-config", default=str(SIMDINOV2_RECIPE), help="SimDINOv2 recipe")
    return parser


def attention_figure(results: list[ArmResult], output_dir: Path) -> list[tuple[str, Path]]:
    """CLS attention of every arm's final teacher on the first Digits VAL images (32 px, patch 4)."""
    dataset = make_dataset(dataset_str="Digits:split=VAL")
    images = [dataset[index][0] for index in range(N_ATTENTION_IMAGES)]
    labels = [f"digit {dataset[index][1]}" for index in range(N_ATTENTION_IMAGES)]
    rows = []
    for result in results:
        if not result.run.exports:
            continue
        step, path = result.run.exports[-1]
        model, _ = build_model_from_cfg(result.run.config, only_teacher=True)  # type: ignore[misc]
        load_pretrained_backbone(model, path)
        size = int(result.run.config.crops.global_crops_size)
        with torch.inference_mode():
            overlays = attention_overlays(model.eval(), images, size=size, device=torch.device("cpu"))
        rows.append((f"{result.label}\nstep {step}", overlays))
    png = output_dir / ATTENTION_PNG
    save_attention_figure(rows, labels, str(png), title="last-layer CLS attention (mean over heads)", show_images=True)
    print(f"attention maps: {png}", flush=True)
    return [("CLS attention maps of the final teachers", png)]


def print_table(output_dir: Path) -> None:
    summary = json.loads((output_dir / SUMMARY_FILENAME).read_text())
    arms = summary["arms"]
    width = max(len(title) for _, title, _ in FINAL_ROWS)
    print("", flush=True)
    print(f"{'':{width}}  " + "  ".join(f"{arm['label']:>22}" for arm in arms))
    for key, title, fmt in FINAL_ROWS:
        print(f"{title:{width}}  " + "  ".join(f"{format_value(arm[key], fmt):>22}" for arm in arms))


def main(args: argparse.Namespace) -> Path:
    start = time.time()
    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir / "compare_logs")
    print(f"SimDINOv2 demo on {machine_description()}", flush=True)
    print(f"training {args.iters} steps of each recipe on Digits (1400 images, 32 px), then k-NN on 397 held out")
    print(f"both arms get: {' '.join(SHARED_OVERRIDES)}", flush=True)
    config_files = [Path(args.dinov2_config).resolve(), Path(args.simdinov2_config).resolve()]
    overrides = common_overrides(config_files, SHARED_OVERRIDES, train_dataset=None, iters=args.iters, seed=None)
    arms = [
        Arm(name="dinov2", label="DINOv2", config_file=config_files[0], overrides=tuple(overrides)),
        Arm(name="simdinov2", label="SimDINOv2", config_file=config_files[1], overrides=tuple(overrides)),
    ]
    options = EvalOptions(train_dataset=None, val_dataset=None, device=torch.device("cpu"))
    report = run_comparison(
        arms,
        output_dir,
        options,
        command=" ".join(["python", "tools/demo.py", *sys.argv[1:]]),
        echo=functools.partial(print, flush=True),
        meta_arch_factory=build_meta_arch,
        parallel=True,
        extra_images=functools.partial(attention_figure, output_dir=output_dir),
    )
    print_table(output_dir)
    print("")
    print("Float results differ between CPUs and 200 steps amplify it: compare these numbers with the mean and")
    print("spread over seeds in the README's demo table (benchmarks/paper_claims.py), not with a single run.")
    print(f"report:  {report}")
    for png in sorted(output_dir.glob("*.png")):
        print(f"figure:  {png}")
    print(f"runs:    {output_dir / 'dinov2'}  {output_dir / 'simdinov2'}")
    print(f"demo finished in {time.time() - start:.0f} s", flush=True)
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
    logging.shutdown()
