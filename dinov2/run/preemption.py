"""Graceful stops: a signal asks the training loop to checkpoint at its next read of the device.

Signals handled:
- SLURM's time-limit / preemption warning (submitit asks for `--signal=USR2@<delay>`; `scancel --signal=USR2
  JOBID` sends it by hand): checkpoint, then `dinov2.run.submit` requeues the job, which resumes.
- SIGTERM (`kill`, torchrun elastic, Kubernetes, SLURM's `scancel`) and SIGINT (Ctrl-C), while `main` of
  training runs (`handle_stop_signals`): checkpoint, log it, exit with 128 + the signal number (143, 130).
  A second SIGINT exits at once without saving.

Saving a sharded checkpoint needs every rank and a signal handler must not run collectives, so the handler
only records the request. The loop folds `stop_flags(device)` into the one all-reduce it reads on logged
iterations (dinov2.train.step_monitor); `agreed_stop` turns the reduced flags into the signal every rank
stops on (any rank that saw a signal stops all of them at the same iteration). The loop then saves a
checkpoint of the completed iterations and raises `TrainingPreempted`; a resumed run restarts from exactly
that checkpoint: no iteration is lost or repeated. The request is honoured at the next read, i.e. after at
most `train.log_period_iterations` iterations (or earlier at a checkpoint or export iteration).

Before the loop polls (start-up, data loading) and in entry points that never poll (the evaluation tools),
the SLURM warning goes straight to the fallback handler given to `install_handler`, which for submitit
jobs is submitit's own: checkpoint the submission, requeue, exit. Data-loader worker processes inherit the
handler through fork and ignore the signal (Ctrl-C reaches the whole process group): the main process stops
them, so no worker prints a traceback.
"""

import contextlib
import logging
import os
import signal
import types
from typing import Callable, Iterator

import torch

logger = logging.getLogger(__name__)

SignalHandler = Callable[[int, types.FrameType | None], object]

# One slot per signal that can ask for a stop, in a fixed order so that every rank builds the same flags.
STOP_SIGNALS: tuple[int, ...] = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)

_requested_signal: int | None = None
_loop_polls = False
_fallbacks: dict[int, SignalHandler | None] = {}
_owner_pid: int | None = None


class TrainingPreempted(RuntimeError):
    """Raised by the training loop after it saved a checkpoint because a stop was requested."""

    def __init__(self, iteration: int, signum: int) -> None:
        super().__init__(f"stopped after iteration {iteration} on signal {signal.Signals(signum).name}")
        self.iteration = iteration
        self.signum = signum


def _on_signal(signum: int, frame: types.FrameType | None) -> None:
    global _requested_signal
    if os.getpid() != _owner_pid:
        return  # a forked data-loader worker: the main process stops it
    name = signal.Signals(signum).name
    fallback = _fallbacks.get(signum)
    if not _loop_polls and fallback is not None:
        logger.warning("received %s before the training loop polls for it: passing it on", name)
        fallback(signum, frame)
        return
    if signum == signal.SIGINT and _requested_signal == signal.SIGINT:
        logger.error("received SIGINT again: exiting now, without saving the iterations since the last checkpoint")
        logging.shutdown()
        os._exit(128 + signal.SIGINT)
    _requested_signal = signum
    hint = "; press Ctrl-C again to exit at once without saving" if signum == signal.SIGINT else ""
    logger.warning("received %s: will checkpoint and stop at the next logged iteration%s", name, hint)


def install_handler(signum: int, fallback: SignalHandler | None = None) -> None:
    """Handle `signum` as a stop request for the training loop.

    `fallback` (e.g. submitit's requeue handler) handles the signal instead while no loop polls; without
    one, the request is recorded in any case.
    """
    global _owner_pid
    if signum not in STOP_SIGNALS:
        raise ValueError(f"signal {signal.Signals(signum).name} has no stop slot; add it to STOP_SIGNALS")
    _fallbacks[signum] = fallback
    _owner_pid = os.getpid()
    signal.signal(signum, _on_signal)


@contextlib.contextmanager
def handle_stop_signals(*signums: int) -> Iterator[None]:
    """While the block runs: `signums` (SIGTERM, SIGINT) are stop requests and the loop counts as polling.

    The previous handlers and polling state are restored on exit (a second run in the same process starts
    clean).
    """
    global _loop_polls
    previous = {signum: signal.getsignal(signum) for signum in signums}
    previous_fallbacks = {signum: _fallbacks.get(signum) for signum in signums}
    for signum in signums:
        install_handler(signum)
    _loop_polls = True
    try:
        yield
    finally:
        reset()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
            _fallbacks[signum] = previous_fallbacks[signum]


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


def stop_flags(device: torch.device) -> torch.Tensor:
    """[len(STOP_SIGNALS)] float32 on `device`: 1 in the slot of this rank's requested signal, else 0.

    Marks the loop as polling (later warning signals are recorded instead of handed to the fallback).
    Built with fills on the device: no host-to-device copy.
    """
    global _loop_polls
    _loop_polls = True
    flags = torch.zeros(len(STOP_SIGNALS), device=device)
    if _requested_signal is not None:
        flags[STOP_SIGNALS.index(_requested_signal)].fill_(1.0)
    return flags


def agreed_stop(reduced_flags: list[float]) -> int | None:
    """The signal to stop on from `stop_flags` reduced over ranks (mean or sum), or None to go on.

    Any rank's request stops every rank; this rank records the signal when another rank saw it.
    """
    for signum, flag in zip(STOP_SIGNALS, reduced_flags, strict=True):
        if flag > 0:
            if _requested_signal is None:
                request_stop(signum)  # another rank saw the signal: this rank reports the same one
            return signum
    return None
