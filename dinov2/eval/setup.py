"""Backbone set-up shared by every evaluation and tool: command-line flags -> a loaded, eval-mode ViT.

Three ways to name the backbone:

* `--config-file <run>/config.yaml [--opts k=v ...]`: the training config (merged over the defaults by
  `dinov2.utils.config.load_config`); the teacher is built at `crops.global_crops_size`, so block
  chunking, registers and interpolation settings match the run's `teacher_checkpoint.pth`.
* `--arch vit_small|vit_base|vit_large|vit_giant2|vit_tiny [--patch-size P] [--num-register-tokens R]`:
  the default config with `student.arch` (and the other flags) overridden; `--opts` works as above.
* `--arch dinov2_vitl14_reg` (any hub name of `dinov2.hub.backbones`): the released architecture.

Weights come from `--pretrained-weights` or `--weights` (either name; at most one) and are loaded
strictly by `dinov2.utils.checkpoint.load_pretrained_backbone`. Without weights the backbone is
randomly initialised and a warning says so.
"""

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Sequence

from omegaconf import DictConfig

from dinov2.hub.backbones import HUB_BACKBONES
from dinov2.models import build_model_from_cfg
from dinov2.models.vision_transformer import ARCHS, DinoVisionTransformer
from dinov2.utils.checkpoint import load_pretrained_backbone
from dinov2.utils.config import load_config

logger = logging.getLogger(__name__)


def add_backbone_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the backbone flags (`--config-file`, `--pretrained-weights`, `--arch`, `--patch-size`,
    `--num-register-tokens`, `--weights`, `--opts`) to `parser` and return it."""
    group = parser.add_argument_group("backbone")
    group.add_argument("--config-file", default=None, help="training config (e.g. <run>/config.yaml)")
    group.add_argument(
        "--pretrained-weights", default=None, help="backbone checkpoint (hub file or teacher_checkpoint.pth)"
    )
    group.add_argument("--weights", default=None, help="same as --pretrained-weights (hub-style name)")
    group.add_argument(
        "--arch", default=None, help=f"instead of --config-file: one of {sorted(ARCHS)} or {sorted(HUB_BACKBONES)}"
    )
    group.add_argument("--patch-size", type=int, default=None, help="patch size (sets student.patch_size)")
    group.add_argument(
        "--num-register-tokens", type=int, default=None, help="register tokens (sets student.num_register_tokens)"
    )
    group.add_argument("--opts", nargs="*", default=[], help="config overrides key=value (e.g. student.block_chunks=4)")
    return parser


@dataclass(frozen=True)
class BackboneSource:
    """What the backbone flags name: a released hub architecture, or a config; and the weights file, if any."""

    weights_path: str | os.PathLike | None
    hub_arch: str | None  # a name of `HUB_BACKBONES`, or None
    cfg: DictConfig | None  # the merged config when `hub_arch` is None


def resolve_backbone_source(
    *,
    config_file: str | os.PathLike | None = None,
    pretrained_weights: str | os.PathLike | None = None,
    arch: str | None = None,
    patch_size: int | None = None,
    num_register_tokens: int | None = None,
    weights: str | os.PathLike | None = None,
    opts: Sequence[str] = (),
) -> BackboneSource:
    """Check the backbone flags (one source, a known arch, a valid config, an existing weights file); builds nothing.

    Raises ValueError / ConfigError / FileNotFoundError naming the flag at fault.
    """
    if pretrained_weights is not None and weights is not None:
        raise ValueError(
            f"both --pretrained-weights={pretrained_weights} and --weights={weights} are given; pass only one"
        )
    weights_path = pretrained_weights if pretrained_weights is not None else weights
    if weights_path is not None and not os.path.isfile(weights_path):
        raise FileNotFoundError(f"backbone weights {weights_path} (--pretrained-weights / --weights) do not exist")
    if (config_file is None) == (arch is None):
        raise ValueError(
            f"pass exactly one of --config-file and --arch (got config_file={config_file!r}, arch={arch!r})"
        )
    if arch is not None and arch in HUB_BACKBONES:
        fixed = {"--patch-size": patch_size, "--num-register-tokens": num_register_tokens}
        given = [f"{flag}={value}" for flag, value in fixed.items() if value is not None]
        if given or opts:
            raise ValueError(
                f"--arch {arch} fixes the released architecture; drop {given + list(opts)} "
                "or use --arch vit_* / --config-file to change it"
            )
        return BackboneSource(weights_path=weights_path, hub_arch=arch, cfg=None)
    overrides = list(opts)
    if arch is not None:
        if arch.removesuffix("_memeff") not in ARCHS:
            raise ValueError(f"--arch {arch!r} is not one of {sorted(ARCHS) + sorted(HUB_BACKBONES)}")
        overrides.append(f"student.arch={arch}")
    if patch_size is not None:
        overrides.append(f"student.patch_size={patch_size}")
    if num_register_tokens is not None:
        overrides.append(f"student.num_register_tokens={num_register_tokens}")
    return BackboneSource(weights_path=weights_path, hub_arch=None, cfg=load_config(config_file, overrides))


def build_backbone_for_eval(
    *,
    config_file: str | os.PathLike | None = None,
    pretrained_weights: str | os.PathLike | None = None,
    arch: str | None = None,
    patch_size: int | None = None,
    num_register_tokens: int | None = None,
    weights: str | os.PathLike | None = None,
    opts: Sequence[str] = (),
) -> DinoVisionTransformer:
    """Build the backbone named by a config file or an arch, load its weights, return it in eval mode on CPU."""
    source = resolve_backbone_source(
        config_file=config_file,
        pretrained_weights=pretrained_weights,
        arch=arch,
        patch_size=patch_size,
        num_register_tokens=num_register_tokens,
        weights=weights,
        opts=opts,
    )
    weights_path = source.weights_path
    if source.hub_arch is not None:
        model = HUB_BACKBONES[source.hub_arch](pretrained=weights_path is not None, weights=weights_path)
    else:
        model, _ = build_model_from_cfg(source.cfg, only_teacher=True)  # type: ignore[misc]
        if weights_path is not None:
            load_pretrained_backbone(model, weights_path)
    if weights_path is None:
        logger.warning("no --pretrained-weights / --weights given: the backbone is randomly initialised")
    return model.eval()


def check_backbone_args(args: argparse.Namespace) -> None:
    """`resolve_backbone_source` with the flags added by `add_backbone_args` (what `--submit` checks first)."""
    resolve_backbone_source(**_backbone_flags(args))


def _backbone_flags(args: argparse.Namespace) -> dict:
    return dict(
        config_file=args.config_file,
        pretrained_weights=args.pretrained_weights,
        arch=args.arch,
        patch_size=args.patch_size,
        num_register_tokens=args.num_register_tokens,
        weights=args.weights,
        opts=args.opts,
    )


def backbone_from_args(args: argparse.Namespace) -> DinoVisionTransformer:
    """`build_backbone_for_eval` with the flags added by `add_backbone_args`."""
    return build_backbone_for_eval(**_backbone_flags(args))
