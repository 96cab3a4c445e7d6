"""Weighted k-NN evaluation (DINOv2 protocol) of a backbone: a training run's teacher or a hub-format file.

    python tools/eval_knn.py --config-file RUN/config.yaml \
        --pretrained-weights RUN/eval/training_N/teacher_checkpoint.pth \
        --train-dataset ImageNet:split=TRAIN:root=R:extra=E --val-dataset ImageNet:split=VAL:root=R:extra=E \
        --output-dir RUN/eval/training_N/knn
    python tools/eval_knn.py --arch vit_large --patch-size 14 --weights dinov2_vitl14_pretrain.pth ...

Under torchrun / SLURM, features are extracted on every rank and gathered. Results: one JSON line appended to
`<output-dir>/results_eval_knn.json`.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # a checkout runs without installing

from dinov2.data import make_classification_eval_transform, make_dataset  # noqa: E402
from dinov2.eval.cli import add_eval_args, check_eval_args, setup_eval  # noqa: E402
from dinov2.eval.knn import DEFAULT_NB_KNN, DEFAULT_TEMPERATURE, eval_knn  # noqa: E402
from dinov2.run.submit import add_submit_args, run_or_submit  # noqa: E402


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DINOv2 k-NN evaluation", add_help=add_help)
    add_eval_args(parser, batch_size=256, num_workers=5, resize_size=256, crop_size=224)
    group = parser.add_argument_group("k-NN")
    group.add_argument(
        "--nb_knn", "--nb-knn", dest="nb_knn", type=int, nargs="+", default=list(DEFAULT_NB_KNN), help="k values"
    )
    group.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="voting softmax temperature")
    group.add_argument(
        "--gather-on-cpu", action="store_true", help="keep the gathered features in host memory (large train sets)"
    )
    group.add_argument(
        "--n-per-class-list",
        type=int,
        nargs="+",
        default=[-1],
        help="-1: full train set; n >= 0: n random train samples per class",
    )
    group.add_argument("--n-tries", type=int, default=1, help="random subsets per --n-per-class-list value")
    add_submit_args(parser)
    return parser


def main(args: argparse.Namespace) -> dict[str, float]:
    setup = setup_eval(args)
    transform = make_classification_eval_transform(resize_size=args.resize_size, crop_size=args.crop_size)
    train_dataset = make_dataset(dataset_str=args.train_dataset, transform=transform)
    val_dataset = make_dataset(dataset_str=args.val_dataset, transform=transform)
    return eval_knn(
        setup.model,
        train_dataset,
        val_dataset,
        device=setup.device,
        autocast_dtype=setup.autocast_dtype,
        nb_knn=args.nb_knn,
        temperature=args.temperature,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        gather_on_cpu=args.gather_on_cpu,
        n_per_class_list=args.n_per_class_list,
        n_tries=args.n_tries,
        output_dir=args.output_dir,
    )


if __name__ == "__main__":
    args = get_args_parser().parse_args()
    results = run_or_submit(main, args, name="dinov2:eval_knn", check=check_eval_args, echo=print)
    if not args.submit:
        for key, value in results.items():
            print(f"{key}: {value:.2f}")
