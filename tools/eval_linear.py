"""Linear-probe evaluation (DINOv2 protocol): a grid of linear heads on a frozen backbone, best head selected.

    python tools/eval_linear.py --config-file RUN/config.yaml \
        --pretrained-weights RUN/eval/training_N/teacher_checkpoint.pth \
        --train-dataset ImageNet:split=TRAIN:root=R:extra=E --val-dataset ImageNet:split=VAL:root=R:extra=E \
        --output-dir RUN/eval/training_N/linear

The grid covers --learning-rates x --n-last-blocks x --avgpool; every head is evaluated on the validation set
each --eval-period-iterations and at the end; the best one is written to `<output-dir>/best_classifier.pth`
and the results are appended to `<output-dir>/results_eval_linear.json`. A rerun resumes from the last
checkpoint in --output-dir unless --no-resume.
"""

import argparse
import pathlib
import sys
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # a checkout runs without installing

from dinov2.data import make_classification_eval_transform, make_classification_train_transform, make_dataset  # noqa: E402
from dinov2.eval.cli import add_eval_args, check_eval_args, setup_eval  # noqa: E402
from dinov2.eval.linear import (
    DEFAULT_LEARNING_RATES,
    DEFAULT_N_LAST_BLOCKS,
    EvalDataset,
    LinearEvalSettings,
    eval_linear,
)
from dinov2.eval.metrics import METRIC_TYPES, check_metric_type  # noqa: E402
from dinov2.run.submit import add_submit_args, run_or_submit  # noqa: E402

AVGPOOL_CHOICES = {"both": (False, True), "off": (False,), "on": (True,)}
TRAIN_AUGMENTATIONS = ("random-resized-crop", "none")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DINOv2 linear-probe evaluation", add_help=add_help)
    add_eval_args(parser, batch_size=128, num_workers=8, resize_size=256, crop_size=224)
    defaults = LinearEvalSettings()
    group = parser.add_argument_group("linear probe")
    group.add_argument("--test-datasets", nargs="*", default=[], help="extra datasets scored by the best head")
    group.add_argument("--epochs", type=int, default=defaults.epochs)
    group.add_argument(
        "--epoch-length", type=int, default=defaults.epoch_length, help="iterations per epoch; <= 0: one pass"
    )
    group.add_argument(
        "--save-checkpoint-frequency", type=int, default=defaults.save_checkpoint_frequency, help="in epochs"
    )
    group.add_argument(
        "--eval-period-iterations", type=int, default=defaults.eval_period_iterations, help="0: at the end only"
    )
    group.add_argument(
        "--learning-rates",
        type=float,
        nargs="+",
        default=list(DEFAULT_LEARNING_RATES),
        help="base lrs of the head grid, each scaled by batch x processes / 256 (default: the official 1e-5 ... 0.1)",
    )
    group.add_argument(
        "--train-augmentation",
        choices=TRAIN_AUGMENTATIONS,
        default="random-resized-crop",
        help="training images: the official RandomResizedCrop (scale 0.08-1) + horizontal flip, or none: the "
        "evaluation transform (for tiny images such as 32 px digits, whose content those crops destroy)",
    )
    group.add_argument(
        "--n-last-blocks", type=int, nargs="+", default=list(DEFAULT_N_LAST_BLOCKS), help="CLS of the last n blocks"
    )
    group.add_argument(
        "--avgpool", choices=sorted(AVGPOOL_CHOICES), default="both", help="append the mean patch token: off/on/both"
    )
    group.add_argument("--no-resume", action="store_true", help="ignore checkpoints in --output-dir")
    group.add_argument("--val-metric-type", choices=METRIC_TYPES, default="mean_accuracy")
    group.add_argument(
        "--test-metric-types", nargs="*", default=None, help="one per --test-datasets (default: --val-metric-type)"
    )
    group.add_argument("--classifier-fpath", default=None, help="head-grid checkpoint to start from")
    group.add_argument("--val-class-mapping-fpath", default=None, help=".npy model-class index per val label")
    group.add_argument(
        "--test-class-mapping-fpaths", nargs="*", default=None, help="one .npy (or None) per --test-datasets"
    )
    group.add_argument("--num-classes", type=int, default=None, help="default: max train target + 1")
    group.add_argument("--seed", type=int, default=defaults.seed, help="head initialisation and sampler seed")
    add_submit_args(parser)
    return parser


def _load_mapping(path: str | None) -> torch.Tensor | None:
    if path is None or path == "None":
        return None
    return torch.from_numpy(np.load(path).astype(np.int64))


def _per_test(values: list[str] | None, n_tests: int, default: str | None, flag: str) -> list[str | None]:
    if values is None:
        return [default] * n_tests
    if len(values) != n_tests:
        raise ValueError(f"{flag} has {len(values)} values for {n_tests} --test-datasets; give one per dataset")
    return list(values)


def make_train_transform(args: argparse.Namespace) -> Callable:
    """The transform of the training images named by `--train-augmentation` (PIL image -> [3, crop, crop])."""
    if args.train_augmentation == "random-resized-crop":
        return make_classification_train_transform(crop_size=args.crop_size)
    return make_classification_eval_transform(resize_size=args.resize_size, crop_size=args.crop_size)


def check(args: argparse.Namespace) -> None:
    """The flags, checked before evaluating or submitting (see `dinov2.eval.cli.check_eval_args`)."""
    check_eval_args(args, extra_datasets=args.test_datasets)
    n_tests = len(args.test_datasets)
    _per_test(args.test_metric_types, n_tests, args.val_metric_type, "--test-metric-types")
    _per_test(args.test_class_mapping_fpaths, n_tests, None, "--test-class-mapping-fpaths")


def main(args: argparse.Namespace) -> dict:
    setup = setup_eval(args)
    eval_transform = make_classification_eval_transform(resize_size=args.resize_size, crop_size=args.crop_size)
    train_transform = make_train_transform(args)
    train_dataset = make_dataset(dataset_str=args.train_dataset, transform=train_transform)
    val = EvalDataset(
        name=args.val_dataset,
        dataset=make_dataset(dataset_str=args.val_dataset, transform=eval_transform),
        metric_type=check_metric_type(args.val_metric_type, "--val-metric-type"),
        class_mapping=_load_mapping(args.val_class_mapping_fpath),
    )
    n_tests = len(args.test_datasets)
    metric_types = _per_test(args.test_metric_types, n_tests, args.val_metric_type, "--test-metric-types")
    mappings = _per_test(args.test_class_mapping_fpaths, n_tests, None, "--test-class-mapping-fpaths")
    tests = [
        EvalDataset(
            name=name,
            dataset=make_dataset(dataset_str=name, transform=eval_transform),
            metric_type=check_metric_type(str(metric_type), "--test-metric-types"),
            class_mapping=_load_mapping(mapping),
        )
        for name, metric_type, mapping in zip(args.test_datasets, metric_types, mappings, strict=True)
        if name != args.val_dataset
    ]
    settings = LinearEvalSettings(
        epochs=args.epochs,
        epoch_length=args.epoch_length,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        save_checkpoint_frequency=args.save_checkpoint_frequency,
        eval_period_iterations=args.eval_period_iterations,
        learning_rates=tuple(args.learning_rates),
        n_last_blocks_list=tuple(args.n_last_blocks),
        avgpool_list=AVGPOOL_CHOICES[args.avgpool],
        resume=not args.no_resume,
        classifier_fpath=args.classifier_fpath,
        seed=args.seed,
    )
    return eval_linear(
        setup.model,
        train_dataset,
        val,
        settings=settings,
        output_dir=args.output_dir,
        device=setup.device,
        autocast_dtype=setup.autocast_dtype,
        num_classes=args.num_classes,
        test_datasets=tests,
    )


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    results = run_or_submit(main, args, name="dinov2:eval_linear", check=check, echo=print)
    if not args.submit:
        print(f"best classifier: {results['best_classifier']}")
