"""Smoothed meters and the metric logger of the training loop."""

import collections
import datetime
import json
import logging
import os
import resource
import time
from typing import Any, Iterable, Iterator, Protocol

import torch

from dinov2 import distributed

logger = logging.getLogger(__name__)


class ScalarWriter(Protocol):
    """What MetricLogger needs from a TensorBoard `SummaryWriter`."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None: ...


class SmoothedValue:
    """A series of scalars with windowed (median, average) and global (average, count) statistics."""

    def __init__(self, window_size: int = 20, fmt: str = "{median:.4f} ({global_avg:.4f})") -> None:
        self.window: collections.deque[float] = collections.deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt

    def update(self, value: float, n: int = 1) -> None:
        self.window.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self) -> None:
        """Sum `count` and `total` over ranks (float64); the window stays local."""
        stats = torch.tensor([self.count, self.total], dtype=torch.float64)
        distributed.all_reduce_sum_(stats)
        self.count = int(stats[0].item())
        self.total = float(stats[1].item())

    @property
    def median(self) -> float:
        return float(torch.tensor(list(self.window)).median().item())

    @property
    def avg(self) -> float:
        return float(torch.tensor(list(self.window), dtype=torch.float64).mean().item())

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    @property
    def max(self) -> float:
        return max(self.window)

    @property
    def value(self) -> float:
        return self.window[-1]

    def __str__(self) -> str:
        return self.fmt.format(
            median=self.median, avg=self.avg, global_avg=self.global_avg, max=self.max, value=self.value
        )


def _max_memory_mb() -> float:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class MetricLogger:
    """Meters updated every iteration; a progress line and a JSON line every `print_freq` iterations.

    JSON lines (rank 0 only) go to `output_file`: `iteration`, `iter_time`, `data_time` (window averages,
    seconds), `it_per_s`, the window **median** of every meter under its own name (the official format),
    and `last`: the exact value of every meter at that iteration. `log_every(start_iteration=k)` first drops
    the file's lines of iterations >= k (a resumed run writes them again), so the file reads as one run.
    """

    def __init__(
        self,
        *,
        delimiter: str = "  ",
        output_file: str | os.PathLike | None = None,
        tensorboard_writer: ScalarWriter | None = None,
        window_size: int = 20,
    ) -> None:
        self.meters: dict[str, SmoothedValue] = collections.defaultdict(lambda: SmoothedValue(window_size))
        self.delimiter = delimiter
        self.output_file = output_file
        self.tensorboard_writer = tensorboard_writer
        self._ended = True  # no iteration of log_every in progress

    def update(self, **values: float | torch.Tensor) -> None:
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            if not isinstance(value, (float, int)):
                raise TypeError(f"meter {name!r} got {type(value).__name__}; meters take floats")
            self.meters[name].update(float(value))

    def __str__(self) -> str:
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def synchronize_between_processes(self) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def _dump(self, iteration: int, iter_time: SmoothedValue, data_time: SmoothedValue) -> None:
        if not distributed.is_main_process():
            return
        record: dict[str, Any] = {
            "iteration": iteration,
            "iter_time": iter_time.avg,
            "data_time": data_time.avg,
            "it_per_s": 1.0 / max(iter_time.avg, 1e-12),
        }
        record.update({name: meter.median for name, meter in self.meters.items()})
        record["last"] = {name: meter.value for name, meter in self.meters.items()}
        if self.output_file is not None:
            with open(self.output_file, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        if self.tensorboard_writer is not None:
            for name, meter in self.meters.items():
                self.tensorboard_writer.add_scalar(name, meter.median, iteration)
            self.tensorboard_writer.add_scalar("it_per_s", record["it_per_s"], iteration)

    def drop_records_from(self, iteration: int) -> None:
        """Remove the `output_file` lines of iterations >= `iteration` and a line torn by a kill (rank 0).

        A run killed after its last checkpoint has logged iterations that the resumed run repeats.
        """
        if self.output_file is None or not distributed.is_main_process() or not os.path.isfile(self.output_file):
            return
        kept: list[str] = []
        n_dropped = 0
        with open(self.output_file) as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the last line of a process killed while writing it
                    record = None
                if isinstance(record, dict) and record.get("iteration", iteration) < iteration:
                    kept.append(line if line.endswith("\n") else line + "\n")
                else:
                    n_dropped += 1
        if n_dropped == 0:
            return
        tmp = f"{os.fspath(self.output_file)}.tmp"
        with open(tmp, "w") as handle:
            handle.writelines(kept)
        os.replace(tmp, self.output_file)
        logger.info(
            "dropped %d lines of %s at or past iteration %d (logged after the checkpoint this run resumes from)",
            n_dropped,
            self.output_file,
            iteration,
        )

    def log_every(
        self,
        iterable: Iterable[Any],
        print_freq: int,
        header: str = "",
        n_iterations: int | None = None,
        start_iteration: int = 0,
    ) -> Iterator[Any]:
        """Yield items of `iterable` for iterations `start_iteration .. n_iterations - 1`.

        No item is fetched past the last iteration. Iteration `i` is logged when `i % print_freq == 0` or
        `i == n_iterations - 1`: when the caller calls `end_iteration()` (the training loop does so before
        it checkpoints, so that a run killed after a checkpoint still has that iteration's line), else
        after the caller's body. Lines of `output_file` from `start_iteration` on are dropped first.
        """
        n_total = len(iterable) if n_iterations is None else n_iterations  # type: ignore[arg-type]
        self.drop_records_from(start_iteration)
        self._print_freq, self._header, self._n_total = print_freq, header, n_total
        self._iter_time = SmoothedValue(fmt="{avg:.4f}")
        self._data_time = SmoothedValue(fmt="{avg:.4f}")
        iteration = start_iteration
        source = iter(iterable)
        start = time.time()
        while iteration < n_total:
            self._iteration_start = time.time()
            obj = next(source)
            self._data_time.update(time.time() - self._iteration_start)
            self._iteration, self._ended = iteration, False
            yield obj
            self.end_iteration()
            iteration += 1
        total_s = time.time() - start
        n_done = iteration - start_iteration
        logger.info(
            "%s total time: %s (%.4f s / it)",
            header,
            datetime.timedelta(seconds=int(total_s)),
            total_s / max(n_done, 1),
        )

    def end_iteration(self) -> None:
        """Record the current iteration's time and log it if it is a log iteration (idempotent)."""
        if self._ended:
            return
        self._ended = True
        iteration, n_total = self._iteration, self._n_total
        self._iter_time.update(time.time() - self._iteration_start)
        if iteration % self._print_freq != 0 and iteration != n_total - 1:
            return
        self._dump(iteration, self._iter_time, self._data_time)
        eta_s = self._iter_time.global_avg * (n_total - iteration - 1)
        logger.info(
            self.delimiter.join(
                [
                    f"{self._header} [{iteration:{len(str(n_total))}d}/{n_total}]",
                    f"eta: {datetime.timedelta(seconds=int(eta_s))}",
                    f"it/s: {1.0 / max(self._iter_time.avg, 1e-12):.2f}",
                    str(self),
                    f"time: {self._iter_time}",
                    f"data: {self._data_time}",
                    f"max mem: {_max_memory_mb():.0f} MB",
                ]
            )
        )
