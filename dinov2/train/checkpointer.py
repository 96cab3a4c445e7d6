"""Sharded, atomic, reshardable training checkpoints (torch.distributed.checkpoint) and teacher exports.

Layout under `train.output_dir`:

    checkpoints/
        model_0000099/                 one training checkpoint, taken after iteration 99 (0-based)
            .metadata, __<r>_0.distcp  DCP files: {"model": student + teacher + loss centres,
                                       "optimizer": AdamW state}, keyed by parameter names, reloadable
                                       on any number of processes
            trainer_state.pth          (rank 0) iteration, world size, grad-scaler state
            rng_state.rank<r>.pth      (every rank) python / numpy / torch CPU (and CUDA) RNG states
        model_0000199/
        model_final/                   after the last iteration (not counted by the retention)
        last_checkpoint                text file: the directory name of the newest complete checkpoint
        .tmp_model_0000299/            only while a save is running (removed by the next save or start)
    eval/training_<it>/teacher_checkpoint.pth   {"teacher": backbone.*, dino_head.* [, ibot_head.*]}
    eval/manual_<it>/teacher_checkpoint.pth     (--eval-only)

Atomicity: every rank writes into `.tmp_<name>/`; after a barrier rank 0 renames it to `<name>/` and then
replaces `last_checkpoint` (write-to-temp + `os.replace`). A run killed at any point leaves the previous
checkpoint complete and named by `last_checkpoint`. Retention keeps the `max_to_keep` newest periodic
checkpoints. Resuming on a different world size restores model, optimizer, scaler and iteration exactly;
the per-rank RNG states and the data order then cannot match the old run (a warning says so).
Any failure while resuming raises; nothing falls back to training from scratch.
"""

import contextlib
import logging
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from dinov2 import distributed

logger = logging.getLogger(__name__)

LAST_CHECKPOINT_FILE = "last_checkpoint"
_PERIODIC_NAME = re.compile(r"^model_(\d{7})$")


class ResumeError(RuntimeError):
    """A checkpoint named for resuming or loading is missing, incomplete or does not fit the model."""


@dataclass(frozen=True)
class TrainerState:
    """What a checkpoint restores besides model and optimizer tensors."""

    iteration: int  # the last completed iteration (0-based); training resumes at iteration + 1
    world_size: int
    grad_scaler: dict[str, Any] | None


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _quiet_single_process_dcp() -> Iterator[None]:
    # DCP warns on every single-process save/load ("assuming the intent is to save in a single process").
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


class Checkpointer:
    """Save / find / load training checkpoints of one run (see the module docstring for the layout).

    Args:
        output_dir: `train.output_dir`; checkpoints go to `<output_dir>/checkpoints`.
        model: the meta-architecture (sharded or not).
        optimizer: its optimizer (None for export-only use).
        max_to_keep: periodic checkpoints kept (`checkpointing.max_to_keep`).
    """

    def __init__(
        self,
        *,
        output_dir: str | os.PathLike,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        max_to_keep: int,
    ) -> None:
        if max_to_keep < 1:
            raise ValueError(f"checkpointing.max_to_keep={max_to_keep} must be >= 1; fix checkpointing.max_to_keep")
        self.output_dir = os.fspath(output_dir)
        self.save_dir = os.path.join(self.output_dir, "checkpoints")
        self.model = model
        self.optimizer = optimizer
        self.max_to_keep = max_to_keep
        if distributed.is_main_process():
            os.makedirs(self.save_dir, exist_ok=True)
            self._remove_incomplete()
        distributed.barrier()

    # -- state dicts ------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        assert self.optimizer is not None, "training checkpoints need the optimizer"
        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optimizer": optimizer_state}

    def _remove_incomplete(self) -> None:
        for name in os.listdir(self.save_dir):
            if name.startswith(".tmp_") or name.startswith(".trash_"):
                logger.warning("removing the incomplete checkpoint %s (a save was interrupted)", name)
                shutil.rmtree(os.path.join(self.save_dir, name), ignore_errors=True)

    # -- saving -----------------------------------------------------------------------------------------------
    def save(self, name: str, *, iteration: int, grad_scaler: torch.amp.GradScaler | None = None) -> str:
        """Write checkpoint `<save_dir>/<name>` atomically on all ranks; returns its path."""
        apply_center_updates = getattr(self.model, "apply_center_updates", None)
        if apply_center_updates is not None:
            apply_center_updates()
        final_dir = os.path.join(self.save_dir, name)
        tmp_dir = os.path.join(self.save_dir, f".tmp_{name}")
        if distributed.is_main_process():
            shutil.rmtree(tmp_dir, ignore_errors=True)
            os.makedirs(tmp_dir)
        distributed.barrier()
        with _quiet_single_process_dcp():
            dcp.save(self._state(), checkpoint_id=tmp_dir)
        rank = distributed.get_global_rank()
        torch.save(_rng_state(), os.path.join(tmp_dir, f"rng_state.rank{rank}.pth"))
        if distributed.is_main_process():
            trainer_state = {
                "iteration": iteration,
                "world_size": distributed.get_global_size(),
                "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else None,
            }
            torch.save(trainer_state, os.path.join(tmp_dir, "trainer_state.pth"))
        distributed.barrier()
        if distributed.is_main_process():
            trash_dir = os.path.join(self.save_dir, f".trash_{name}")
            if os.path.exists(final_dir):
                os.rename(final_dir, trash_dir)
            os.rename(tmp_dir, final_dir)
            _atomic_write_text(os.path.join(self.save_dir, LAST_CHECKPOINT_FILE), name)
            shutil.rmtree(trash_dir, ignore_errors=True)
            self._apply_retention()
            logger.info("saved checkpoint %s (iteration %d)", final_dir, iteration)
        distributed.barrier()
        return final_dir

    def _apply_retention(self) -> None:
        periodic = sorted(name for name in os.listdir(self.save_dir) if _PERIODIC_NAME.match(name))
        for name in periodic[: max(len(periodic) - self.max_to_keep, 0)]:
            shutil.rmtree(os.path.join(self.save_dir, name))
            logger.info("removed old checkpoint %s (checkpointing.max_to_keep=%d)", name, self.max_to_keep)

    # -- finding and loading ----------------------------------------------------------------------------------
    def latest(self) -> str | None:
        """Path of the newest complete checkpoint named by `last_checkpoint`, or None when there is none."""
        tag = os.path.join(self.save_dir, LAST_CHECKPOINT_FILE)
        if not os.path.isfile(tag):
            return None
        with open(tag) as handle:
            name = handle.read().strip()
        path = os.path.join(self.save_dir, name)
        if not os.path.isfile(os.path.join(path, "trainer_state.pth")):
            raise ResumeError(
                f"{tag} names checkpoint {name!r} but {path} is missing or incomplete; remove {tag} to start "
                "from scratch, or point it at a complete checkpoint directory"
            )
        return path

    def load(self, path: str, *, model_only: bool = False) -> TrainerState | None:
        """Restore `path` into the model (and optimizer, scaler state, RNG unless `model_only`).

        Returns the TrainerState (None when `model_only`). Raises ResumeError on any mismatch.
        """
        if not os.path.isfile(os.path.join(path, ".metadata")):
            raise ResumeError(f"{path} is not a training checkpoint directory (no DCP .metadata file)")
        try:
            with _quiet_single_process_dcp():
                self._load_tensors(path, model_only=model_only)
        except BaseException as err:  # DCP's CheckpointException derives from BaseException
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise
            raise ResumeError(f"could not restore checkpoint {path}: {err}") from err
        if model_only:
            logger.info("loaded model weights from %s", path)
            return None
        raw = torch.load(os.path.join(path, "trainer_state.pth"), weights_only=True)
        trainer_state = TrainerState(
            iteration=int(raw["iteration"]), world_size=int(raw["world_size"]), grad_scaler=raw["grad_scaler"]
        )
        logger.info("resumed from %s (iteration %d)", path, trainer_state.iteration)
        return trainer_state

    def _load_tensors(self, path: str, *, model_only: bool) -> None:
        if model_only:
            model_state = get_model_state_dict(self.model)
            dcp.load({"model": model_state}, checkpoint_id=path)
            set_model_state_dict(self.model, model_state)
            return
        assert self.optimizer is not None, "resuming needs the optimizer"
        state = self._state()
        dcp.load(state, checkpoint_id=path)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])

    @staticmethod
    def restore_rng(path: str, trainer_state: TrainerState) -> None:
        """Restore this rank's RNG states saved in checkpoint `path`.

        Called by the loop *after* the data-loader iterator exists (creating it draws from the torch RNG),
        so that a resumed run draws the same random numbers as the uninterrupted one.
        """
        world_size = distributed.get_global_size()
        rank_file = os.path.join(path, f"rng_state.rank{distributed.get_global_rank()}.pth")
        if trainer_state.world_size != world_size:
            logger.warning(
                "resuming a %d-process checkpoint on %d processes: model, optimizer and iteration are restored, "
                "the RNG streams and the data order cannot continue the old run exactly",
                trainer_state.world_size,
                world_size,
            )
        if os.path.isfile(rank_file):
            _set_rng_state(torch.load(rank_file, weights_only=True))


def export_teacher(model: nn.Module, path: str | os.PathLike) -> None:
    """Write `{"teacher": full teacher state dict}` (official format) to `path`; rank 0 writes.

    The full tensors are gathered to rank 0 on CPU (every rank must call this); the file is written to a
    temporary name and renamed.
    """
    teacher = model.teacher  # type: ignore[attr-defined]
    if distributed.is_enabled():
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state_dict = get_model_state_dict(teacher, options=options)
    else:
        state_dict = {key: value.detach().cpu().clone() for key, value in teacher.state_dict().items()}
    if distributed.is_main_process():
        path = os.fspath(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        torch.save({"teacher": state_dict}, tmp)
        os.replace(tmp, path)
        logger.info("exported the teacher (%d tensors) to %s", len(state_dict), path)
    distributed.barrier()
