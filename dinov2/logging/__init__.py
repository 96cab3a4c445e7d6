"""Logging set-up (rank-aware) and the training metric logger.

`setup_logging(output_dir)` configures the package loggers once per process: the console shows rank 0
only, and every rank writes its own file `<output_dir>/logs/log.txt` (rank 0) or `log.txt.rank<r>`.
`MetricLogger` keeps smoothed meters, prints a progress line and appends JSON lines to
`<output_dir>/training_metrics.json` (rank 0), mirrored to TensorBoard when a writer is given.
"""

from dinov2.logging.helpers import MetricLogger, SmoothedValue
from dinov2.logging.setup import PACKAGE_LOGGERS, setup_logging

__all__ = ["MetricLogger", "SmoothedValue", "PACKAGE_LOGGERS", "setup_logging"]
