"""What the training loop learns from the device, read once per logged iteration and at no other step.

A host-device synchronisation stalls the CPU until the GPU has drained its queue, so the next step's
kernels are launched late. The loop therefore keeps everything it must know on the device and reads it in
one go on logged iterations (and on checkpoint / export iterations, which synchronise anyway):

- the metrics of that iteration (loss terms, diagnostics, gradient norms), averaged over ranks;
- the stop request of any rank (dinov2.run.preemption), so that all ranks stop at the same iteration;
- a non-finite record: every step's loss terms and gradient norms are checked on the device, the first
  non-finite step's iteration and values are kept there, and the read reports them.

`read` does one all-reduce and one device-to-host copy. Non-finite detection is therefore delayed to the
next read: a diverged step is applied and up to `train.log_period_iterations - 1` further steps run before
the loop raises, but no checkpoint or teacher export is ever written from such a state, because every save
happens right after a read.
"""

import dataclasses

import torch
from torch import Tensor

from dinov2 import distributed
from dinov2.run import preemption


@dataclasses.dataclass(frozen=True)
class NonFiniteStep:
    """This rank's first non-finite step since the run (re)started: its iteration and checked values."""

    iteration: int
    values: dict[str, float]


@dataclasses.dataclass(frozen=True)
class StepReport:
    """One read: rank-mean metrics, the agreed stop signal, and the non-finite record."""

    metrics: dict[str, float]
    stop_signal: int | None
    any_rank_non_finite: bool
    first_non_finite: NonFiniteStep | None


class StepMonitor:
    """Device-side non-finite record of every step, and the one read of a logged iteration.

    Args:
        device: where the metrics live (the process group's device).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._checked_names: list[str] | None = None
        self._first_iteration = torch.full((), -1.0, device=device)
        self._first_values: Tensor | None = None
        self._n_non_finite = torch.zeros((), device=device)

    def record(self, iteration: int, checked: dict[str, Tensor]) -> None:
        """Check step `iteration`'s scalars (loss terms, gradient norms) for NaN / inf on the device; no sync.

        The same names must be checked at every step (they index the kept values).
        """
        names = sorted(checked)
        if self._checked_names is None:
            self._checked_names = names
            self._first_values = torch.zeros(len(names), device=self.device)
        elif names != self._checked_names:
            raise ValueError(f"checked scalars changed from {self._checked_names} to {names}")
        assert self._first_values is not None
        values = torch.stack([checked[name].detach().float().reshape(()) for name in names])
        non_finite = ~torch.isfinite(values).all()
        is_first = non_finite & (self._first_iteration < 0)
        self._first_iteration = torch.where(is_first, float(iteration), self._first_iteration)
        self._first_values = torch.where(is_first, values, self._first_values)
        self._n_non_finite = self._n_non_finite + non_finite

    def read(self, metrics: dict[str, Tensor]) -> StepReport:
        """The deliberate synchronisation: all-reduce (mean) `metrics` with the stop flags and non-finite
        counts of every rank, then copy that and this rank's non-finite record to the host.

        metrics: scalar tensors on the device (every rank passes the same names).
        """
        names = sorted(metrics)
        stop_flags = preemption.stop_flags(self.device)
        shared = torch.cat(
            [
                torch.stack([metrics[name].detach().float().reshape(()) for name in names]),
                stop_flags,
                self._n_non_finite.reshape(1),
            ]
        )
        distributed.all_reduce_mean_(shared)
        local = [self._first_iteration.reshape(1)]
        if self._first_values is not None:
            local.append(self._first_values)
        values = torch.cat([shared, *local]).tolist()  # the one device-to-host read of the iteration
        n_metrics, n_flags = len(names), len(stop_flags)
        reduced = dict(zip(names, values[:n_metrics], strict=True))
        stop_signal = preemption.agreed_stop(values[n_metrics : n_metrics + n_flags])
        any_rank_non_finite = values[n_metrics + n_flags] > 0
        first_iteration = int(values[n_metrics + n_flags + 1])
        first = None
        if first_iteration >= 0 and self._checked_names is not None:
            kept = values[n_metrics + n_flags + 2 :]
            first = NonFiniteStep(first_iteration, dict(zip(self._checked_names, kept, strict=True)))
        return StepReport(reduced, stop_signal, any_rank_non_finite, first)
