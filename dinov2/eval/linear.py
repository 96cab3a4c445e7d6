"""Linear probing of a frozen backbone: a grid of linear heads trained at once (the DINOv2 linear protocol).

Protocol (as official DINOv2):

* Input variants: for `n` in `n_last_blocks_list` (default {1, 4}) and `avgpool` in {False, True}, the input of a
  head is the concatenation of the CLS tokens of the last n blocks (each after the final norm), followed, with
  avgpool, by the mean of the last block's patch tokens; computed in float32 from the frozen backbone.
* One `nn.Linear(in, C)` per (variant, learning rate), weights ~ N(0, 0.01), bias 0, all trained jointly on the
  sum of their cross-entropies with SGD (momentum 0.9, no weight decay), lr scaled by `B * W / 256`, cosine
  annealing to 0 over `epochs * epoch_length` iterations stepped per iteration, random-resized-crop + flip
  augmentation, a sharded infinite sampler with seed 0.
* Every `eval_period_iterations` and at the end all heads are evaluated on the validation set; the best head
  (highest top-1) is reported, and at the end saved to `<output_dir>/best_classifier.pth`.

Checkpoint layout (`<output_dir>/`): `model_{iteration:07d}.pth` every `save_checkpoint_frequency` epochs,
`running_checkpoint_linear_eval.pth` every epoch, `model_final.pth` at the end; each holds `{"model": head grid
state dict (keys classifiers_dict.<name>.linear.{weight,bias}), "optimizer", "scheduler", "iteration"}`, and the
text file `last_checkpoint` names the newest. A run resumes from it unless `resume=False`.

Changes from the official code:
* Resuming advances the train sampler by `start_iter * batch_size` samples of the rank's stream; official passes
  `start_iter` (iterations counted as samples), so a resumed run saw almost the same images again.
  The data order of a resumed run now equals the uninterrupted one (the random augmentations still differ).
* Validation shards the dataset without the padding of `DistributedSampler`, so no sample counts twice.
* Head names use the official `classifier_{n}_blocks_avgpool_{bool}_lr_{lr:.5f}` (effective lr, `.` -> `_`)
  unless two effective learning rates print the same at 5 decimals (official then silently drops heads, e.g.
  1e-5 and 2e-5 at B=128, W=1); then every name uses `{lr:.4e}` and a warning says so.
* Head initialisation uses its own generator (seed `seed`), so two runs start from the same heads.
"""

import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm import tqdm

from dinov2.data import SamplerType, make_data_loader
from dinov2.distributed import barrier, get_global_size, is_enabled, is_main_process
from dinov2.eval.metrics import ClassificationMetric, MetricType, check_metric_type, usable_topk
from dinov2.eval.utils import ModelWithIntermediateLayers, communication_device, evaluate_scores

logger = logging.getLogger(__name__)

DEFAULT_LEARNING_RATES: tuple[float, ...] = (
    1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1
)  # fmt: skip
DEFAULT_N_LAST_BLOCKS: tuple[int, ...] = (1, 4)
DEFAULT_AVGPOOL: tuple[bool, ...] = (False, True)
RESULTS_FILENAME = "results_eval_linear.json"
BEST_CLASSIFIER_FILENAME = "best_classifier.pth"
RUNNING_CHECKPOINT_NAME = "running_checkpoint_linear_eval"
LAST_CHECKPOINT_FILENAME = "last_checkpoint"

TokensList = Sequence[tuple[Tensor, Tensor]]


def create_linear_input(x_tokens_list: TokensList, *, use_n_blocks: int, use_avgpool: bool) -> Tensor:
    """Head input `[B, n·D]` (or `[B, (n+1)·D]` with avgpool) in float32.

    `x_tokens_list`: per block, oldest first, `(patch_tokens [B, P, D], cls_token [B, D])`; the last `use_n_blocks`
    CLS tokens are concatenated, then the mean of the last block's patch tokens when `use_avgpool`.
    """
    last_blocks = x_tokens_list[-use_n_blocks:]
    output = torch.cat([cls_token for _, cls_token in last_blocks], dim=-1)
    if use_avgpool:
        output = torch.cat([output, x_tokens_list[-1][0].mean(dim=1)], dim=-1)
    return output.float()


class LinearClassifier(nn.Module):
    """One linear head over `create_linear_input(...)`: tokens -> logits `[B, C]`."""

    def __init__(
        self,
        *,
        in_dim: int,
        num_classes: int,
        use_n_blocks: int,
        use_avgpool: bool,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.use_n_blocks = use_n_blocks
        self.use_avgpool = use_avgpool
        self.linear = nn.Linear(in_dim, num_classes)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            self.linear.weight.normal_(mean=0.0, std=0.01, generator=generator)
            self.linear.bias.zero_()

    def forward(self, x_tokens_list: TokensList) -> Tensor:
        return self.linear(
            create_linear_input(x_tokens_list, use_n_blocks=self.use_n_blocks, use_avgpool=self.use_avgpool)
        )


class AllClassifiers(nn.Module):
    """The head grid: tokens -> `{name: logits [B, C]}` (state-dict keys `classifiers_dict.<name>.linear.*`)."""

    def __init__(self, classifiers: dict[str, LinearClassifier]) -> None:
        super().__init__()
        self.classifiers_dict = nn.ModuleDict(classifiers)

    def forward(self, x_tokens_list: TokensList) -> dict[str, Tensor]:
        return {name: head(x_tokens_list) for name, head in self.classifiers_dict.items()}

    def __len__(self) -> int:
        return len(self.classifiers_dict)


def scale_lr(learning_rate: float, batch_size: int) -> float:
    """Effective lr of the official linear-scaling rule: `lr · B · W / 256` (B per rank)."""
    return learning_rate * batch_size * get_global_size() / 256.0


def classifier_names(
    n_last_blocks_list: Sequence[int], avgpool_list: Sequence[bool], effective_lrs: Sequence[float]
) -> list[tuple[str, int, bool, float]]:
    """`(name, n, avgpool, lr)` for every grid point, in the official order (n, then avgpool, then lr)."""
    grid = [(n, avgpool, lr) for n in n_last_blocks_list for avgpool in avgpool_list for lr in effective_lrs]
    if len({(n, a, lr) for n, a, lr in grid}) != len(grid):
        raise ValueError(
            f"the head grid has duplicates: n_last_blocks={list(n_last_blocks_list)}, avgpool={list(avgpool_list)},"
            f" effective learning rates={list(effective_lrs)}; remove repeated values from --learning-rates"
        )
    lr_format = ".5f"
    if len({f"{lr:.5f}" for lr in effective_lrs}) != len(effective_lrs):
        lr_format = ".4e"
        logger.warning(
            "effective learning rates %s are not distinct at 5 decimals: head names use %s instead of the official .5f",
            effective_lrs,
            lr_format,
        )
    return [
        (f"classifier_{n}_blocks_avgpool_{avgpool}_lr_{lr:{lr_format}}".replace(".", "_"), n, avgpool, lr)
        for n, avgpool, lr in grid
    ]


def build_linear_classifiers(
    sample_output: TokensList,
    *,
    n_last_blocks_list: Sequence[int],
    avgpool_list: Sequence[bool],
    learning_rates: Sequence[float],
    batch_size: int,
    num_classes: int,
    seed: int = 0,
) -> tuple[AllClassifiers, list[dict]]:
    """The head grid and its SGD parameter groups (one group per head at its effective lr).

    `sample_output`: the feature model's output for a sample batch (it fixes the input widths).
    """
    generator = torch.Generator().manual_seed(seed)
    effective_lrs = [scale_lr(lr, batch_size) for lr in learning_rates]
    heads: dict[str, LinearClassifier] = {}
    param_groups: list[dict] = []
    for name, n, avgpool, lr in classifier_names(n_last_blocks_list, avgpool_list, effective_lrs):
        in_dim = create_linear_input(sample_output, use_n_blocks=n, use_avgpool=avgpool).shape[1]
        head = LinearClassifier(
            in_dim=in_dim, num_classes=num_classes, use_n_blocks=n, use_avgpool=avgpool, generator=generator
        )
        heads[name] = head
        param_groups.append({"params": list(head.parameters()), "lr": lr, "name": name})
    return AllClassifiers(heads), param_groups


class LinearCheckpointer:
    """Saves / restores the head grid, optimizer and scheduler (layout in the module docstring).

    Only rank 0 writes; files are written to a temporary name and renamed, so a crash never leaves a torn file.
    """

    def __init__(
        self,
        output_dir: str,
        *,
        classifiers: AllClassifiers,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> None:
        self.output_dir = output_dir
        self.classifiers = classifiers
        self.optimizer = optimizer
        self.scheduler = scheduler

    def save(self, name: str, iteration: int) -> None:
        if not is_main_process():
            return
        path = os.path.join(self.output_dir, f"{name}.pth")
        state = {
            "model": self.classifiers.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": iteration,
        }
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)
        pointer = os.path.join(self.output_dir, LAST_CHECKPOINT_FILENAME)
        with open(pointer + ".tmp", "w") as f:
            f.write(f"{name}.pth")
        os.replace(pointer + ".tmp", pointer)
        logger.info("saved linear-probe checkpoint %s (iteration %d)", path, iteration)

    def last_checkpoint(self) -> str | None:
        pointer = os.path.join(self.output_dir, LAST_CHECKPOINT_FILENAME)
        if not os.path.isfile(pointer):
            return None
        with open(pointer) as f:
            path = os.path.join(self.output_dir, f.read().strip())
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{pointer} names {path}, which does not exist; delete {pointer} to restart")
        return path

    def _load_grid(self, path: str, state: dict) -> None:
        try:
            self.classifiers.load_state_dict(state["model"], strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"the head grid in {path} does not match the requested one (check --learning-rates, "
                f"--n-last-blocks, --avgpool, --batch-size and the world size): {err}"
            ) from err

    def resume_or_load(self, classifier_fpath: str | None, *, resume: bool) -> int:
        """Restore the newest checkpoint (all state) when resuming, else the heads of `classifier_fpath`.

        Returns the iteration to start from (the stored iteration + 1, or 0).
        """
        path = self.last_checkpoint() if resume else None
        if path is not None:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self._load_grid(path, state)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            logger.info("resumed the linear probe from %s (iteration %d)", path, state["iteration"])
            return int(state["iteration"]) + 1
        if classifier_fpath:
            state = torch.load(classifier_fpath, map_location="cpu", weights_only=True)
            self._load_grid(classifier_fpath, state)
            logger.info("loaded the head grid of %s (iteration %s)", classifier_fpath, state.get("iteration"))
            return int(state.get("iteration", -1)) + 1
        return 0


@dataclass(frozen=True, kw_only=True)
class LinearEvalSettings:
    """Hyper-parameters of the linear protocol (official defaults)."""

    epochs: int = 10
    epoch_length: int = 1250  # iterations per epoch; <= 0: len(train) // (batch_size · W)
    batch_size: int = 128  # per rank
    num_workers: int = 8
    save_checkpoint_frequency: int = 20  # epochs
    eval_period_iterations: int = 1250  # 0: evaluate at the end only
    learning_rates: tuple[float, ...] = DEFAULT_LEARNING_RATES
    n_last_blocks_list: tuple[int, ...] = DEFAULT_N_LAST_BLOCKS
    avgpool_list: tuple[bool, ...] = DEFAULT_AVGPOOL
    resume: bool = True
    classifier_fpath: str | None = None
    seed: int = 0  # head initialisation and train sampler


@dataclass(frozen=True, kw_only=True)
class EvalDataset:
    """A dataset scored by the linear heads, with its metric and optional class mapping.

    `class_mapping [C']`: indices of the C model classes that the dataset's C' labels correspond to.
    """

    name: str
    dataset: Dataset
    metric_type: MetricType = "mean_accuracy"
    class_mapping: Tensor | None = None


def dataset_num_classes(dataset: Dataset) -> int:
    """`max(target) + 1` read from `get_targets()` or `targets` (no image is decoded)."""
    if hasattr(dataset, "get_targets"):
        targets = torch.as_tensor(dataset.get_targets())
    elif hasattr(dataset, "targets"):
        targets = torch.as_tensor(dataset.targets)
    else:
        raise ValueError(
            f"cannot read the targets of {type(dataset).__name__} (no get_targets() or targets); pass --num-classes"
        )
    return int(targets.max()) + 1


def evaluate_linear_classifiers(
    feature_model: nn.Module,
    classifiers: AllClassifiers,
    eval_dataset: EvalDataset,
    *,
    names: Sequence[str] | None = None,
    batch_size: int,
    num_workers: int,
    device: torch.device,
) -> dict[str, dict[str, Tensor]]:
    """Metrics of the heads `names` (default: all) on `eval_dataset`, reduced over ranks: `{name: {"top-1": ..}}`."""
    heads = {name: classifiers.classifiers_dict[name] for name in (names or list(classifiers.classifiers_dict))}
    mapping = None if eval_dataset.class_mapping is None else eval_dataset.class_mapping.to(device)
    num_classes = next(iter(heads.values())).num_classes if mapping is None else mapping.numel()
    topk = usable_topk(num_classes)
    metrics = {
        name: ClassificationMetric(metric_type=eval_dataset.metric_type, num_classes=num_classes, topk=topk)
        for name in heads
    }

    def score_fn(images: Tensor) -> dict[str, Tensor]:
        tokens = feature_model(images)
        with torch.no_grad():
            logits = {name: head(tokens) for name, head in heads.items()}
        return logits if mapping is None else {name: value[:, mapping] for name, value in logits.items()}

    evaluate_scores(
        score_fn,
        eval_dataset.dataset,
        metrics=metrics,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        description=f"evaluating on {eval_dataset.name}",
    )
    comm = communication_device(device)
    results = {}
    for name, metric in metrics.items():
        metric.reduce(comm)
        results[name] = metric.compute()
    return results


def _append_results(output_dir: str, record: dict) -> None:
    if is_main_process():
        with open(os.path.join(output_dir, RESULTS_FILENAME), "a") as f:
            f.write(json.dumps(record) + "\n")


def _drop_results_to_repeat(output_dir: str, *, start_iter: int, max_iter: int) -> None:
    """Remove the result lines this run writes again (rank 0): those after `start_iter`, the final ones.

    A run resumed at `start_iter` validates after every later period and at `max_iter`, so only the lines of
    iterations <= `start_iter` (and < `max_iter`) stay; a line torn by a kill is dropped as well.
    """
    path = os.path.join(output_dir, RESULTS_FILENAME)
    if not is_main_process() or not os.path.isfile(path):
        return
    kept: list[str] = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("iter", max_iter) <= min(start_iter, max_iter - 1):
                kept.append(json.dumps(record) + "\n")
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


def _select_best(results: dict[str, dict[str, Tensor]]) -> tuple[str, float]:
    name = max(results, key=lambda n: float(results[n]["top-1"]))
    return name, 100.0 * float(results[name]["top-1"])


def validate(
    feature_model: nn.Module,
    classifiers: AllClassifiers,
    val: EvalDataset,
    *,
    iteration: int,
    settings: LinearEvalSettings,
    device: torch.device,
    output_dir: str,
) -> tuple[str, float, dict[str, float]]:
    """Evaluate every head on `val` after `iteration` training iterations, log and append the results (one JSON
    line); returns (best name, its top-1 %, all top-1 %)."""
    results = evaluate_linear_classifiers(
        feature_model,
        classifiers,
        val,
        batch_size=settings.batch_size,
        num_workers=settings.num_workers,
        device=device,
    )
    accuracies = {name: 100.0 * float(value["top-1"]) for name, value in results.items()}
    best_name, best_accuracy = _select_best(results)
    logger.info("after %d iterations: best head %s, %s top-1 %.2f%%", iteration, best_name, val.name, best_accuracy)
    _append_results(
        output_dir,
        {
            "iter": iteration,
            "dataset": val.name,
            "best_classifier": {"name": best_name, "accuracy": best_accuracy},
            "classifiers": accuracies,
        },
    )
    return best_name, best_accuracy, accuracies


def eval_linear(
    model: nn.Module,
    train_dataset: Dataset,
    val: EvalDataset,
    *,
    settings: LinearEvalSettings,
    output_dir: str,
    device: torch.device,
    autocast_dtype: torch.dtype = torch.float32,
    num_classes: int | None = None,
    test_datasets: Sequence[EvalDataset] = (),
) -> dict:
    """Train the head grid on `train_dataset` over the frozen `model`, select the best head on `val`.

    `model`: the backbone on `device` in eval mode (`get_intermediate_layers` is used). `num_classes`: default
    `max(train target) + 1`. Resumes from `output_dir` unless `settings.resume` is False. Returns
    `{"best_classifier": {"name", "accuracy"}, "val": {name: top-1 %}, "test": {dataset: {metric: %}}}`.
    """
    check_metric_type(val.metric_type, "--val-metric-type")
    if val.metric_type == "per_class_accuracy":
        raise ValueError("--val-metric-type per_class_accuracy gives no single number to select a head; change it")
    n_blocks = getattr(model, "n_blocks", None)
    if n_blocks is not None and max(settings.n_last_blocks_list) > n_blocks:
        raise ValueError(
            f"--n-last-blocks {list(settings.n_last_blocks_list)} asks for more blocks than the backbone's {n_blocks}; "
            f"use values <= {n_blocks}"
        )
    os.makedirs(output_dir, exist_ok=True)
    num_classes = num_classes if num_classes is not None else dataset_num_classes(train_dataset)
    feature_model = ModelWithIntermediateLayers(
        feature_model=model, n_last_blocks=max(settings.n_last_blocks_list), autocast_dtype=autocast_dtype
    )
    sample_image = train_dataset[0][0]
    sample_output = feature_model(sample_image.unsqueeze(0).to(device))
    classifiers, param_groups = build_linear_classifiers(
        sample_output,
        n_last_blocks_list=settings.n_last_blocks_list,
        avgpool_list=settings.avgpool_list,
        learning_rates=settings.learning_rates,
        batch_size=settings.batch_size,
        num_classes=num_classes,
        seed=settings.seed,
    )
    classifiers.to(device)
    logger.info("training %d linear heads over %d classes", len(classifiers), num_classes)
    epoch_length = settings.epoch_length
    if epoch_length <= 0:
        epoch_length = len(train_dataset) // (settings.batch_size * get_global_size())  # type: ignore[arg-type]
        logger.info("epoch_length <= 0: using len(train) // (B · W) = %d iterations per epoch", epoch_length)
    if epoch_length <= 0:
        raise ValueError(f"the train set is smaller than one global batch; lower --batch-size {settings.batch_size}")
    max_iter = settings.epochs * epoch_length
    optimizer = torch.optim.SGD(param_groups, momentum=0.9, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max_iter, eta_min=0.0)
    checkpointer = LinearCheckpointer(output_dir, classifiers=classifiers, optimizer=optimizer, scheduler=scheduler)
    start_iter = checkpointer.resume_or_load(settings.classifier_fpath, resume=settings.resume)
    _drop_results_to_repeat(output_dir, start_iter=start_iter, max_iter=max_iter)
    train_heads: nn.Module = classifiers
    if is_enabled():
        train_heads = DistributedDataParallel(classifiers, device_ids=[device] if device.type == "cuda" else None)
    if start_iter < max_iter:
        _train_loop(
            feature_model,
            train_heads,
            classifiers=classifiers,
            train_dataset=train_dataset,
            val=val,
            optimizer=optimizer,
            scheduler=scheduler,
            checkpointer=checkpointer,
            settings=settings,
            epoch_length=epoch_length,
            start_iter=start_iter,
            max_iter=max_iter,
            device=device,
            output_dir=output_dir,
        )
    best_name, best_accuracy, accuracies = validate(
        feature_model, classifiers, val, iteration=max_iter, settings=settings, device=device, output_dir=output_dir
    )
    best_head = classifiers.classifiers_dict[best_name]
    assert isinstance(best_head, LinearClassifier), f"unexpected head type {type(best_head)}"
    if is_main_process():
        torch.save(
            {
                "name": best_name,
                "accuracy": best_accuracy,
                "use_n_blocks": best_head.use_n_blocks,
                "use_avgpool": best_head.use_avgpool,
                "in_dim": best_head.in_dim,
                "num_classes": best_head.num_classes,
                "state_dict": best_head.state_dict(),
            },
            os.path.join(output_dir, BEST_CLASSIFIER_FILENAME),
        )
    test_results: dict[str, dict[str, float | list[float]]] = {}
    for test in test_datasets:
        metrics = evaluate_linear_classifiers(
            feature_model,
            classifiers,
            test,
            names=[best_name],
            batch_size=settings.batch_size,
            num_workers=0,
            device=device,
        )[best_name]
        test_results[test.name] = {key: (100.0 * value).tolist() for key, value in metrics.items()}
        logger.info("test %s with %s (%s): %s", test.name, best_name, test.metric_type, test_results[test.name])
        _append_results(
            output_dir,
            {"iter": max_iter, "dataset": test.name, "classifier": best_name, "metrics": test_results[test.name]},
        )
    barrier()
    return {
        "best_classifier": {"name": best_name, "accuracy": best_accuracy},
        "val": accuracies,
        "test": test_results,
    }


def _train_loop(
    feature_model: nn.Module,
    train_heads: nn.Module,
    *,
    classifiers: AllClassifiers,
    train_dataset: Dataset,
    val: EvalDataset,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    checkpointer: LinearCheckpointer,
    settings: LinearEvalSettings,
    epoch_length: int,
    start_iter: int,
    max_iter: int,
    device: torch.device,
    output_dir: str,
) -> None:
    """Iterations `start_iter .. max_iter - 1` of joint SGD on the sum of the heads' cross-entropies."""
    train_loader = make_data_loader(
        dataset=train_dataset,
        batch_size=settings.batch_size,
        num_workers=settings.num_workers,
        shuffle=True,
        seed=settings.seed,
        sampler_type=SamplerType.SHARDED_INFINITE,
        sampler_advance=start_iter * settings.batch_size,
        drop_last=True,
        persistent_workers=settings.num_workers > 0,
    )
    checkpoint_period = settings.save_checkpoint_frequency * epoch_length
    batches = iter(train_loader)
    progress = tqdm(range(start_iter, max_iter), desc="linear probe", disable=not is_main_process())
    for iteration in progress:
        images, labels = next(batches)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        tokens = feature_model(images)
        outputs = train_heads(tokens)
        loss = sum(F.cross_entropy(logits, labels) for logits in outputs.values())
        assert isinstance(loss, Tensor), "the head grid produced no output"
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if not math.isfinite(loss_value := float(loss.detach())):
            raise FloatingPointError(f"linear-probe loss is {loss_value} at iteration {iteration}")
        progress.set_postfix(loss=f"{loss_value / len(classifiers):.4f}")
        if iteration % 10 == 0:
            logger.info("iteration %d: mean head loss %.4f", iteration, loss_value / len(classifiers))
        if (iteration + 1) % epoch_length == 0:
            checkpointer.save(RUNNING_CHECKPOINT_NAME, iteration)
        if checkpoint_period > 0 and (iteration + 1) % checkpoint_period == 0:
            checkpointer.save(f"model_{iteration:07d}", iteration)
        if iteration == max_iter - 1:
            checkpointer.save("model_final", iteration)
        period = settings.eval_period_iterations
        if period > 0 and (iteration + 1) % period == 0 and iteration != max_iter - 1:
            validate(
                feature_model,
                classifiers,
                val,
                iteration=iteration + 1,
                settings=settings,
                device=device,
                output_dir=output_dir,
            )
        if (iteration + 1) % epoch_length == 0:
            barrier()
