"""Continued pretraining in miniature (facebookresearch/dinov2 #204): does the teacher keep what it knew?

    nice -n 10 python benchmarks/continued_pretraining.py --seeds 0 1 2 --output-dir runs/continued

For each seed:

1. source model: a tiny ViT (ViT-Ti width 192, depth 4, patch 8, 32 px, LayerScale, no registers) pretrained
   with the SimDINOv2 demo recipe (configs/tiny/simdinov2_digits_demo.yaml) on the SOURCE domain, Digits
   classes 0-4, for `--source-steps`; its teacher backbone is saved as a hub-format file (flat keys, as
   `dinov2_vit*14_pretrain.pth`), the "released weights";
2. three arms on the TARGET domain, Digits classes 5-9, each `--target-steps` steps with the same seed and
   batch size:
   (a) `simdinov2`: SimDINOv2 objective from the source file (configs/continue recipe settings: lower lr,
       short warm-up, heads warmed up with the backbone frozen for `--freeze-steps`, teacher momentum 0.99),
   (b) `dinov2`: the DINOv2 objective from the source file with fresh prototype heads, same settings,
   (c) `scratch`: SimDINOv2 from random initialisation with the demo recipe's own settings,
   and, with `--arms dinov2_standard simdinov2_standard`, (d) the DINOv2 objective from the source file as in
   #204: the head warm-up, then the from-scratch settings (full lr and warm-up, DINOv2's teacher momentum 0.992),
   and (e) the SimDINOv2 objective the same way (the demo recipe's lr, warm-up and teacher momentum 0.9).
   `--source-dir` reuses the source files of an earlier run (same seeds) instead of pretraining again.

Teacher k-NN (x_norm_clstoken of the un-augmented 32 px images, cosine, k = 20, T = 0.07, as
benchmarks/digits_recipe.py) is measured on the source held-out set (Digits VAL 0-4 against TRAIN 0-4) and on
the target held-out set (VAL 5-9 against TRAIN 5-9) at the `--eval-steps`. Prints one table (mean and
standard deviation over seeds), writes `results.json` into --output-dir and the plot to `--plot`.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from dinov2.data import make_dataset  # noqa: E402
from dinov2.data.transforms import make_classification_eval_transform  # noqa: E402
from dinov2.eval.knn import knn_classify  # noqa: E402
from dinov2.train.schedulers import build_schedulers  # noqa: E402
from dinov2.train.train import (  # noqa: E402
    apply_optim_scheduler,
    build_augmentation,
    build_data_loader,
    build_optimizer,
    clip_and_step,
    fix_random_seeds,
    get_params_groups,
)
from dinov2.utils.config import load_config, scaled_lr  # noqa: E402
from simdinov2.train.build import build_meta_arch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMDINOV2_RECIPE = os.path.join(REPO, "configs", "tiny", "simdinov2_digits_demo.yaml")
SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
ARMS = ("simdinov2", "dinov2", "scratch", "dinov2_standard", "simdinov2_standard")
# The DINOv2 objective on the same backbone: prototype heads (fresh), centering, KoLeo, DINOv2 teacher temperatures.
DINOV2_OBJECTIVE = [
    "dino.use_mcr=false", "ibot.use_mcr=false", "dino.remove_last_layer=false", "ibot.remove_last_layer=false",
    "dino.head_n_prototypes=4096", "ibot.head_n_prototypes=4096", "dino.koleo_loss_weight=0.1",
    "train.centering=sinkhorn_knopp", "optim.freeze_last_layer_epochs=1",
]  # fmt: skip


def class_indices(dataset, classes: tuple[int, ...]) -> list[int]:
    targets = dataset.get_targets()
    return [i for i in range(len(dataset)) if int(targets[i]) in classes]


def training_dataset(cfg: DictConfig, classes: tuple[int, ...]) -> Subset:
    augmentation = build_augmentation(cfg)
    dataset = make_dataset(dataset_str="Digits:split=TRAIN", transform=augmentation, target_transform=lambda _: ())
    return Subset(dataset, class_indices(dataset, classes))


class KnnProbe:
    """Teacher k-NN on the source and target held-out sets (un-augmented images, built once)."""

    def __init__(self) -> None:
        transform = make_classification_eval_transform(resize_size=32, crop_size=32)
        self.sets = {}
        for split in ("TRAIN", "VAL"):
            dataset = make_dataset(dataset_str=f"Digits:split={split}", transform=transform)
            images = torch.stack([dataset[i][0] for i in range(len(dataset))])
            self.sets[split] = (images, torch.as_tensor(dataset.get_targets()))

    @torch.no_grad()
    def __call__(self, backbone: nn.Module) -> dict[str, float]:
        was_training = backbone.training
        backbone.eval()
        features = {
            split: nn.functional.normalize(torch.cat([backbone(chunk) for chunk in images.split(256)]), dim=-1)
            for split, (images, _) in self.sets.items()
        }
        backbone.train(was_training)
        scores = {}
        for domain, classes in (("source", SOURCE_CLASSES), ("target", TARGET_CLASSES)):
            keep = {split: torch.isin(labels, torch.tensor(classes)) for split, (_, labels) in self.sets.items()}
            train_labels = self.sets["TRAIN"][1][keep["TRAIN"]] - classes[0]
            val_labels = self.sets["VAL"][1][keep["VAL"]] - classes[0]
            probabilities = knn_classify(
                features["TRAIN"][keep["TRAIN"]],
                train_labels,
                features["VAL"][keep["VAL"]],
                ks=[20],
                temperature=0.07,
                num_classes=len(classes),
                batch_size=512,
                device=torch.device("cpu"),
            )[20]
            scores[domain] = 100.0 * float((probabilities.argmax(dim=1) == val_labels).float().mean())
        return scores


def train(
    cfg: DictConfig, classes: tuple[int, ...], steps: int, eval_steps: list[int], probe: KnnProbe, seed: int
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train the meta-architecture of `cfg` for `steps` on Digits `classes`; teacher k-NN at `eval_steps`."""
    fix_random_seeds(seed)
    dataset = training_dataset(cfg, classes)
    model = build_meta_arch(cfg)
    model.train()
    epoch_length = cfg.train.OFFICIAL_EPOCH_LENGTH
    optimizer = build_optimizer(cfg, get_params_groups(model))
    schedules = build_schedulers(cfg, lr=cfg.optim.lr, epoch_length=epoch_length)
    loader = iter(build_data_loader(cfg, dataset, dtype=torch.float32, start_iter=0))
    freeze_iters = cfg.student.freeze_backbone_epochs * epoch_length
    rows = []
    for iteration in range(steps + 1):
        if iteration in eval_steps:
            rows.append({"step": iteration, **probe(model.teacher["backbone"])})
        if iteration == steps:
            break
        apply_optim_scheduler(
            optimizer,
            lr=schedules.lr[iteration],
            wd=schedules.wd[iteration],
            last_layer_lr=schedules.last_layer_lr[iteration],
        )
        model.set_loss_parameters(**schedules.loss_parameters(iteration))
        model.set_backbone_frozen(iteration < freeze_iters)
        optimizer.zero_grad(set_to_none=True)
        _, metrics = model.forward_backward(next(loader), schedules.teacher_temp[iteration])
        if not torch.isfinite(metrics["total_loss"]):
            raise FloatingPointError(f"non-finite loss at step {iteration}")
        clip_and_step(model, optimizer, schedules.clip_grad[iteration])
        model.update_teacher(schedules.momentum[iteration])
    return model, rows


def arm_config(arm: str, *, steps: int, source_file: str, freeze_steps: int, batch: int) -> DictConfig:
    """Config of one target arm (`steps` = optim.epochs with 1-step epochs, so epoch keys count steps)."""
    common = [f"train.batch_size_per_gpu={batch}", "train.OFFICIAL_EPOCH_LENGTH=1", f"optim.epochs={steps}"]
    if arm == "scratch":  # the demo recipe as is, scaled to the budget (warm-up 10 % as in the recipe)
        return resolved(common + [f"optim.warmup_epochs={max(steps // 10, 1)}"])
    if arm in ("dinov2_standard", "simdinov2_standard"):  # #204: head warm-up, then the from-scratch recipe
        standard = [f"student.pretrained_weights={source_file}", f"student.freeze_backbone_epochs={freeze_steps}",
                    f"optim.warmup_epochs={max(steps // 10, 1)}"]  # fmt: skip
        if arm == "simdinov2_standard":
            return resolved(common + standard)
        return resolved(common + standard + DINOV2_OBJECTIVE + ["teacher.momentum_teacher=0.992"])
    # configs/continue settings: a quarter of the from-scratch lr, a short warm-up after a head warm-up,
    # slow teacher (0.99 -> 1) so that the teacher keeps the released features while the student adapts.
    continued = [
        f"student.pretrained_weights={source_file}",
        "optim.base_lr=0.001",  # a quarter of the recipe's 0.004
        f"optim.warmup_epochs={freeze_steps + max(steps // 20, 1)}",
        f"student.freeze_backbone_epochs={freeze_steps}",
        "teacher.momentum_teacher=0.99",
    ]
    return resolved(common + continued + (DINOV2_OBJECTIVE if arm == "dinov2" else []))


def resolved(overrides: list[str]) -> DictConfig:
    cfg = load_config(SIMDINOV2_RECIPE, overrides)
    cfg.optim.lr = scaled_lr(cfg, world_size=1)  # as tools/train.py on one process
    return cfg


def completed_seeds(results: dict) -> int:
    return min(len(runs) for runs in results["arms"].values())


def summarise(results: dict, eval_steps: list[int]) -> str:
    lines = [
        f"{'arm':<10} {'step':>5} {'target k-NN %':>16} {'source k-NN %':>16}   (mean +- std over "
        f"{completed_seeds(results)} seeds)"
    ]
    for arm in results["arms"]:
        for index, step in enumerate(eval_steps):
            cells = []
            for domain in ("target", "source"):
                values = np.array([run[index][domain] for run in results["arms"][arm]])
                cells.append(f"{values.mean():>8.1f} +- {values.std(ddof=1) if len(values) > 1 else 0:4.1f}")
            lines.append(f"{arm:<10} {step:>5} {cells[0]:>16} {cells[1]:>16}")
    return "\n".join(lines)


def plot(results: dict, eval_steps: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {
        "simdinov2": "(a) SimDINOv2, continued",
        "dinov2": "(b) DINOv2 objective, continued (fresh prototypes)",
        "scratch": "(c) SimDINOv2 from scratch",
        "dinov2_standard": "(d) DINOv2 objective, continued with the from-scratch lr",
        "simdinov2_standard": "(e) SimDINOv2, continued with the from-scratch lr",
    }
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for axis, domain in zip(axes, ("target", "source"), strict=True):
        for arm in results["arms"]:
            values = np.array([[row[domain] for row in run] for run in results["arms"][arm]])
            mean, std = values.mean(axis=0), values.std(axis=0, ddof=1) if len(values) > 1 else 0 * values[0]
            axis.plot(eval_steps, mean, marker="o", label=labels[arm])
            axis.fill_between(eval_steps, mean - std, mean + std, alpha=0.2)
        axis.set_title(f"{domain} held-out (Digits {'5-9' if domain == 'target' else '0-4'})")
        axis.set_xlabel("steps on the target domain")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("teacher k-NN top-1 %")
    axes[0].legend(fontsize=7, loc="lower right")
    figure.suptitle(
        f"Continued pretraining, mean +- std over {completed_seeds(results)} seeds (2-core CPU)", fontsize=9
    )
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--source-steps", type=int, default=300, help="source pretraining steps")
    parser.add_argument("--target-steps", type=int, default=200, help="steps of every target arm")
    parser.add_argument("--freeze-steps", type=int, default=10, help="head warm-up steps (backbone frozen)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-steps", type=int, nargs="+", default=[0, 25, 50, 100, 150, 200])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS[:3]))
    parser.add_argument("--source-dir", default=None, help="reuse source_seed<s>_pretrain.pth files from this folder")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--plot", default=os.path.join(REPO, "docs", "img", "continued_pretraining.png"))
    parser.add_argument(
        "--report-only", nargs="+", metavar="RESULTS_JSON", default=None,
        help="train nothing: merge the arms of these results.json files (same seeds and steps), print, plot",
    )  # fmt: skip
    args = parser.parse_args()
    if args.report_only is not None:
        results = json.load(open(args.report_only[0]))
        for path in args.report_only[1:]:
            other = json.load(open(path))
            if (other["seeds"], other["eval_steps"]) != (results["seeds"], results["eval_steps"]):
                parser.error(f"{path} has other seeds or eval steps than {args.report_only[0]}")
            results["arms"].update(other["arms"])
        print(summarise(results, results["eval_steps"]))
        plot(results, results["eval_steps"], args.plot)
        return
    torch.set_num_threads(1)
    os.makedirs(args.output_dir, exist_ok=True)
    probe = KnnProbe()
    results: dict = {"seeds": args.seeds, "eval_steps": args.eval_steps, "args": vars(args), "source": [],
                     "arms": {arm: [] for arm in args.arms}}  # fmt: skip
    start = time.time()
    for seed in args.seeds:
        if args.source_dir is None:
            source_cfg = resolved([
                f"train.batch_size_per_gpu={args.batch_size}", "train.OFFICIAL_EPOCH_LENGTH=1",
                f"optim.epochs={args.source_steps}", f"optim.warmup_epochs={max(args.source_steps // 10, 1)}",
            ])  # fmt: skip
            source_model, source_rows = train(
                source_cfg, SOURCE_CLASSES, args.source_steps, [args.source_steps], probe, seed
            )
            source_file = os.path.join(args.output_dir, f"source_seed{seed}_pretrain.pth")
            torch.save(source_model.teacher["backbone"].state_dict(), source_file)  # hub format: flat backbone keys
            results["source"].append(source_rows[-1])
            print(f"seed {seed}: source model {source_rows[-1]} ({time.time() - start:.0f} s)", flush=True)
        else:
            source_file = os.path.join(args.source_dir, f"source_seed{seed}_pretrain.pth")
        for arm in args.arms:
            cfg = arm_config(
                arm, steps=args.target_steps, source_file=source_file, freeze_steps=args.freeze_steps,
                batch=args.batch_size,
            )  # fmt: skip
            _, rows = train(cfg, TARGET_CLASSES, args.target_steps, args.eval_steps, probe, seed)
            results["arms"][arm].append(rows)
            print(f"seed {seed} {arm}: {rows} ({time.time() - start:.0f} s)", flush=True)
        with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
            json.dump(results, handle, indent=1)
    print(summarise(results, args.eval_steps))
    plot(results, args.eval_steps, args.plot)
    print(f"plot: {args.plot}; total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
