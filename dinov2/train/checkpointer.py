"""Sharded, atomic, reshardable training checkpoints (torch.distributed.checkpoint) and teacher exports.

Layout under `train.output_dir`:

    checkpoints/
        model_0000099/                 one training checkpoint, taken after iteration 99 (0-based)
            .metadata, __<r>_0.distcp  DCP files: {"model": student + teacher + loss centres,
                                       "optimizer": AdamW state}, keyed by parameter names, reloadable
                                       on any number of processes
            trainer_state.pth          (rank 0) iteration, world size, grad-scaler state, meta-architecture
            config.yaml                (rank 0) the resolved config of the run that wrote it
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
Any failure while resuming raises; nothing falls back to training from scratch. A failed save (disk full,
quota) raises `CheckpointSaveError` naming the checkpoint and leaves the previous one complete.

Reading is safe on untrusted directories: DCP's own reader unpickles `.metadata` with plain `pickle` and
non-tensor items with `torch.load(weights_only=False)`, either of which runs arbitrary code from a crafted
checkpoint. `read_checkpoint_metadata` admits only the classes DCP metadata consists of, and every DCP read
here goes through it and through a planner that loads non-tensor items with `weights_only=True`.
"""

import contextlib
import io
import logging
import os
import pathlib
import pickle
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint import filesystem as dcp_filesystem
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.planner import ReadItem
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
CONFIG_FILE = "config.yaml"
_PERIODIC_NAME = re.compile(r"^model_(\d{7})$")
# Student and teacher backbones; every other model key (heads, loss centres) belongs to the objective.
_BACKBONE_PREFIXES = ("student.backbone.", "teacher.backbone.")
# Everything a `.metadata` pickle of torch's FileSystemWriter references (read from torch 2.14's), besides dtypes.
_METADATA_CLASSES = ("Metadata", "StorageMeta", "MetadataIndex", "TensorProperties", "TensorStorageMetadata",
                     "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")  # fmt: skip
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name): getattr(dcp_metadata, name) for name in _METADATA_CLASSES
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): dcp_filesystem._StorageInfo,
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    ("pathlib", "PosixPath"): pathlib.PosixPath,
    ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
}


class ResumeError(RuntimeError):
    """A checkpoint named for resuming or loading is missing, incomplete or does not fit the model."""


class UnsafeCheckpointError(ResumeError):
    """A checkpoint file pickles something that is not checkpoint data (crafted or corrupt); nothing was run."""


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed (disk full, quota, permissions); the previous checkpoint is untouched."""


@dataclass(frozen=True)
class TrainerState:
    """What a checkpoint restores besides model and optimizer tensors."""

    iteration: int  # the last completed iteration (0-based); training resumes at iteration + 1
    world_size: int
    grad_scaler: dict[str, Any] | None


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS:
            return _METADATA_GLOBALS[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a class of DCP metadata")


def read_checkpoint_metadata(path: str | os.PathLike) -> dcp_metadata.Metadata:
    """The DCP metadata of checkpoint directory `path` (its `.metadata` file), read without running code.

    Raises UnsafeCheckpointError naming the file when it references anything but DCP metadata classes,
    ResumeError when it is missing or unreadable.
    """
    metadata_path = os.path.join(os.fspath(path), ".metadata")
    if not os.path.isfile(metadata_path):
        raise ResumeError(f"{path} is not a training checkpoint directory (no DCP .metadata file)")
    try:
        with open(metadata_path, "rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refusing to read {metadata_path}: {err}. The file is crafted or corrupt (unpickling it could run "
            "code); nothing from it was executed or loaded"
        ) from err
    except (EOFError, ValueError, TypeError, AttributeError) as err:
        raise ResumeError(f"cannot read {metadata_path} (truncated or not DCP metadata): {err}") from err
    if not isinstance(metadata, dcp_metadata.Metadata):
        raise UnsafeCheckpointError(f"refusing to use {metadata_path}: it holds a {type(metadata).__name__}")
    return metadata


class _SafeFileSystemReader(FileSystemReader):
    """DCP's file-system reader with the restricted `.metadata` unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        if kwargs.get("rank") is not None:
            raise ResumeError("per-rank DCP metadata files are not used by these checkpoints")
        metadata = read_checkpoint_metadata(self.path)
        if metadata.storage_meta is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner that admits non-tensor items only if `torch.load(weights_only=True)` does."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            lines = str(err).splitlines()
            reason = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else "")
            raise UnsafeCheckpointError(
                f"refusing the non-tensor item {read_item.dest_index.fqn!r}, which is not plain data ({reason}); "
                "nothing from it was executed"
            ) from err
        value.seek(0)
        super().load_bytes(read_item, value)  # the same bytes, now known to hold only allowed types


def _safe_dcp_load(state: dict[str, Any], path: str) -> None:
    dcp.load(state, storage_reader=_SafeFileSystemReader(path), planner=_SafeLoadPlanner())


def _describe_error(error: BaseException) -> str:
    """One line per failure; DCP's CheckpointException carries the exception of every failed rank."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict) and failures:
        return "; ".join(f"rank {rank}: {type(exc).__name__}: {exc}" for rank, (exc, _) in sorted(failures.items()))
    return f"{type(error).__name__}: {error}"


def _model_keys(metadata: dcp_metadata.Metadata) -> set[str]:
    return {key.removeprefix("model.") for key in metadata.state_dict_metadata if key.startswith("model.")}


def _key_list(keys: set[str], limit: int = 12) -> str:
    names = sorted(keys)
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


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
        """Write checkpoint `<save_dir>/<name>` atomically on all ranks; returns its path.

        Raises CheckpointSaveError on every rank when any rank's write fails (disk full, quota); the partial
        directory is removed and the previous checkpoint stays the one `last_checkpoint` names.
        """
        apply_center_updates = getattr(self.model, "apply_center_updates", None)
        if apply_center_updates is not None:
            apply_center_updates()
        final_dir = os.path.join(self.save_dir, name)
        tmp_dir = os.path.join(self.save_dir, f".tmp_{name}")
        self._run_save_step(final_dir, tmp_dir, self._make_tmp_dir, tmp_dir)
        self._run_save_step(final_dir, tmp_dir, self._write_files, tmp_dir, iteration, grad_scaler)
        self._run_save_step(final_dir, tmp_dir, self._publish, name, tmp_dir)
        if distributed.is_main_process():
            self._apply_retention()
            logger.info("saved checkpoint %s (iteration %d)", final_dir, iteration)
        distributed.barrier()
        return final_dir

    @staticmethod
    def _make_tmp_dir(tmp_dir: str) -> None:
        if distributed.is_main_process():
            shutil.rmtree(tmp_dir, ignore_errors=True)
            os.makedirs(tmp_dir)

    def _write_files(self, tmp_dir: str, iteration: int, grad_scaler: torch.amp.GradScaler | None) -> None:
        with _quiet_single_process_dcp():
            dcp.save(self._state(), checkpoint_id=tmp_dir)
        rank = distributed.get_global_rank()
        torch.save(_rng_state(), os.path.join(tmp_dir, f"rng_state.rank{rank}.pth"))
        if distributed.is_main_process():
            trainer_state = {
                "iteration": iteration,
                "world_size": distributed.get_global_size(),
                "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else None,
                "meta_arch": type(self.model).__name__,
            }
            torch.save(trainer_state, os.path.join(tmp_dir, "trainer_state.pth"))
            config: DictConfig = self.model.cfg  # type: ignore[assignment]  # the meta-architecture's config
            _atomic_write_text(os.path.join(tmp_dir, CONFIG_FILE), OmegaConf.to_yaml(config))

    def _publish(self, name: str, tmp_dir: str) -> None:
        if not distributed.is_main_process():
            return
        final_dir = os.path.join(self.save_dir, name)
        trash_dir = os.path.join(self.save_dir, f".trash_{name}")
        if os.path.exists(final_dir):
            os.rename(final_dir, trash_dir)
        os.rename(tmp_dir, final_dir)
        _atomic_write_text(os.path.join(self.save_dir, LAST_CHECKPOINT_FILE), name)
        shutil.rmtree(trash_dir, ignore_errors=True)

    def _run_save_step(self, final_dir: str, tmp_dir: str, step: Any, *args: Any) -> None:
        """Run one step of a save on every rank; if it failed on any rank, clean up and raise on all of them."""
        error: BaseException | None = None
        try:
            step(*args)
        except (OSError, RuntimeError, dcp.CheckpointException) as err:  # CheckpointException: DCP's per-rank errors
            error = err
        n_failed = torch.tensor([0.0 if error is None else 1.0], dtype=torch.float64)
        distributed.all_reduce_sum_(n_failed)
        if n_failed.item() == 0:
            distributed.barrier()
            return
        if distributed.is_main_process():
            shutil.rmtree(tmp_dir, ignore_errors=True)
        cause = _describe_error(error) if error is not None else "it failed on another rank"
        raise CheckpointSaveError(
            f"could not write checkpoint {final_dir}: {cause}. The write failed: check free space and quota of "
            f"{self.save_dir} (df -h, quota). {self._previous_checkpoint_state()}"
        ) from error

    def _previous_checkpoint_state(self) -> str:
        try:
            previous = self.latest()
        except ResumeError as err:
            return f"The previous checkpoint is not usable either: {err}"
        if previous is None:
            return "There is no previous checkpoint of this run."
        iteration = torch.load(os.path.join(previous, "trainer_state.pth"), weights_only=True)["iteration"]
        return f"The previous checkpoint {previous} (iteration {iteration}) is intact; resuming continues from it."

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

    def load(
        self, path: str, *, model_only: bool = False, backbone_across_objectives: bool = False
    ) -> TrainerState | None:
        """Restore `path` into the model (and optimizer, scaler state, RNG unless `model_only`).

        The checkpoint must be of this model's objective (meta-architecture) with exactly the model's keys.
        With `backbone_across_objectives` (a model-only load of `MODEL.WEIGHTS`), a checkpoint of the other
        objective loads only the student and teacher backbones, and the log names what was not loaded and
        what stays at its initialisation. Any other key difference raises.

        Returns the TrainerState (None when `model_only`). Raises ResumeError on any mismatch,
        UnsafeCheckpointError when a file of `path` pickles anything but checkpoint data.
        """
        metadata = read_checkpoint_metadata(path)
        state_file = os.path.join(path, "trainer_state.pth")
        if not os.path.isfile(state_file):
            raise ResumeError(f"{path} is not a training checkpoint directory (no trainer_state.pth)")
        raw = torch.load(state_file, weights_only=True)
        if backbone_across_objectives and not model_only:
            raise ValueError("backbone_across_objectives applies to model-only loads")
        backbone_only = self._check_keys(
            path, metadata, raw.get("meta_arch"), backbone_across_objectives=backbone_across_objectives
        )
        try:
            with _quiet_single_process_dcp():
                self._load_tensors(path, model_only=model_only, backbone_only=backbone_only)
        except BaseException as err:  # DCP's CheckpointException derives from BaseException
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise
            failures = getattr(err, "failures", {})
            for failure, _ in failures.values():
                if isinstance(failure, UnsafeCheckpointError):
                    raise UnsafeCheckpointError(f"{path}: {failure}") from err
            raise ResumeError(f"could not restore checkpoint {path}: {err}") from err
        if model_only:
            if not backbone_only:
                logger.info("loaded model weights from %s (all %d tensors)", path, len(_model_keys(metadata)))
            return None
        trainer_state = TrainerState(
            iteration=int(raw["iteration"]), world_size=int(raw["world_size"]), grad_scaler=raw["grad_scaler"]
        )
        logger.info("resumed from %s (iteration %d)", path, trainer_state.iteration)
        return trainer_state

    def _check_keys(
        self, path: str, metadata: dcp_metadata.Metadata, meta_arch: str | None, *, backbone_across_objectives: bool
    ) -> bool:
        """Raise unless `path` fits the model; True when only the backbones are to be loaded (other objective)."""
        this_meta_arch = type(self.model).__name__
        model_keys = set(get_model_state_dict(self.model))
        checkpoint_keys = _model_keys(metadata)
        other_objective = meta_arch is not None and meta_arch != this_meta_arch
        if other_objective:
            if not backbone_across_objectives:
                raise ResumeError(
                    f"cannot restore {path}: it is a {meta_arch} checkpoint and this run trains {this_meta_arch} "
                    f"(another objective); use its own config, or another train.output_dir with "
                    f"MODEL.WEIGHTS={path} to start from its backbone"
                )
            model_keys = {key for key in model_keys if key.startswith(_BACKBONE_PREFIXES)}
            checkpoint_keys = {key for key in checkpoint_keys if key.startswith(_BACKBONE_PREFIXES)}
        if model_keys != checkpoint_keys:
            missing, unexpected = model_keys - checkpoint_keys, checkpoint_keys - model_keys
            scope = "backbone " if other_objective else ""
            raise ResumeError(
                f"{path} does not fit this {this_meta_arch} model ({meta_arch or 'unrecorded'} checkpoint), refusing "
                f"a partial load: {scope}keys missing from the checkpoint: [{_key_list(missing)}]; {scope}keys "
                f"the model does not have: [{_key_list(unexpected)}]. Only the backbones load across objectives"
            )
        if other_objective:
            skipped = _model_keys(metadata) - checkpoint_keys
            fresh = set(get_model_state_dict(self.model)) - model_keys
            logger.warning(
                "%s is a %s checkpoint and this run trains %s: loaded the %d student.backbone / teacher.backbone "
                "tensors; not loaded, the other objective's %d tensors [%s]; freshly initialised, this "
                "objective's %d tensors [%s]",
                path,
                meta_arch,
                this_meta_arch,
                len(model_keys),
                len(skipped),
                _key_list(skipped, limit=len(skipped)),
                len(fresh),
                _key_list(fresh, limit=len(fresh)),
            )
        return other_objective

    def _load_tensors(self, path: str, *, model_only: bool, backbone_only: bool) -> None:
        if model_only:
            model_state = get_model_state_dict(self.model)
            if backbone_only:
                model_state = {key: value for key, value in model_state.items() if key.startswith(_BACKBONE_PREFIXES)}
            _safe_dcp_load({"model": model_state}, path)
            set_model_state_dict(self.model, model_state, options=StateDictOptions(strict=not backbone_only))
            return
        assert self.optimizer is not None, "resuming needs the optimizer"
        state = self._state()
        _safe_dcp_load(state, path)
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
