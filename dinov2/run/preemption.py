"""Graceful preemption: a signal asks the training loop to checkpoint at the next iteration boundary.

SLURM warns a job some time before its time limit (submitit asks for `--signal=USR2@<delay>`), and
`scancel --signal=USR2 JOBID` sends the same warning by hand. Saving a sharded checkpoint needs every rank
and a signal handler must not run collectives, so while a training loop is running the handler only
records the request. The loop calls `should_stop(device)` once per iteration: the ranks agree on the request
(any rank that saw the signal stops all of them at the same iteration), the loop saves a checkpoint of the
completed iterations and raises `TrainingPreempted`, and the launcher (`dinov2.run.submit`) requeues the
job, which resumes from exactly that checkpoint: no iteration is lost or repeated.

Before the first `should_stop` call (start-up, data loading) and in entry points that never call it (the
evaluation tools), the signal goes straight to the fallback handler given to `install_handler`, which for
submitit jobs is submitit's own: checkpoint the submission, requeue, exit.
"""

import logging
import signal
import types
from typing import Callable

import torch

from dinov2 import distributed

logger = logging.getLogger(__name__)

SignalHandler = Callable[[int, types.FrameType | None], object]

_requested_signal: int | None = None
_loop_polls = False
_fallback: SignalHandler | None = None


class TrainingPreempted(RuntimeError):
    """Raised by the training loop after it saved a checkpoint because a stop was requested."""

    def __init__(self, iteration: int, signum: int) -> None:
        super().__init__(f"stopped after iteration {iteration} on signal {signal.Signals(signum).name}")
        self.iteration = iteration
        self.signum = signum


def _on_signal(signum: int, frame: types.FrameType | None) -> None:
    global _requested_signal
    if not _loop_polls and _fallback is not None:
        logger.warning("received %s before the training loop polls for it: passing it on", signal.Signals(signum).name)
        _fallback(signum, frame)
        return
    _requested_signal = signum
    logger.warning("received %s: will checkpoint and stop at the next iteration", signal.Signals(signum).name)


def install_handler(signum: int, fallback: SignalHandler | None = None) -> None:
    """Handle `signum` as a stop request for the training loop.

    `fallback` (e.g. submitit's requeue handler) handles the signal instead while no loop polls
    `should_stop`; without one, the request is recorded in any case.
    """
    global _fallback
    _fallback = fallback
    signal.signal(signum, _on_signal)


def request_stop(signum: int = signal.SIGUSR2) -> None:
    """Ask the loop to stop as if `signum` had been received while it polls (tests, interactive use)."""
    global _requested_signal
    _requested_signal = signum


def requested_signal() -> int | None:
    """The signal that asked for a stop on this rank, or None."""
    return _requested_signal


def reset() -> None:
    """Forget a recorded request and the polling state (a new run in the same process)."""
    global _requested_signal, _loop_polls
    _requested_signal = None
    _loop_polls = False


def should_stop(device: torch.device) -> bool:
    """Collective (every rank calls it at the same iteration): True on all ranks when any rank was asked to stop.

    The first call marks the loop as polling, so that later signals are recorded instead of handed to the
    fallback. `device` is where the one-element flag is reduced (the process group's device).
    """
    global _loop_polls
    _loop_polls = True
    flag = torch.tensor([0 if _requested_signal is None else int(_requested_signal)], device=device)
    if distributed.is_enabled():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    signum = int(flag.item())
    if signum and _requested_signal is None:
        request_stop(signum)  # another rank saw the signal: this rank reports the same one
    return signum != 0
