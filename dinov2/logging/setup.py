"""`setup_logging`: glog-like records, console on rank 0, one file per rank."""

import logging
import os
import sys

from dinov2 import distributed

PACKAGE_LOGGERS = ("dinov2", "simdinov2", "eval", "tools", "benchmarks")

_FORMAT = "%(levelname).1s%(asctime)s %(process)d %(name)s %(filename)s:%(lineno)d] %(message)s"
_DATE_FORMAT = "%Y%m%d %H:%M:%S"


class _OnlyRank(logging.Filter):
    """Lets records through only on the given global rank (evaluated per record, after `enable()`)."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return distributed.get_global_rank() == self.rank


def setup_logging(
    output_dir: str | os.PathLike | None = None, *, level: int = logging.INFO, names: tuple[str, ...] = PACKAGE_LOGGERS
) -> None:
    """Configure the package loggers (replacing handlers this function added before).

    Console (stdout): records of rank 0 only. Files (when `output_dir` is given): every rank writes
    `<output_dir>/logs/log.txt` (rank 0) or `log.txt.rank<r>` (other ranks). Python warnings are routed
    to the log. Rank filtering is done here, never by patching `print`.
    """
    formatter = logging.Formatter(_FORMAT, datefmt=_DATE_FORMAT)
    handlers: list[logging.Handler] = []
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    console.addFilter(_OnlyRank(0))
    handlers.append(console)
    if output_dir is not None:
        rank = distributed.get_global_rank()
        log_dir = os.path.join(os.fspath(output_dir), "logs")
        os.makedirs(log_dir, exist_ok=True)
        filename = os.path.join(log_dir, "log.txt" if rank == 0 else f"log.txt.rank{rank}")
        file_handler = logging.FileHandler(filename)
        file_handler.setFormatter(formatter)
        handlers.append(file_handler)
    for name in (*names, "py.warnings"):
        package_logger = logging.getLogger(name)
        for handler in list(package_logger.handlers):
            if getattr(handler, "_dinov2_handler", False):
                package_logger.removeHandler(handler)
                handler.close()
        for handler in handlers:
            handler._dinov2_handler = True  # type: ignore[attr-defined]
            package_logger.addHandler(handler)
        package_logger.setLevel(level)
        package_logger.propagate = False
    logging.captureWarnings(True)
