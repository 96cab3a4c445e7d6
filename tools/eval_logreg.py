"""Logistic-regression evaluation (DINOv2 protocol) of a backbone's CLS features, C chosen on a held-out split.

    python tools/eval_logreg.py --config-file RUN/config.yaml \
        --pretrained-weights RUN/eval/training_N/teacher_checkpoint.pth \
        --train-dataset ImageNet:split=TRAIN:root=R:extra=E --val-dataset ImageNet:split=VAL:root=R:extra=E \
        --output-dir RUN/eval/training_N/logreg

Features are extracted on every rank and gathered; the C grid is split over the ranks. cuML is used when it is
installed (`--backend auto`), scikit-learn otherwise. Results: one JSON line appended to
`<output-dir>/results_eval_log_regression.json`.
"""

import argparse
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # a checkout runs without installing

from dinov2.data import make_classification_eval_transform, make_dataset  # noqa: E402
from dinov2.distributed import is_main_process  # noqa: E402
from dinov2.eval.cli import add_eval_args, check_eval_args, setup_eval  # noqa: E402
from dinov2.eval.log_regression import DEFAULT_C_VALUES, DEFAULT_MAX_ITER, eval_log_regression  # noqa: E402
from dinov2.eval.metrics import METRIC_TYPES  # noqa: E402
from dinov2.eval.utils import extract_features  # noqa: E402
from dinov2.run.submit import add_submit_args, run_or_submit  # noqa: E402

RESULTS_FILENAME = "results_eval_log_regression.json"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DINOv2 logistic-regression evaluation", add_help=add_help)
    add_eval_args(parser, batch_size=256, num_workers=0, resize_size=224, crop_size=224)
    group = parser.add_argument_group("logistic regression")
    group.add_argument("--finetune-dataset-str", default=None, help="dataset on which C is chosen (and then fitted)")
    group.add_argument("--finetune-on-val", action="store_true", help="choose C on the validation set")
    group.add_argument("--metric-type", choices=METRIC_TYPES, default="mean_accuracy")
    group.add_argument(
        "--train-features-device", choices=["cpu", "device"], default="cpu", help="where gathered features live"
    )
    group.add_argument("--train-dtype", choices=["float32", "float64"], default="float64")
    group.add_argument("--max-train-iters", type=int, default=DEFAULT_MAX_ITER)
    group.add_argument(
        "--c-values", type=float, nargs="+", default=list(DEFAULT_C_VALUES), help="default: 10**linspace(-6, 5, 45)"
    )
    group.add_argument("--backend", choices=["auto", "sklearn", "cuml"], default="auto")
    add_submit_args(parser)
    return parser


def check(args: argparse.Namespace) -> None:
    """The flags, checked before evaluating or submitting (see `dinov2.eval.cli.check_eval_args`)."""
    finetune = [args.finetune_dataset_str] if args.finetune_dataset_str is not None else []
    check_eval_args(args, extra_datasets=finetune)


def main(args: argparse.Namespace) -> dict[str, float]:
    setup = setup_eval(args)
    transform = make_classification_eval_transform(resize_size=args.resize_size, crop_size=args.crop_size)
    extract = dict(
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=setup.device,
        autocast_dtype=setup.autocast_dtype,
        gather_on_cpu=args.train_features_device == "cpu",
    )
    features = {}
    named = {"train": args.train_dataset, "val": args.val_dataset, "finetune": args.finetune_dataset_str}
    for split, dataset_str in named.items():
        if dataset_str is not None:
            dataset = make_dataset(dataset_str=dataset_str, transform=transform)
            features[split] = extract_features(setup.model, dataset, description=split, **extract)
    results = eval_log_regression(
        *features["train"],
        *features["val"],
        finetune=features.get("finetune"),
        finetune_on_val=args.finetune_on_val,
        c_values=args.c_values,
        max_iter=args.max_train_iters,
        dtype=args.train_dtype,
        metric_type=args.metric_type,
        backend=args.backend,
    )
    if is_main_process():
        with open(os.path.join(args.output_dir, RESULTS_FILENAME), "a") as f:
            f.write(json.dumps(results) + "\n")
    return results


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    results = run_or_submit(main, args, name="dinov2:eval_logreg", check=check, echo=print)
    if not args.submit:
        for key, value in results.items():
            print(f"{key}: {value}")
