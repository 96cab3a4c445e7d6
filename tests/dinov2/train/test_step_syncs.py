"""The training step never waits for the device, except the one read of a logged iteration.

On CPU no call synchronises, so the test counts the Python-level calls that would on CUDA (`.item()`,
`.tolist()`, `int(t)`, `float(t)`, `bool(t)`, `t.__index__()`, `.cpu()`, `.numpy()`) made from the code of the
step (meta-architecture, losses, loop, monitor), with `torch.Tensor` patched. Data loading, logging and
checkpoint writing run on host tensors or synchronise by nature and are not counted.
"""

import contextlib
import pathlib
import sys
from typing import Iterator

import pytest
import torch

from dinov2.train.step_monitor import StepMonitor
from dinov2.train.train import apply_optim_scheduler, build_optimizer, clip_and_step, get_args_parser, get_params_groups
from dinov2.utils.config import load_config
from simdinov2.train.build import build_meta_arch

ROOT = pathlib.Path(__file__).parents[3]
CONFIGS = {name: ROOT / "configs" / "tiny" / f"{name}_test.yaml" for name in ("dinov2", "simdinov2")}
SYNC_METHODS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__", "cpu", "numpy")
NOT_STEP = ("dinov2/data/", "dinov2/logging/", "dinov2/train/checkpointer.py", "dinov2/utils/")


def _on_step_path(filename: str) -> bool:
    path = pathlib.Path(filename).resolve()
    if not path.is_relative_to(ROOT) or "tests" in path.relative_to(ROOT).parts[:1]:
        return False
    relative = path.relative_to(ROOT).as_posix()
    return relative.startswith(("dinov2/", "simdinov2/")) and not relative.startswith(NOT_STEP)


def _inside(frame, function: str | None) -> bool:
    while function is not None and frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return function is None


@contextlib.contextmanager
def count_syncs(within: str | None = None) -> Iterator[list[str]]:
    """Yields the list of `method file:line` of every would-be synchronisation on the step path (only those
    made inside a call of the function named `within`, e.g. `do_train`, when given)."""
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def patched(name: str):
        original = originals[name]

        def method(self, *args, **kwargs):
            caller = sys._getframe(1)
            if _on_step_path(caller.f_code.co_filename) and _inside(caller, within):
                relative = pathlib.Path(caller.f_code.co_filename).resolve().relative_to(ROOT)
                calls.append(f"{name} {relative}:{caller.f_lineno}")
            return original(self, *args, **kwargs)

        return method

    for name in SYNC_METHODS:
        setattr(torch.Tensor, name, patched(name))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def test_the_counter_sees_a_sync():
    from dinov2.loss import iBOTPatchLoss

    logits, masks = torch.randn(3, 5), torch.ones(1, 3, dtype=torch.bool)
    with count_syncs() as calls:
        iBOTPatchLoss(5).forward_masked(logits, logits.softmax(-1), masks, n_masked_patches=torch.tensor(3))
    assert calls and calls[0].startswith("__index__ dinov2/loss/ibot_patch_loss.py")  # a tensor count slices: a sync


@pytest.mark.parametrize("objective", ["dinov2", "simdinov2"])
def test_a_step_has_no_sync_and_the_read_is_one(objective):
    from batches import make_batches

    torch.manual_seed(0)
    cfg = load_config(CONFIGS[objective], ["train.centering=centering"] if objective == "dinov2" else [])
    model = build_meta_arch(cfg).train()
    optimizer = build_optimizer(cfg, get_params_groups(model))
    apply_optim_scheduler(optimizer, lr=1e-3, wd=0.04, last_layer_lr=1e-3)
    monitor = StepMonitor(torch.device("cpu"))
    batches = make_batches(n_batches=3, n_images=4)
    for index, batch in enumerate(batches):
        is_log_step = index == len(batches) - 1
        with count_syncs() as calls:
            optimizer.zero_grad(set_to_none=True)
            _, metrics = model.forward_backward(batch, 0.05, compute_feature_stats=is_log_step)
            grad_norms = clip_and_step(model, optimizer, cfg.optim.clip_grad)
            model.update_teacher(0.99)
            monitor.record(index, {name: metrics[name] for name in (*model.loss_weights, "total_loss")} | grad_norms)
        assert calls == [], f"step {index} synchronises: {calls}"
    with count_syncs() as calls:
        report = monitor.read({**metrics, **grad_norms})
    assert len(calls) == 1 and calls[0].startswith("tolist dinov2/train/step_monitor.py"), calls
    assert set(report.metrics) == {*metrics, *grad_norms} and report.first_non_finite is None


def test_the_training_loop_reads_the_device_once_per_logged_iteration(tmp_path):
    from dinov2.train.train import main

    # 8 iterations, logged at 0, 3, 6 and 7 (the last); no periodic checkpoint or export. Model construction
    # (outside do_train) reads host tensors and is not counted.
    argv = ["--config-file", str(CONFIGS["dinov2"]), "--output-dir", str(tmp_path), "optim.epochs=4",
            "train.log_period_iterations=3", "checkpointing.period_iterations=0",
            "evaluation.eval_period_iterations=0"]  # fmt: skip
    with count_syncs(within="do_train") as calls:
        main(get_args_parser().parse_args(argv))
    assert len(calls) == 4 and all(call.startswith("tolist dinov2/train/step_monitor.py") for call in calls), calls
