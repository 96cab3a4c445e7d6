"""DINOv2 training: set-up, optimizer and schedules, the loop, checkpoints and teacher exports.

`main(args, meta_arch_factory=SSLMetaArch)` runs one training job; `tools/train.py` is its CLI. The
factory lets simdinov2 pass its own `build_meta_arch(cfg)` without dinov2 importing simdinov2.

Loop, one paragraph per step (as official DINOv2's train loop): apply schedules -> zero grad -> forward_backward over
`train.grad_accum_steps` micro-batches -> unscale, clip each student submodule, step -> teacher EMA ->
record non-finite terms on the device. Only on logged iterations (and checkpoint / export iterations) does
the loop synchronise with the device: one read of the rank-mean metrics, the stop requests and the
non-finite record (dinov2.train.step_monitor) -> log -> teacher export -> checkpoint, or stop.
"""

import argparse
import dataclasses
import functools
import logging
import os
import random
import signal
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dinov2 import distributed
from dinov2.data import (
    DataAugmentationDINO,
    MaskingGenerator,
    SamplerType,
    collate_data_and_cast,
    make_data_loader,
    make_dataset,
)
from dinov2.data.loaders import check_dataset_str
from dinov2.fsdp import build_meshes
from dinov2.logging import MetricLogger, setup_logging
from dinov2.run import preemption
from dinov2.train.checkpointer import CONFIG_FILE, Checkpointer, ResumeError, TrainerState, export_teacher
from dinov2.train.compile import compile_meta_arch
from dinov2.train.schedulers import build_schedulers
from dinov2.train.ssl_meta_arch import SSLMetaArch
from dinov2.train.step_monitor import StepMonitor, StepReport
from dinov2.utils.config import load_config, scaled_lr
from dinov2.utils.param_groups import fuse_params_groups, get_params_groups_with_decay

logger = logging.getLogger(__name__)

MetaArchFactory = Callable[[DictConfig], SSLMetaArch]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("DINOv2 training", add_help=add_help)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="recipe YAML merged over the defaults")
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="resume from <output-dir>/checkpoints/last_checkpoint when present (default); --no-resume "
        "starts from MODEL.WEIGHTS or from scratch",
    )
    parser.add_argument("--eval-only", action="store_true", help="load the checkpoint, export the teacher, exit")
    parser.add_argument(
        "--output-dir",
        "--output_dir",
        default=".",
        help="run directory: config, logs, checkpoints, teacher exports (default: the current directory)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, key=value")
    return parser


def fix_random_seeds(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclasses.dataclass(frozen=True)
class RunContext:
    """Values derived once from the config and the environment (the config itself stays read-only)."""

    device: torch.device
    world_size: int
    rank: int
    lr: float
    epoch_length: int
    max_iter: int


def check_args(args: argparse.Namespace) -> DictConfig:
    """The merged config of `--config-file` and the overrides, checked without building or reading anything.

    Raises ConfigError for an unknown key or an invalid `optim.scaling_rule`, ValueError / FileNotFoundError
    for a bad `train.dataset_path`. `tools/train.py` runs it before training here or submitting to SLURM.
    """
    opts = [opt for opt in (args.opts or []) if opt != "--"]
    cfg = load_config(args.config_file, [*opts, f"train.output_dir={os.path.abspath(args.output_dir)}"])
    scaled_lr(cfg, world_size=1)
    check_dataset_str(cfg.train.dataset_path)
    return cfg


def allow_tf32_matmuls() -> None:
    """fp32 matmuls on CUDA run on TF32 tensor cores, as in official DINOv2 (set at import there).

    Training and the step benchmark call this one function, so that they measure the same arithmetic.
    """
    torch.backends.cuda.matmul.allow_tf32 = True
    logger.info("TF32 matmuls allowed")


def setup(args: argparse.Namespace) -> DictConfig:
    """Config (defaults <- file <- overrides <- output dir), process group, logging, seeds, scaled lr.

    Writes `<output_dir>/config.yaml` once (rank 0) with the scaled `optim.lr`; returns the config in
    read-only mode.
    """
    output_dir = os.path.abspath(args.output_dir)
    cfg = check_args(args)
    os.makedirs(output_dir, exist_ok=True)
    environment = distributed.get_environment() or distributed.enable()
    setup_logging(output_dir)
    logger.info("launch: %s", environment)
    logger.info("arguments: %s", vars(args))
    allow_tf32_matmuls()
    cfg.optim.lr = scaled_lr(cfg, environment.world_size)
    logger.info(
        "optim.lr = %.6g (optim.base_lr %g, rule %s, global batch %d x %d x %d)",
        cfg.optim.lr,
        cfg.optim.base_lr,
        cfg.optim.scaling_rule,
        cfg.train.batch_size_per_gpu,
        environment.world_size,
        cfg.train.grad_accum_steps,
    )
    if distributed.is_main_process():
        OmegaConf.save(cfg, os.path.join(output_dir, "config.yaml"))
    logger.info("resolved config:\n%s", OmegaConf.to_yaml(cfg))
    OmegaConf.set_readonly(cfg, True)
    return cfg


# ----------------------------------------------------------------------------------------------------------
# Optimizer and schedules
# ----------------------------------------------------------------------------------------------------------
def get_params_groups(model: SSLMetaArch) -> list[dict[str, Any]]:
    """Fused parameter groups of every student submodule (official rules, see dinov2.utils.param_groups)."""
    groups: list[dict[str, Any]] = []
    for module in model.student.values():
        groups += get_params_groups_with_decay(
            module,
            lr_decay_rate=model.cfg.optim.layerwise_decay,
            patch_embed_lr_mult=model.cfg.optim.patch_embed_lr_mult,
        )
    return fuse_params_groups(groups)


def build_optimizer(cfg: DictConfig, params_groups: list[dict[str, Any]]) -> torch.optim.AdamW:
    """AdamW with the config's betas, PyTorch defaults otherwise; lr / wd are set every iteration."""
    return torch.optim.AdamW(params_groups, betas=(cfg.optim.adamw_beta1, cfg.optim.adamw_beta2), foreach=True)


def apply_optim_scheduler(optimizer: torch.optim.Optimizer, *, lr: float, wd: float, last_layer_lr: float) -> None:
    """Set every group's lr / weight decay from its multipliers (last-layer groups follow `last_layer_lr`)."""
    for group in optimizer.param_groups:
        group["weight_decay"] = wd * group["wd_multiplier"]
        group["lr"] = (last_layer_lr if group["is_last_layer"] else lr) * group["lr_multiplier"]


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------
def input_dtype(model: SSLMetaArch) -> torch.dtype:
    """dtype of the collated crops: the student backbone's compute dtype (official: fp16)."""
    return model.precision[("student", "backbone")].param_dtype


def build_augmentation(cfg: DictConfig) -> DataAugmentationDINO:
    """The multi-crop augmentation of the `crops` section (global / local crops, blur probabilities)."""
    return DataAugmentationDINO(
        tuple(cfg.crops.global_crops_scale),
        tuple(cfg.crops.local_crops_scale),
        cfg.crops.local_crops_number,
        global_crops_size=cfg.crops.global_crops_size,
        local_crops_size=cfg.crops.local_crops_size,
        global_crops_1_blur_prob=cfg.crops.global_crops_1_blur_prob,
        global_crops_2_blur_prob=cfg.crops.global_crops_2_blur_prob,
        local_crops_blur_prob=cfg.crops.local_crops_blur_prob,
    )


def build_dataset(cfg: DictConfig) -> Any:
    return make_dataset(
        dataset_str=cfg.train.dataset_path,
        transform=build_augmentation(cfg),
        target_transform=_no_target,
        max_bad_image_fraction=cfg.train.max_bad_image_fraction,
    )


def _no_target(_: Any) -> tuple[()]:
    # SSL ignores labels; an empty tuple collates to nothing (module-level so that workers can pickle it).
    return ()


def bad_image_metrics(dataset: Any) -> dict[str, float]:
    """Undecodable files of file-backed datasets (`dataset.bad_images`, dinov2/data/datasets/extended.py):
    distinct files that failed, and their fraction of the distinct files read, on this rank.

    In-memory datasets (Digits) have no counter and report nothing.
    """
    counter = getattr(dataset, "bad_images", None)
    if counter is None:
        return {}
    n_read, n_failed = counter.totals()
    return {"bad_images": float(n_failed), "bad_image_fraction": n_failed / max(n_read, 1)}


def build_data_loader(cfg: DictConfig, dataset: Any, *, dtype: torch.dtype, start_iter: int) -> Iterable[Any]:
    """Endless loader of micro-batches; `start_iter` full steps of this rank's stream are skipped.

    FIX of official DINOv2 (docs/data.md): seeded with `train.seed` and advanced by the samples already consumed, so a
    resumed run sees the data the uninterrupted run would have seen (official: seed = start_iter, no advance).
    """
    n_side = cfg.crops.global_crops_size // cfg.student.patch_size
    n_tokens = n_side * n_side
    mask_generator = MaskingGenerator(input_size=(n_side, n_side), max_num_patches=int(0.5 * n_tokens))
    collate_fn = functools.partial(
        collate_data_and_cast,
        mask_ratio_tuple=tuple(cfg.ibot.mask_ratio_min_max),
        mask_probability=cfg.ibot.mask_sample_probability,
        n_tokens=n_tokens,
        mask_generator=mask_generator,
        dtype=dtype,
    )
    micro_batch = cfg.train.batch_size_per_gpu
    return make_data_loader(
        dataset=dataset,
        batch_size=micro_batch,
        num_workers=cfg.train.num_workers,
        shuffle=True,
        seed=cfg.train.seed,
        sampler_type=SamplerType.SHARDED_INFINITE,
        sampler_advance=start_iter * micro_batch * cfg.train.grad_accum_steps,
        drop_last=True,
        collate_fn=collate_fn,
    )


def group_micro_batches(iterable: Iterable[Any], n: int) -> Iterator[list[Any]]:
    """Lists of `n` consecutive micro-batches (one optimizer step each); fetches lazily."""
    iterator = iter(iterable)
    while True:
        yield [next(iterator) for _ in range(n)]


def batch_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------------
# Evaluation export and the loop
# ----------------------------------------------------------------------------------------------------------
def do_test(cfg: DictConfig, model: SSLMetaArch, name: str) -> str:
    """Export the teacher to `<output_dir>/eval/<name>/teacher_checkpoint.pth` (rank 0 writes)."""
    path = os.path.join(cfg.train.output_dir, "eval", name, "teacher_checkpoint.pth")
    export_teacher(model, path)
    return path


def clip_and_step(model: SSLMetaArch, optimizer: torch.optim.Optimizer, clip_grad: float) -> dict[str, torch.Tensor]:
    """Unscale (fp16), clip each student submodule separately (KEEP: as official DINOv2), optimizer step.

    Returns the gradient norm of every student submodule before clipping (`<key>_grad_norm`), as scalar
    tensors on the device (reading them would synchronise; the loop reads them with the metrics).
    """
    scaler = model.grad_scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    norms: dict[str, torch.Tensor] = {}
    if clip_grad > 0:
        for key, module in model.student.items():
            norm = torch.nn.utils.clip_grad_norm_(module.parameters(), clip_grad)
            full_tensor = getattr(norm, "full_tensor", None)
            norms[f"{key}_grad_norm"] = full_tensor() if full_tensor is not None else norm
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return norms


class NonFiniteLossError(FloatingPointError):
    """A step's loss terms or gradient norms were NaN or infinite (found at the next logged iteration)."""


def non_finite_error(report: StepReport, iteration: int, last_checkpoint: str | None) -> NonFiniteLossError:
    """The error for a read that found a non-finite step: which iteration, which terms, what was kept."""
    first = report.first_non_finite
    if first is not None:
        terms = ", ".join(f"{name}={value:.6g}" for name, value in sorted(first.values.items()))
        found = f"non-finite loss at iteration {first.iteration}: {terms}"
    else:
        found = "non-finite loss on another rank"
    if first is None or first.iteration != iteration:
        current = ", ".join(f"{name}={value:.6g}" for name, value in sorted(report.metrics.items()))
        found += f" (found at iteration {iteration}: {current})"
    kept = f"the last checkpoint, {last_checkpoint}, is untouched" if last_checkpoint else "there is no checkpoint"
    return NonFiniteLossError(
        f"{found}; nothing was saved after it and {kept} (lower optim.base_lr or raise optim.clip_grad)"
    )


def do_train(cfg: DictConfig, model: SSLMetaArch, ctx: RunContext, *, dataset: Any, resume: bool) -> dict[str, float]:
    """Train from the last checkpoint (or MODEL.WEIGHTS / scratch) to `ctx.max_iter`; returns global averages."""
    model.train()
    optimizer = build_optimizer(cfg, get_params_groups(model))
    schedules = build_schedulers(cfg, lr=ctx.lr, epoch_length=ctx.epoch_length)
    checkpointer = Checkpointer(
        output_dir=cfg.train.output_dir, model=model, optimizer=optimizer, max_to_keep=cfg.checkpointing.max_to_keep
    )
    resumed = restore(cfg, model, checkpointer, resume=resume)
    start_iter = resumed[1].iteration + 1 if resumed is not None else 0

    loader = build_data_loader(cfg, dataset, dtype=input_dtype(model), start_iter=start_iter)
    steps = group_micro_batches(iter(loader), cfg.train.grad_accum_steps)  # iter() draws the loader's seed
    if resumed is not None:
        Checkpointer.restore_rng(*resumed)

    tensorboard = None
    if distributed.is_main_process():
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run trains again the iterations after its checkpoint: purge_step hides the points the
        # interrupted run logged for them, so TensorBoard shows each iteration once (as training_metrics.json)
        tensorboard = SummaryWriter(
            os.path.join(cfg.train.output_dir, "tensorboard"), purge_step=start_iter if resumed is not None else None
        )
    metric_logger = MetricLogger(
        output_file=os.path.join(cfg.train.output_dir, "training_metrics.json"), tensorboard_writer=tensorboard
    )
    log_period = cfg.train.log_period_iterations
    n_micro = cfg.train.grad_accum_steps
    monitor = StepMonitor(ctx.device)
    logger.info("starting training at iteration %d of %d", start_iter, ctx.max_iter)
    iteration = start_iter
    for micro_batches in metric_logger.log_every(steps, log_period, "Training", ctx.max_iter, start_iter):
        lr, wd = schedules.lr[iteration], schedules.wd[iteration]
        momentum, teacher_temp = schedules.momentum[iteration], schedules.teacher_temp[iteration]
        last_layer_lr = schedules.last_layer_lr[iteration]
        apply_optim_scheduler(optimizer, lr=lr, wd=wd, last_layer_lr=last_layer_lr)
        clip_grad, loss_parameters = schedules.clip_grad[iteration], schedules.loss_parameters(iteration)
        model.set_loss_parameters(**loss_parameters)
        model.set_backbone_frozen(iteration < cfg.student.freeze_backbone_epochs * ctx.epoch_length)
        is_log_step = iteration % log_period == 0 or iteration == ctx.max_iter - 1

        optimizer.zero_grad(set_to_none=True)
        step_metrics: dict[str, torch.Tensor] = {}
        for index, micro_batch in enumerate(micro_batches):
            is_last = index == n_micro - 1
            model.set_gradient_sync(is_last)
            _, metrics = model.forward_backward(
                batch_to_device(micro_batch, ctx.device),
                teacher_temp,
                loss_scale=1.0 / n_micro,
                update_centers=is_last,
                compute_feature_stats=is_log_step and is_last,
            )
            for name, value in metrics.items():
                step_metrics[name] = step_metrics.get(name, 0.0) + value / n_micro
        grad_norms = clip_and_step(model, optimizer, clip_grad)
        model.update_teacher(momentum)
        checked = {name: step_metrics[name] for name in (*model.loss_weights, "total_loss")}
        if model.grad_scaler is None:  # with loss scaling, overflowing gradients are expected (the step is skipped)
            checked.update(grad_norms)
        monitor.record(iteration, checked)

        period = cfg.checkpointing.period_iterations
        is_last_step = iteration == ctx.max_iter - 1
        is_export_step = (
            cfg.evaluation.eval_period_iterations > 0 and (iteration + 1) % cfg.evaluation.eval_period_iterations == 0
        )
        is_checkpoint_step = period > 0 and (iteration + 1) % period == 0
        if not (is_log_step or is_last_step or is_export_step or is_checkpoint_step):
            iteration += 1
            continue  # no host-device synchronisation on this iteration
        report = monitor.read({**step_metrics, **grad_norms})
        if report.any_rank_non_finite:
            raise non_finite_error(report, iteration, checkpointer.latest())
        current_batch_size = micro_batches[0]["collated_global_crops"].shape[0] // 2 * n_micro
        metric_logger.update(
            lr=lr,
            wd=wd,
            mom=momentum,
            last_layer_lr=last_layer_lr,
            teacher_temp=teacher_temp,
            clip_grad=clip_grad,
            **loss_parameters,
            current_batch_size=current_batch_size,
            **report.metrics,
            **(bad_image_metrics(dataset) if is_log_step else {}),
        )
        metric_logger.end_iteration()  # the metrics line is written before the checkpoint
        if is_export_step:
            do_test(cfg, model, f"training_{iteration}")
        if is_last_step:
            checkpointer.save("model_final", iteration=iteration, grad_scaler=model.grad_scaler)
        elif report.stop_signal is not None:
            # SLURM warning, SIGTERM or Ctrl-C (dinov2.run.preemption): save what is done, then stop
            path = checkpointer.save(f"model_{iteration:07d}", iteration=iteration, grad_scaler=model.grad_scaler)
            logger.warning("stop requested by %s: saved %s", signal.Signals(report.stop_signal).name, path)
            if tensorboard is not None:
                tensorboard.close()
            raise preemption.TrainingPreempted(iteration, report.stop_signal)
        elif is_checkpoint_step:
            checkpointer.save(f"model_{iteration:07d}", iteration=iteration, grad_scaler=model.grad_scaler)
        iteration += 1
    metric_logger.synchronize_between_processes()
    if tensorboard is not None:
        tensorboard.close()
    return {name: meter.global_avg for name, meter in metric_logger.meters.items()}


def restore(
    cfg: DictConfig, model: SSLMetaArch, checkpointer: Checkpointer, *, resume: bool
) -> tuple[str, TrainerState] | None:
    """Resume from the last checkpoint (returns its path and state), else load MODEL.WEIGHTS (model only),
    else start from scratch (both return None)."""
    latest = checkpointer.latest() if resume else None
    if latest is not None:
        trainer_state = checkpointer.load(latest)
        assert trainer_state is not None, "a full load returns the trainer state"
        if model.grad_scaler is not None and trainer_state.grad_scaler is not None:
            model.grad_scaler.load_state_dict(trainer_state.grad_scaler)
        log_config_changes(cfg, latest, trainer_state)
        return latest, trainer_state
    if cfg.MODEL.WEIGHTS:
        if not os.path.isdir(cfg.MODEL.WEIGHTS):
            raise ResumeError(f"MODEL.WEIGHTS={cfg.MODEL.WEIGHTS!r} is not a checkpoint directory; fix MODEL.WEIGHTS")
        checkpointer.load(cfg.MODEL.WEIGHTS, model_only=True, backbone_across_objectives=True)
    else:
        logger.info("no checkpoint to resume from: training from scratch")
    return None


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        return {key: value for name, sub in tree.items() for key, value in _flatten(sub, f"{prefix}{name}.").items()}
    return {prefix.removesuffix("."): tree}


def config_changes(previous: DictConfig, current: DictConfig) -> dict[str, tuple[Any, Any]]:
    """`{dotted key: (previous value, current value)}` for every leaf that differs (missing: `<absent>`)."""
    old = _flatten(OmegaConf.to_container(previous, resolve=True))
    new = _flatten(OmegaConf.to_container(current, resolve=True))
    return {
        key: (old.get(key, "<absent>"), new.get(key, "<absent>"))
        for key in sorted(old.keys() | new.keys())
        if old.get(key, "<absent>") != new.get(key, "<absent>")
    }


def _global_batch(cfg: DictConfig, world_size: int) -> str:
    batch = cfg.train.batch_size_per_gpu * world_size * cfg.train.grad_accum_steps
    return (
        f"{batch} ({cfg.train.batch_size_per_gpu} per process x {world_size} processes x {cfg.train.grad_accum_steps})"
    )


def log_config_changes(cfg: DictConfig, checkpoint: str, trainer_state: TrainerState) -> None:
    """Warn, before the first resumed step, about every config value that differs from the checkpointed run's
    (the `config.yaml` saved in `checkpoint`), and spell out a change of the scaled learning rate."""
    path = os.path.join(checkpoint, CONFIG_FILE)
    if not os.path.isfile(path):
        logger.warning(
            "%s has no %s (an older checkpoint): changes of the config cannot be listed", checkpoint, CONFIG_FILE
        )
        return
    previous = OmegaConf.load(path)
    assert isinstance(previous, DictConfig), f"{path} holds a list, not a config"
    changes = config_changes(previous, cfg)
    if not changes:
        logger.info("resuming with the config of %s unchanged", checkpoint)
        return
    logger.warning(
        "resuming with %d config values that differ from the run that wrote %s (%s now holds the new values):\n%s",
        len(changes),
        checkpoint,
        os.path.join(cfg.train.output_dir, "config.yaml"),
        "\n".join(f"  {key}: {old!r} -> {new!r}" for key, (old, new) in changes.items()),
    )
    if "optim.lr" in changes:
        logger.warning(
            "the learning rate changes on resume: optim.lr %.6g -> %.6g (optim.base_lr %g -> %g, global batch %s -> "
            "%s, "
            "optim.scaling_rule %s); the lr schedule continues with the new value",
            previous.optim.lr,
            cfg.optim.lr,
            previous.optim.base_lr,
            cfg.optim.base_lr,
            _global_batch(previous, trainer_state.world_size),
            _global_batch(cfg, distributed.get_global_size()),
            cfg.optim.scaling_rule,
        )


def build_run_context(cfg: DictConfig, dataset_length: int) -> RunContext:
    environment = distributed.get_environment()
    assert environment is not None, "setup() enables the distributed environment first"
    epoch_length = cfg.train.OFFICIAL_EPOCH_LENGTH
    if epoch_length <= 0:
        epoch_length = dataset_length // (
            cfg.train.batch_size_per_gpu * environment.world_size * cfg.train.grad_accum_steps
        )
    return RunContext(
        device=environment.device,
        world_size=environment.world_size,
        rank=environment.rank,
        lr=cfg.optim.lr,
        epoch_length=epoch_length,
        max_iter=cfg.optim.epochs * epoch_length,
    )


def build_model(cfg: DictConfig, device: torch.device, meta_arch_factory: MetaArchFactory) -> SSLMetaArch:
    """Meta-architecture on `device`, rank 0's initial weights everywhere, compiled (`compile`), sharded when
    distributed."""
    model = meta_arch_factory(cfg)
    model.to(device)
    distributed.broadcast_module_states_(model)
    if cfg.compile:
        compile_meta_arch(model)  # before sharding: activation checkpointing (in the model) -> compile -> FSDP
    if distributed.is_enabled():
        model.prepare_for_distributed_training(build_meshes(device))
    model.build_grad_scaler(device)
    logger.info("model:\n%s", model)
    return model


def main(args: argparse.Namespace, meta_arch_factory: MetaArchFactory = SSLMetaArch) -> dict[str, float]:
    """Run one training job (or, with `--eval-only`, one teacher export) described by `args`."""
    cfg = setup(args)
    dataset = build_dataset(cfg)
    # Seed after the dataset is built: building it may import libraries (scikit-learn for Digits) whose first
    # import draws from Python's `random`, which would make the run depend on what the process imported before.
    seed = cfg.train.seed + distributed.get_global_rank()
    fix_random_seeds(seed)
    logger.info("seed %d (train.seed + rank)", seed)
    ctx = build_run_context(cfg, len(dataset))
    logger.info("run: %s", ctx)
    model = build_model(cfg, ctx.device, meta_arch_factory)
    if args.eval_only:
        checkpointer = Checkpointer(
            output_dir=cfg.train.output_dir, model=model, optimizer=None, max_to_keep=cfg.checkpointing.max_to_keep
        )
        latest = checkpointer.latest()
        if latest is None:
            raise ResumeError(f"--eval-only needs a checkpoint in {checkpointer.save_dir}; none was found")
        checkpointer.load(latest, model_only=True)
        iteration = torch.load(os.path.join(latest, "trainer_state.pth"), weights_only=True)["iteration"]
        do_test(cfg, model, f"manual_{iteration}")
        return {}
    # SIGTERM / Ctrl-C: checkpoint at the next logged iteration and raise TrainingPreempted (tools/train.py
    # turns it into one line and exit code 128 + signal)
    with preemption.handle_stop_signals(signal.SIGTERM, signal.SIGINT):
        return do_train(cfg, model, ctx, dataset=dataset, resume=args.resume)
