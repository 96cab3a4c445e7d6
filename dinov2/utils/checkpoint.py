"""The one backbone checkpoint loader: every released weight format and this project's own checkpoints.

Accepted formats (`ACCEPTED_FORMATS`; files are read with `torch.load(weights_only=True)`):

* official DINOv2 hub backbones (`dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`): a flat state dict of tensors
  (patch 14, 518 px grid, LayerScale, flat `blocks.{i}` keys);
* teacher exports: `{"teacher": {"backbone.<key>": ..., "dino_head.*": ..., ["ibot_head.*"]}}` with chunked
  (`blocks.{c}.{i}.`) or flat block keys. This is the format of the released SimDINOv2 teacher checkpoints
  (patch 16, 224 px grid, 4 registers, LayerScale) and of this project's `eval/training_*/teacher_checkpoint.pth`;
* SimDINO (v1) / DINO-v1 training checkpoints (`checkpoint.pth`): `{"teacher": {"_orig_mod.backbone.*",
  "_orig_mod.head.mlp.*"}, "student": ..., "args": Namespace, ...}` in the DINO-v1 layout (no registers, no
  LayerScale, no mask token: load with `allowed_missing=["mask_token"]`);
* a `{"model": ...}` wrapper, optionally holding a whole meta-architecture (`teacher.backbone.*` and
  `student.backbone.*`: the teacher is taken); keys prefixed by `_orig_mod.` (torch.compile) or `module.` (DDP);
* a training checkpoint directory of this project (`<run>/checkpoints/model_*/`, torch.distributed.checkpoint
  files with a `.metadata` file): the teacher backbone is read.

Head keys (`dino_head.*`, `ibot_head.*`, DINO-v1 `head.mlp.*` / `head.last_layer.*`) are dropped; every other
key must match the model exactly: `load_pretrained_backbone` never loads partially and raises
`CheckpointMismatchError` instead.
"""

import argparse
import logging
import os
import pickle
import re
import warnings
import zipfile
from typing import Any, Iterable, Literal, Mapping

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

_WRAPPER_KEYS = ("model", "teacher")
_STRIPPED_PREFIXES = ("_orig_mod.", "module.", "backbone.")
_HEAD_PREFIXES = ("dino_head.", "ibot_head.", "head.mlp.", "head.last_layer.")
_BACKBONE_ROOTS = ("cls_token", "pos_embed", "register_tokens", "mask_token", "patch_embed.", "blocks.", "norm.")
_CHUNKED_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_FLAT_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(\D.*)$")
_DCP_TEACHER_BACKBONE_PREFIX = "model.teacher.backbone."

ACCEPTED_FORMATS = (
    "an official DINOv2 hub file (dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth: flat backbone keys)",
    "a teacher export ({'teacher': {'backbone.*', 'dino_head.*'}}: SimDINOv2 releases, "
    "<run>/eval/training_*/teacher_checkpoint.pth)",
    "a SimDINO (v1) / DINO-v1 checkpoint.pth ({'teacher': {'_orig_mod.backbone.*', ...}, 'student': ..., 'args': ...})",
    "a {'model': ...} wrapper of any of these",
    "a training checkpoint directory of this project (<run>/checkpoints/model_*/ with a .metadata file)",
)

EntryPoint = Literal["train", "eval", "hub"]

# What changes each architecture setting, per entry point: a config key for train.py, a flag for the
# evaluators (tools/eval_*.py, extract_features.py, ...), a constructor argument for torch.hub.
_SETTING_NAMES: dict[str, dict[str, str]] = {
    "train": {
        "patch_size": "student.patch_size (a different patch size is resized when student.pretrained_weights is set)",
        "num_register_tokens": "student.num_register_tokens",
        "arch": "student.arch",
        "grid": "crops.global_crops_size / student.patch_size",
        "depth": "student.arch / student.depth",
        "layerscale": "student.layerscale (0 removes LayerScale)",
        "ffn": "student.ffn_layer",
    },
    "eval": {
        "patch_size": "--patch-size",
        "num_register_tokens": "--num-register-tokens",
        "arch": "--arch",
        "grid": "--opts crops.global_crops_size=<img size> (hub files: --arch dinov2_vit*14*)",
        "depth": "--arch or --opts student.depth=<n>",
        "layerscale": "--opts student.layerscale=<init> (0 removes LayerScale)",
        "ffn": "--opts student.ffn_layer=<mlp|swiglufused>",
    },
    "hub": {
        "patch_size": "the hub entry point / --arch name (dinov2_*14: patch 14, simdino*_*16: patch 16) or patch_size=",
        "num_register_tokens": "the hub entry point / --arch name (dinov2_*_reg, simdinov2_*: 4 registers) or "
        "num_register_tokens=",
        "arch": "the hub entry point / --arch name (s / b / l / g)",
        "grid": "img_size=",
        "depth": "the hub entry point / --arch name (s / b / l / g) or depth=",
        "layerscale": "the hub entry point / --arch name (simdino_*: none) or init_values= (None removes LayerScale)",
        "ffn": "ffn_layer=",
    },
}


class CheckpointError(ValueError):
    """A checkpoint file cannot be used as a backbone checkpoint."""


class CheckpointFormatError(CheckpointError):
    """The file is unreadable (truncated, not a torch file, unsafe pickle) or holds no backbone."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes do not match the model (nothing was loaded)."""


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _STRIPPED_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
    return key


def _is_backbone_key(key: str) -> bool:
    return key.startswith(_BACKBONE_ROOTS)


def extract_backbone_state_dict(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> dict[str, Tensor]:
    """Backbone tensors of an in-memory checkpoint (see the module docstring for the accepted layouts).

    Returns the keys with wrappers and prefixes removed and head keys dropped; block keys keep the
    file's layout (chunked or flat). Raises CheckpointFormatError when no backbone key is found.
    """
    state: Any = checkpoint
    for wrapper in _WRAPPER_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise CheckpointFormatError(f"{source} holds a {type(state).__name__}, not a state dict")
    if any(str(key).startswith("teacher.") for key in state):
        state = {key[len("teacher.") :]: value for key, value in state.items() if key.startswith("teacher.")}
    backbone: dict[str, Tensor] = {}
    for key, value in state.items():
        name = _strip_prefixes(str(key))
        if name.startswith(_HEAD_PREFIXES):
            continue
        if not isinstance(value, Tensor):
            raise CheckpointFormatError(
                f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a backbone state "
                f"dict, optionally wrapped in one of {list(_WRAPPER_KEYS)}. Accepted formats: "
                + "; ".join(ACCEPTED_FORMATS)
            )
        if name in backbone:
            raise CheckpointFormatError(f"{source}: keys {key!r} and another one both map to {name!r}")
        backbone[name] = value
    if not any(_is_backbone_key(key) for key in backbone):
        sample = sorted(backbone)[:8] or sorted(map(str, state))[:8]
        raise CheckpointFormatError(
            f"{source} holds no DINOv2 backbone keys (expected {list(_BACKBONE_ROOTS)}, possibly under "
            f"'backbone.'/'module.'/'_orig_mod.' prefixes); first keys found: {sample}. Accepted formats: "
            + "; ".join(ACCEPTED_FORMATS)
        )
    return backbone


def load_backbone_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read the backbone tensors of `path`, a checkpoint file or a training checkpoint directory, on CPU.

    Files are read with `torch.load(weights_only=True)` (`argparse.Namespace`, which SimDINO v1 / DINO-v1
    checkpoints carry under "args", is allowed: it only holds attributes). A directory must be a
    torch.distributed.checkpoint training checkpoint of this project; its teacher backbone is read.
    Raises FileNotFoundError for a missing path and CheckpointFormatError for an unreadable file
    (truncated, not a torch file, or needing unsafe unpickling) or one in none of `ACCEPTED_FORMATS`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return _load_dcp_teacher_backbone(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointFormatError(
            f"cannot read checkpoint {path} with torch.load(weights_only=True): {err}. "
            "The file may be truncated or not a PyTorch checkpoint of tensors"
        ) from err
    if not isinstance(checkpoint, Mapping):
        raise CheckpointFormatError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a state dict")
    return extract_backbone_state_dict(checkpoint, source=f"checkpoint {path}")


def _load_dcp_teacher_backbone(path: str) -> dict[str, Tensor]:
    """Teacher backbone tensors (full, on CPU) of a torch.distributed.checkpoint directory written by the trainer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    if not os.path.isfile(os.path.join(path, ".metadata")):
        raise CheckpointFormatError(
            f"{path} is a directory but not a training checkpoint (no .metadata file). Accepted formats: "
            + "; ".join(ACCEPTED_FORMATS)
        )
    metadata = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    wanted = {
        key[len("model.") :]: torch.empty(entry.size, dtype=entry.properties.dtype)
        for key, entry in metadata.items()
        if key.startswith(_DCP_TEACHER_BACKBONE_PREFIX) and isinstance(entry, TensorStorageMetadata)
    }
    if not wanted:
        raise CheckpointFormatError(
            f"training checkpoint {path} holds no '{_DCP_TEACHER_BACKBONE_PREFIX}*' tensors; first keys found: "
            f"{sorted(metadata)[:8]}"
        )
    state = {"model": wanted}
    with warnings.catch_warnings():  # no_dist=True is meant: every rank reads the full tensors on its own
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path, no_dist=True)
    return {key[len("teacher.backbone.") :]: value for key, value in state["model"].items()}


def convert_chunked_to_flat(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the chunk index of block keys: `blocks.{c}.{i}.rest` -> `blocks.{i}.rest`; other keys unchanged.

    Flat keys pass through, so the function is idempotent.
    """
    flat: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        match = _CHUNKED_BLOCK_KEY.match(key)
        new_key = f"blocks.{match.group(2)}.{match.group(3)}" if match else key
        if new_key in flat:
            raise ValueError(f"keys collide after removing block chunks: {new_key!r} appears twice")
        flat[new_key] = value
    return flat


def convert_flat_to_chunked(state_dict: Mapping[str, Tensor], block_chunks: int, depth: int) -> dict[str, Tensor]:
    """Insert the chunk index: `blocks.{i}.rest` -> `blocks.{i // (depth // block_chunks)}.{i}.rest`.

    `block_chunks=0` returns the flat layout. Chunked input is flattened first, so any layout converts.
    """
    if block_chunks < 0 or block_chunks > depth:
        raise ValueError(f"block_chunks={block_chunks} must be in [0, depth={depth}]; fix student.block_chunks")
    flat = convert_chunked_to_flat(state_dict)
    if block_chunks == 0:
        return flat
    chunk_size = depth // block_chunks
    chunked: dict[str, Tensor] = {}
    for key, value in flat.items():
        match = _FLAT_BLOCK_KEY.match(key)
        if match:
            index = int(match.group(1))
            if index >= depth:
                raise ValueError(f"key {key!r} names block {index} but depth={depth}")
            key = f"blocks.{index // chunk_size}.{index}.{match.group(2)}"
        chunked[key] = value
    return chunked


def _diagnose(
    model: nn.Module, expected: Mapping[str, Tensor], given: Mapping[str, Tensor], entry_point: EntryPoint
) -> list[str]:
    names = _SETTING_NAMES[entry_point]
    hints = []

    def shape(sd: Mapping[str, Tensor], key: str) -> tuple[int, ...] | None:
        return tuple(sd[key].shape) if key in sd else None

    weight = shape(given, "patch_embed.proj.weight")
    if weight is not None and weight[-2:] != shape(expected, "patch_embed.proj.weight")[-2:]:  # type: ignore[index]
        hints.append(
            f"patch size: checkpoint {weight[-1]}, model {getattr(model, 'patch_size', '?')} "
            f"(set {names['patch_size']})"
        )
    dim = shape(given, "cls_token")
    if dim is not None and dim[-1] != shape(expected, "cls_token")[-1]:  # type: ignore[index]
        hints.append(
            f"embedding size: checkpoint {dim[-1]}, model {getattr(model, 'embed_dim', '?')} (choose {names['arch']})"
        )
    given_regs = shape(given, "register_tokens")
    expected_regs = shape(expected, "register_tokens")
    n_given = given_regs[1] if given_regs else 0
    n_expected = expected_regs[1] if expected_regs else 0
    if n_given != n_expected:
        hints.append(f"register tokens: checkpoint {n_given}, model {n_expected} (set {names['num_register_tokens']})")
    pos = shape(given, "pos_embed")
    expected_pos = shape(expected, "pos_embed")
    if pos is not None and expected_pos is not None and pos[1] != expected_pos[1]:
        hints.append(
            f"position embedding: checkpoint {pos[1]} rows, model {expected_pos[1]} (the grid is image size / "
            f"patch size, set by {names['grid']}; hub files use 518 / 14)"
        )
    given_depth = len({m.group(1) for m in map(_FLAT_BLOCK_KEY.match, given) if m})
    expected_depth = len({m.group(1) for m in map(_FLAT_BLOCK_KEY.match, expected) if m})
    if given_depth != expected_depth:
        hints.append(f"depth: checkpoint {given_depth} blocks, model {expected_depth} (set {names['depth']})")
    has_ls = (any(".ls1.gamma" in k for k in given), any(".ls1.gamma" in k for k in expected))
    if has_ls[0] != has_ls[1]:
        hints.append(
            f"LayerScale: checkpoint {'has' if has_ls[0] else 'lacks'} ls*.gamma, model "
            f"{'has' if has_ls[1] else 'lacks'} them (set {names['layerscale']})"
        )
    ffn = [("w12" if any(".mlp.w12." in k for k in sd) else "fc1") for sd in (given, expected)]
    if given_depth and ffn[0] != ffn[1]:
        hints.append(f"FFN: checkpoint uses {ffn[0]}, model {ffn[1]} (set {names['ffn']})")
    return hints


def _format_keys(keys: Iterable[str], limit: int = 20) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def check_backbone_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    allowed_missing: Iterable[str] = (),
    source: str = "checkpoint",
    entry_point: EntryPoint = "eval",
) -> dict[str, Tensor]:
    """Map `state_dict` (any block layout) onto `model`'s keys; raise CheckpointMismatchError on any difference.

    Returns the state dict re-keyed to the model's block layout. Keys in `allowed_missing` may be absent
    (the model keeps its own values for them). The error's hints name what changes each setting at
    `entry_point`: config keys ("train"), evaluator flags ("eval") or torch.hub arguments ("hub").
    """
    model_state = model.state_dict()
    expected_flat = convert_chunked_to_flat(model_state)
    own_key_of = dict(zip(expected_flat, model_state, strict=True))
    given_flat = convert_chunked_to_flat(state_dict)
    allowed = set(allowed_missing)
    missing = [k for k in expected_flat if k not in given_flat and k not in allowed]
    unexpected = [k for k in given_flat if k not in expected_flat]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected_flat[k].shape)}"
        for k, v in given_flat.items()
        if k in expected_flat and v.shape != expected_flat[k].shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match the model; nothing was loaded."]
        lines += [f"  likely cause: {hint}" for hint in _diagnose(model, expected_flat, given_flat, entry_point)]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_format_keys(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {_format_keys(mismatched)}")
        raise CheckpointMismatchError("\n".join(lines))
    return {own_key_of[k]: v for k, v in given_flat.items()}


def load_pretrained_backbone(
    model: nn.Module,
    path: str | os.PathLike,
    allowed_missing: Iterable[str] = (),
    entry_point: EntryPoint = "eval",
) -> None:
    """Strictly load the backbone weights of `path` (any of `ACCEPTED_FORMATS`) into `model`, in place.

    Any block layout (chunked or flat) loads into any model layout. Raises CheckpointMismatchError
    listing missing / unexpected / shape-mismatched keys, with the likely cause (patch size, register
    count, embedding size, grid, depth, LayerScale, FFN type) and what sets it at `entry_point`; the
    model is untouched then.
    """
    source = f"checkpoint {os.fspath(path)}"
    state_dict = check_backbone_state_dict(
        model, load_backbone_state_dict(path), allowed_missing=allowed_missing, source=source, entry_point=entry_point
    )
    incompatible = model.load_state_dict(state_dict, strict=not allowed_missing)
    assert not incompatible.unexpected_keys, f"unexpected keys after checking: {incompatible.unexpected_keys}"
    logger.info("loaded %d backbone tensors from %s", len(state_dict), source)
