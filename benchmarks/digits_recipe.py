"""Train a tiny recipe on Digits on CPU and report the teacher's k-NN accuracy over training.

    python benchmarks/digits_recipe.py --config-file configs/tiny/simdinov2_digits_demo.yaml --output-dir runs/demo
    python benchmarks/digits_recipe.py --config-file configs/tiny/simdinov2_digits.yaml --output-dir runs/official
    python benchmarks/digits_recipe.py --evaluate-only --output-dir runs/demo     # re-evaluate the exports

Training is `dinov2.train.train.main` with `simdinov2.train.build.build_meta_arch` (exactly what
`tools/train.py` runs); the recipe's `evaluation.eval_period_iterations` sets which teacher exports are
evaluated. Protocol (docs/simdinov2.md): teacher `x_norm_clstoken` of the un-augmented 32x32 images
(ImageNet normalisation), weighted k-NN (cosine, k = 20, weights exp(s / 0.07)), Digits TRAIN (1400) ->
VAL (397), plain accuracy; effective rank = exp(entropy of the normalised singular values) of the
uncentred (centred) VAL features. Step 0 is the random-init teacher, rebuilt with the run's seed in the
order `main` uses (seed, dataset, model), so it is the teacher the run started from.
"""

import argparse
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from dinov2.data import make_dataset  # noqa: E402
from dinov2.data.transforms import make_classification_eval_transform  # noqa: E402
from dinov2.eval.knn import knn_classify  # noqa: E402
from dinov2.train.ssl_meta_arch import effective_rank  # noqa: E402
from dinov2.train.train import build_dataset, fix_random_seeds, get_args_parser, main  # noqa: E402
from dinov2.utils.config import load_config  # noqa: E402
from simdinov2.train.build import build_meta_arch  # noqa: E402


@torch.no_grad()
def digits_features(backbone: nn.Module, split: str) -> tuple[Tensor, Tensor]:
    """Unit-norm teacher CLS features [N, D] and labels [N] of the un-augmented Digits `split` images."""
    dataset = make_dataset(
        dataset_str=f"Digits:split={split}",
        transform=make_classification_eval_transform(resize_size=32, crop_size=32),
    )
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    backbone.eval()
    features = torch.cat([backbone(chunk) for chunk in images.split(256)])
    return features, labels


def knn_report(backbone: nn.Module) -> dict[str, float]:
    train_features, train_labels = digits_features(backbone, "TRAIN")
    val_features, val_labels = digits_features(backbone, "VAL")
    scores = knn_classify(
        nn.functional.normalize(train_features, dim=-1),
        train_labels,
        nn.functional.normalize(val_features, dim=-1),
        ks=[20],
        temperature=0.07,
        num_classes=10,
        batch_size=512,
        device=torch.device("cpu"),
    )[20]
    return {
        "knn_top1": 100.0 * float((scores.argmax(dim=1) == val_labels).float().mean()),
        "eff_rank": float(effective_rank(val_features)),
        "eff_rank_centred": float(effective_rank(val_features - val_features.mean(dim=0))),
    }


def evaluate_run(output_dir: str) -> list[dict[str, float]]:
    """k-NN of the initial teacher and of every `eval/training_<it>/teacher_checkpoint.pth` export."""
    cfg = load_config(os.path.join(output_dir, "config.yaml"))
    fix_random_seeds(cfg.train.seed)  # rank 0's seed, then the dataset, then the model, as in main()
    build_dataset(cfg)
    model = build_meta_arch(cfg)
    rows = [{"step": 0, **knn_report(model.teacher["backbone"])}]
    exports = glob.glob(os.path.join(output_dir, "eval", "training_*", "teacher_checkpoint.pth"))
    for path in sorted(exports, key=lambda p: int(re.findall(r"training_(\d+)", p)[-1])):
        iteration = int(re.findall(r"training_(\d+)", path)[-1])
        model.teacher.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["teacher"])
        rows.append({"step": iteration + 1, **knn_report(model.teacher["backbone"])})
    return rows


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", help="tiny recipe to train (not needed with --evaluate-only)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--evaluate-only", action="store_true", help="only evaluate the exports of --output-dir")
    parser.add_argument("opts", nargs="*", help="config overrides key=value")
    args = parser.parse_args()
    if not args.evaluate_only:
        if args.config_file is None:
            parser.error("--config-file is required unless --evaluate-only")
        train_args = get_args_parser().parse_args(
            ["--config-file", args.config_file, "--output-dir", args.output_dir, "--no-resume", *args.opts]
        )
        main(train_args, meta_arch_factory=build_meta_arch)
    rows = evaluate_run(args.output_dir)
    print(f"{'step':>5} {'k-NN top-1 %':>13} {'eff. rank (centred)':>20}")
    for row in rows:
        print(f"{row['step']:>5} {row['knn_top1']:>13.1f} {row['eff_rank']:>10.1f} ({row['eff_rank_centred']:.1f})")
    with open(os.path.join(args.output_dir, "digits_knn.json"), "w") as file:
        json.dump(rows, file, indent=1)


if __name__ == "__main__":
    main_cli()
