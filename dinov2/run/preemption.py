"""Graceful preemption: a signal asks the training loop to checkpoint at the next iteration boundary.

SLURM warns a job some time before its time limit or preemption with a signal (submitit asks for SIGUSR2
by default, `--signal=USR2@<signal delay>`). Saving a sharded checkpoint needs every rank, and a signal handler
must not run collectives, so the handler only records the request. The loop calls `should_stop()` once
per iteration: it agrees on the request across ranks (any rank that saw the signal stops all of them at
the same iteration), saves a checkpoint and raises `TrainingPreempted`. The launcher then requeues the
job, which resumes from exactly that checkpoint: no iteration is lost or repeated.
"""

import logging
import signal
import types

import torch

from dinov2 import distributed

logger = logging.getLogger(__name__)

_requested_signal: int | None = None


class TrainingPreempted(RuntimeError):
    """Raised by the training loop after it saved a checkpoint because a stop was requested."""

    def __init__(self, iteration: int, signum: int) -> None:
        super().__init__(f"stopped after iteration {iteration} on signal {signal.Signals(signum).name}")
        self.iteration = iteration
        self.signum = signum


def _record(signum: int, frame: types.FrameType | None) -> None:
    global _requested_signal
    _requested_signal = signum
    logger.warning("received %s: will checkpoint and stop at the next iteration", signal.Signals(signum).name)


def install_handler(signum: int) -> None:
    """Record `signum` as a stop request instead of acting on it immediately."""
    signal.signal(signum, _record)


def request_stop(signum: int = signal.SIGUSR2) -> None:
    """Ask the loop to stop as if `signum` had been received (tests, interactive use)."""
    _record(signum, None)


def requested_signal() -> int | None:
    """The signal that asked for a stop on this rank, or None."""
    return _requested_signal


def should_stop(device: torch.device) -> bool:
    """Collective: True on every rank when any rank received a stop request."""
    flag = torch.tensor([0.0 if _requested_signal is None else 1.0], device=device)
    if distributed.is_enabled():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item() > 0)
