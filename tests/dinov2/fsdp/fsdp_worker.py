"""Trains the tiny test model for a few steps on fixed batches; run plain (1 process) or under torchrun.

Every process builds the same global batches and keeps its rank's images; rank 0 saves the per-step
reduced losses and the full student / teacher weights to --out.
"""

import argparse
import os
import sys

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train"))

from batches import make_batches, select_images  # noqa: E402

from dinov2 import distributed  # noqa: E402
from dinov2.fsdp import build_meshes  # noqa: E402
from dinov2.train.checkpointer import Checkpointer, export_teacher  # noqa: E402
from dinov2.train.compile import compile_meta_arch  # noqa: E402
from dinov2.train.ssl_meta_arch import SSLMetaArch  # noqa: E402
from dinov2.train.step_monitor import StepMonitor  # noqa: E402
from dinov2.train.train import (  # noqa: E402
    apply_optim_scheduler,
    build_model,
    build_optimizer,
    clip_and_step,
    fix_random_seeds,
    get_params_groups,
)
from dinov2.utils.config import load_config  # noqa: E402

CONFIG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "configs", "tiny", "dinov2_test.yaml"
)


def full_state(model: SSLMetaArch) -> dict[str, torch.Tensor]:
    """Full (gathered) model state on CPU; a collective when distributed."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options) if distributed.is_enabled() else model.state_dict()
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--checkpoint-dir", default=None, help="also save a training checkpoint there at the end")
    parser.add_argument("--freeze-steps", type=int, default=0, help="student backbone frozen for the first steps")
    parser.add_argument("--compile-backend", default=None, help="compile the model with this torch.compile backend")
    parser.add_argument("opts", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    environment = distributed.enable()
    cfg = load_config(CONFIG, args.opts)
    fix_random_seeds(0)
    if args.compile_backend is None:
        model = build_model(cfg, environment.device, SSLMetaArch)
    else:  # build_model's order (compile before sharding) with a backend that needs no code generation
        model = SSLMetaArch(cfg).to(environment.device)
        distributed.broadcast_module_states_(model)
        compile_meta_arch(model, backend=args.compile_backend)
        if distributed.is_enabled():
            model.prepare_for_distributed_training(build_meshes(environment.device))
    model.train()
    optimizer = build_optimizer(cfg, get_params_groups(model))
    batches = make_batches(n_batches=args.steps, n_images=args.global_batch)
    per_rank = args.global_batch // environment.world_size
    per_micro = per_rank // args.accum
    losses = []
    snapshots = {"initial": full_state(model)} if args.freeze_steps else {}
    monitor = StepMonitor(environment.device)
    for step, batch in enumerate(batches):
        torch.manual_seed(100 + step)
        model.set_backbone_frozen(step < args.freeze_steps)
        apply_optim_scheduler(optimizer, lr=1e-3, wd=0.04, last_layer_lr=1e-3 if step > 0 else 0.0)
        optimizer.zero_grad(set_to_none=True)
        rank_images = list(range(environment.rank * per_rank, (environment.rank + 1) * per_rank))
        step_metrics: dict[str, torch.Tensor] = {}
        for micro in range(args.accum):
            images = rank_images[micro * per_micro : (micro + 1) * per_micro]
            is_last = micro == args.accum - 1
            model.set_gradient_sync(is_last)
            _, metrics = model.forward_backward(
                select_images(batch, images), 0.05, loss_scale=1.0 / args.accum, update_centers=is_last
            )
            for name, value in metrics.items():
                step_metrics[name] = step_metrics.get(name, 0.0) + value / args.accum
        grad_norms = clip_and_step(model, optimizer, cfg.optim.clip_grad)
        model.update_teacher(0.9)
        monitor.record(step, {name: step_metrics[name] for name in (*model.loss_weights, "total_loss")} | grad_norms)
        report = monitor.read(step_metrics)  # the training loop's one read: rank-mean metrics, non-finite verdict
        assert not report.any_rank_non_finite and report.stop_signal is None
        losses.append(report.metrics)
        if step == args.freeze_steps - 1:
            snapshots["frozen"] = full_state(model)
    if args.checkpoint_dir is not None:
        checkpointer = Checkpointer(output_dir=args.checkpoint_dir, model=model, optimizer=optimizer, max_to_keep=1)
        checkpointer.save(f"model_{args.steps - 1:07d}", iteration=args.steps - 1)
        export_teacher(model, os.path.join(args.checkpoint_dir, "eval", "final", "teacher_checkpoint.pth"))
    optimizer_state = get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    state = full_state(model)
    if distributed.is_main_process():
        torch.save(
            {
                "losses": losses,
                "state": state,
                "snapshots": snapshots,
                "optimizer": optimizer_state,
                "launcher": environment.launcher,
                "backend": environment.backend,
                "world_size": environment.world_size,
            },
            args.out,
        )
    distributed.disable()


if __name__ == "__main__":
    main()
