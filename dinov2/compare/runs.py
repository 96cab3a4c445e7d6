"""What a finished (or failed) training run left on disk, and how two runs' configs differ.

A run directory written by `dinov2.train.train.main` holds:

* `config.yaml`: the resolved config (with the scaled `optim.lr`);
* `training_metrics.json`: one JSON object per logged iteration (`dinov2.logging.MetricLogger`): the
  window medians of every meter under its own name and `last`, the exact values at that iteration;
* `logs/log.txt`: the progress lines (`max mem: N MB`) and `Training total time: H:MM:SS (S s / it)`;
* `eval/training_<it>/teacher_checkpoint.pth`: teacher exports after iteration `it` (0-based), i.e. after
  `it + 1` optimizer steps.
"""

import dataclasses
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dinov2.utils.config import load_config

logger = logging.getLogger(__name__)

METRICS_FILENAME = "training_metrics.json"
LOG_FILENAME = Path("logs") / "log.txt"
EXPORT_PATTERN = re.compile(r"^training_(\d+)$")
_MAX_MEM = re.compile(r"max mem: (\d+(?:\.\d+)?) MB")
_TOTAL_TIME = re.compile(r"total time: \S+ \((\d+(?:\.\d+)?) s / it\)")
_NON_FINITE = re.compile(r"non-finite loss at iteration (\d+)")
_WORLD_SIZE = re.compile(r"run: RunContext\(.*?world_size=(\d+)")

# Keys that differ between any two runs and say nothing about the method.
IGNORED_CONFIG_KEYS: tuple[str, ...] = ("train.output_dir",)


@dataclasses.dataclass(frozen=True)
class LogSummary:
    """Figures read from a run's `logs/log.txt` (None when the log does not contain them)."""

    seconds_per_iter: float | None  # from the last "Training total time: ... (S s / it)" with S > 0
    peak_memory_mb: float | None  # largest "max mem: N MB" (CUDA max allocated, else the process's max RSS)
    non_finite_iteration: int | None  # iteration of a "non-finite loss" error
    world_size: int  # processes, from the "run: RunContext(... world_size=W ...)" line (1 when absent)


@dataclasses.dataclass(frozen=True)
class RunData:
    """A run directory, read once."""

    name: str
    run_dir: Path
    config: DictConfig
    records: list[dict[str, Any]]
    exports: list[tuple[int, Path]]  # (optimizer steps done, teacher_checkpoint.pth), by step
    log: LogSummary

    @property
    def global_batch_size(self) -> int:
        """Images per optimizer step: batch per process x accumulation steps x processes (from the log)."""
        return int(self.config.train.batch_size_per_gpu * self.config.train.grad_accum_steps * self.log.world_size)

    @property
    def images_per_second(self) -> float | None:
        """Global batch / mean seconds per iteration of the whole run (the log's total-time line)."""
        if self.log.seconds_per_iter is None or self.log.seconds_per_iter <= 0:
            return None
        return self.global_batch_size / self.log.seconds_per_iter

    @property
    def last_iteration(self) -> int | None:
        return int(self.records[-1]["iteration"]) if self.records else None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The JSON lines of a `training_metrics.json` file, in file order (NaN / Infinity tokens allowed).

    A truncated last line (a run killed while writing) is skipped with a warning.
    """
    records: list[dict[str, Any]] = []
    lines = Path(path).read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                logger.warning("skipping the truncated last line of %s: %s", path, err)
                continue
            raise ValueError(f"{path} line {number} is not JSON: {err}") from err
    return records


def metric_names(records: list[dict[str, Any]]) -> list[str]:
    """Names of the logged meters (everything but the bookkeeping fields), in first-seen order."""
    names: dict[str, None] = {}
    for record in records:
        for name in record.get("last", record):
            if name not in ("iteration", "last", "iter_time", "data_time", "it_per_s"):
                names[name] = None
    return list(names)


def metric_series(records: list[dict[str, Any]], name: str) -> tuple[list[int], list[float]]:
    """`(iterations, values)` of meter `name`: the exact value at each logged iteration (`last`), or the
    logged value itself for records without `last`. Iterations where the meter is absent are skipped."""
    steps: list[int] = []
    values: list[float] = []
    for record in records:
        source = record.get("last", record)
        if name in source:
            steps.append(int(record["iteration"]))
            values.append(float(source[name]))
    return steps, values


def final_metric(records: list[dict[str, Any]], name: str) -> float | None:
    """The exact value of meter `name` at the last iteration that logged it (None if never logged)."""
    _, values = metric_series(records, name)
    return values[-1] if values else None


def list_exports(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Teacher exports `eval/training_<it>/teacher_checkpoint.pth` as `(it + 1, path)`, sorted by step."""
    eval_dir = Path(run_dir) / "eval"
    exports = []
    if eval_dir.is_dir():
        for child in eval_dir.iterdir():
            match = EXPORT_PATTERN.match(child.name)
            checkpoint = child / "teacher_checkpoint.pth"
            if match and checkpoint.is_file():
                exports.append((int(match.group(1)) + 1, checkpoint))
    return sorted(exports)


def read_log_summary(run_dir: str | Path) -> LogSummary:
    """Seconds per iteration, peak memory and a non-finite-loss error, parsed from `logs/log.txt`."""
    path = Path(run_dir) / LOG_FILENAME
    if not path.is_file():
        return LogSummary(seconds_per_iter=None, peak_memory_mb=None, non_finite_iteration=None, world_size=1)
    text = path.read_text(errors="replace")
    memories = [float(value) for value in _MAX_MEM.findall(text)]
    times = [value for value in _TOTAL_TIME.findall(text) if float(value) > 0]  # 0: a resumed, finished run
    non_finite = _NON_FINITE.findall(text)
    world_sizes = _WORLD_SIZE.findall(text)
    return LogSummary(
        seconds_per_iter=float(times[-1]) if times else None,
        peak_memory_mb=max(memories) if memories else None,
        non_finite_iteration=int(non_finite[-1]) if non_finite else None,
        world_size=int(world_sizes[-1]) if world_sizes else 1,
    )


def load_run(run_dir: str | Path, name: str) -> RunData:
    """Read `run_dir` (its `config.yaml` is required; metrics, log and exports may be missing)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no config.yaml: not a run directory of tools/train.py")
    metrics_path = run_dir / METRICS_FILENAME
    records = read_metrics(metrics_path) if metrics_path.is_file() else []
    return RunData(
        name=name,
        run_dir=run_dir,
        config=load_config(config_path),
        records=records,
        exports=list_exports(run_dir),
        log=read_log_summary(run_dir),
    )


@dataclasses.dataclass(frozen=True)
class ConfigDifference:
    key: str  # dotted key, e.g. "dino.use_mcr"
    a: Any
    b: Any


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def config_differences(
    cfg_a: DictConfig, cfg_b: DictConfig, *, ignore: tuple[str, ...] = IGNORED_CONFIG_KEYS
) -> list[ConfigDifference]:
    """Every dotted leaf key whose value differs between the two configs (lists compare as whole values),
    sorted by key; keys present in only one config count as differences (the other side is `<absent>`).
    Keys in `ignore` are left out."""
    flat_a = _flatten(OmegaConf.to_container(cfg_a, resolve=True))
    flat_b = _flatten(OmegaConf.to_container(cfg_b, resolve=True))
    absent = "<absent>"
    differences = []
    for key in sorted(set(flat_a) | set(flat_b)):
        if key in ignore:
            continue
        value_a, value_b = flat_a.get(key, absent), flat_b.get(key, absent)
        if not _same(value_a, value_b):
            differences.append(ConfigDifference(key=key, a=value_a, b=value_b))
    return differences


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return False
    return a == b
