"""torch.hub-style constructors of the released DINOv2 / SimDINO / SimDINOv2 backbones and of a training run.

Nothing is ever downloaded: `pretrained=True` needs `weights=<path>` to a local file:

* `dinov2_vit{s,b,l,g}14[_reg]`: the official DINOv2 files (`dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`, from
  https://dl.fbaipublicfiles.com/dinov2/);
* `simdinov2_vit{b,l}16`: the SimDINOv2 releases of https://github.com/RobinWu218/SimDINO (teacher checkpoints
  `{"teacher": {"backbone.*", "dino_head.*"}}`): patch 16, 224 px, 4 registers, LayerScale, antialiased
  position-embedding interpolation with offset 0;
* `simdino_vit{b,l}16`: the SimDINO (v1) releases (DINO-v1 `checkpoint.pth`, teacher keys `_orig_mod.backbone.*`):
  patch 16, 224 px, no registers, no LayerScale, no mask token (the model keeps a zero one), offset 0.1;
* `training_run(run_dir)`: the teacher of a run of this project, built from its `config.yaml`.

Every file is loaded strictly by `dinov2.utils.checkpoint.load_pretrained_backbone` (errors name the hub
argument that fixes a mismatch).
"""

import glob
import logging
import os
import re
from typing import Any

from dinov2.models import build_model_from_cfg
from dinov2.models.vision_transformer import ARCHS, DinoVisionTransformer
from dinov2.utils.checkpoint import load_pretrained_backbone
from dinov2.utils.config import load_config

logger = logging.getLogger(__name__)

_ARCH_BY_SHORT_NAME = {"s": "vit_small", "b": "vit_base", "l": "vit_large", "g": "vit_giant2"}


def official_weights_file_name(short_name: str, num_register_tokens: int) -> str:
    """Name of the released file, e.g. `dinov2_vitl14_reg4_pretrain.pth` for ("l", 4)."""
    registers = f"_reg{num_register_tokens}" if num_register_tokens else ""
    return f"dinov2_vit{short_name}14{registers}_pretrain.pth"


def _make_dinov2_model(
    *,
    short_name: str,
    num_register_tokens: int,
    pretrained: bool,
    weights: str | os.PathLike | None,
    **kwargs: Any,
) -> DinoVisionTransformer:
    file_name = official_weights_file_name(short_name, num_register_tokens)
    hub_name = f"dinov2_vit{short_name}14{'_reg' if num_register_tokens else ''}"
    if pretrained and weights is None:
        raise ValueError(
            f"{hub_name}(pretrained=True) needs weights=<path to {file_name}>; this code never downloads. "
            f"Get the file from https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{short_name}14/{file_name} "
            "or pass pretrained=False for a randomly initialised backbone"
        )
    if not pretrained and weights is not None:
        raise ValueError(
            f"{hub_name}(pretrained=False, weights={str(weights)!r}): pass pretrained=True to load weights"
        )
    settings: dict[str, Any] = dict(
        img_size=518,
        patch_size=14,
        init_values=1.0,
        ffn_layer="swiglufused" if short_name == "g" else "mlp",
        block_chunks=0,
        num_register_tokens=num_register_tokens,
        interpolate_antialias=bool(num_register_tokens),
        interpolate_offset=0.0 if num_register_tokens else 0.1,
    )
    settings.update(kwargs)
    model = ARCHS[_ARCH_BY_SHORT_NAME[short_name]](**settings)
    if weights is not None:
        load_pretrained_backbone(model, weights, entry_point="hub")
    return model


def _check_pretrained_weights(hub_name: str, pretrained: bool, weights: str | os.PathLike | None, source: str) -> None:
    if pretrained and weights is None:
        raise ValueError(
            f"{hub_name}(pretrained=True) needs weights=<path to the released checkpoint>; this code never "
            f"downloads. Get the file from {source} or pass pretrained=False for a randomly initialised backbone"
        )
    if not pretrained and weights is not None:
        raise ValueError(
            f"{hub_name}(pretrained=False, weights={str(weights)!r}): pass pretrained=True to load weights"
        )


_SIMDINO_RELEASES = "https://github.com/RobinWu218/SimDINO (README, pretrained models)"


def _make_simdino_model(
    *, arch: str, version: int, pretrained: bool, weights: str | os.PathLike | None, **kwargs: Any
) -> DinoVisionTransformer:
    hub_name = f"simdino{'v2' if version == 2 else ''}_vit{arch[4]}16"
    _check_pretrained_weights(hub_name, pretrained, weights, _SIMDINO_RELEASES)
    if version == 2:  # SimDINOv2 (DINOv2 code base): registers, LayerScale, antialias + explicit-size interpolation
        settings: dict[str, Any] = dict(num_register_tokens=4, init_values=0.1, interpolate_antialias=True,
                                        interpolate_offset=0.0)  # fmt: skip
    else:  # SimDINO v1 (DINO-v1 code base): no registers, no LayerScale, DINO's "+0.1" interpolation
        settings = dict(num_register_tokens=0, init_values=None, interpolate_antialias=False, interpolate_offset=0.1)
    settings.update(img_size=224, patch_size=16, ffn_layer="mlp", block_chunks=0)
    settings.update(kwargs)
    model = ARCHS[arch](**settings)
    if weights is not None:
        allowed_missing = ["mask_token"] if version == 1 else []  # DINO-v1 ViTs have no mask token
        load_pretrained_backbone(model, weights, allowed_missing=allowed_missing, entry_point="hub")
    return model


def simdino_vitb16(
    *, pretrained: bool = True, weights: str | os.PathLike | None = None, **kwargs: Any
) -> DinoVisionTransformer:
    """SimDINO (v1) ViT-B/16: DINO-v1 layout (img 224, no registers, no LayerScale, interpolation offset 0.1)."""
    return _make_simdino_model(arch="vit_base", version=1, pretrained=pretrained, weights=weights, **kwargs)


def simdino_vitl16(
    *, pretrained: bool = True, weights: str | os.PathLike | None = None, **kwargs: Any
) -> DinoVisionTransformer:
    """SimDINO (v1) ViT-L/16: DINO-v1 layout (img 224, no registers, no LayerScale, interpolation offset 0.1)."""
    return _make_simdino_model(arch="vit_large", version=1, pretrained=pretrained, weights=weights, **kwargs)


def simdinov2_vitb16(
    *, pretrained: bool = True, weights: str | os.PathLike | None = None, **kwargs: Any
) -> DinoVisionTransformer:
    """SimDINOv2 ViT-B/16 (img 224, 4 registers, LayerScale, antialiased interpolation with offset 0)."""
    return _make_simdino_model(arch="vit_base", version=2, pretrained=pretrained, weights=weights, **kwargs)


def simdinov2_vitl16(
    *, pretrained: bool = True, weights: str | os.PathLike | None = None, **kwargs: Any
) -> DinoVisionTransformer:
    """SimDINOv2 ViT-L/16 (img 224, 4 registers, LayerScale, antialiased interpolation with offset 0)."""
    return _make_simdino_model(arch="vit_large", version=2, pretrained=pretrained, weights=weights, **kwargs)


def latest_teacher_export(run_dir: str | os.PathLike) -> str:
    """`<run_dir>/eval/<name>_<iteration>/teacher_checkpoint.pth` with the highest iteration.

    Raises FileNotFoundError naming the run directory when it holds no export.
    """
    exports = glob.glob(os.path.join(os.fspath(run_dir), "eval", "*_*", "teacher_checkpoint.pth"))
    numbered = [(int(m.group(1)), path) for path in exports if (m := re.search(r"_(\d+)[/\\]teacher_checkpoint", path))]
    if not numbered:
        raise FileNotFoundError(
            f"{run_dir} holds no eval/<name>_<iteration>/teacher_checkpoint.pth; pass weights=<file or "
            "checkpoints/model_* directory> or export the teacher with tools/train.py --eval-only"
        )
    return max(numbered)[1]


def training_run(run_dir: str | os.PathLike, *, weights: str | os.PathLike | None = None) -> DinoVisionTransformer:
    """The teacher backbone of a training run of this project, in eval mode.

    Args:
        run_dir: the run's `--output-dir`; the architecture comes from its `config.yaml` (the teacher is
            built at `crops.global_crops_size`, with the run's registers, LayerScale and block layout).
        weights: a teacher export or a training checkpoint directory (`checkpoints/model_*`); None takes the
            newest `eval/*_<iteration>/teacher_checkpoint.pth`.

    Loaded strictly; a config / checkpoint mismatch raises CheckpointMismatchError.
    """
    config_file = os.path.join(os.fspath(run_dir), "config.yaml")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{config_file} does not exist: training_run needs the --output-dir of a training run")
    path = weights if weights is not None else latest_teacher_export(run_dir)
    model, _ = build_model_from_cfg(load_config(config_file), only_teacher=True)  # type: ignore[misc]
    load_pretrained_backbone(model, path, entry_point="hub")
    logger.info("training_run: teacher of %s from %s", run_dir, path)
    return model.eval()


def dinov2_vits14(
    *, pretrained: bool = True, weights: str | os.PathLike | None = None, **kwargs: Any
) -> DinoVisionTransformer:
    """DINOv2 ViT-S/14 (img 518, LayerScale, no registers); `kwargs` override constructor arguments."""
    return _make_dinov2_model(short_name="s", num_register_tokens=0, pretrained=pretrained, weights=weights, **kwargs)


def dinov2_vitb14(
    *, pretrained: bool = True, weights: str | os.PathLike | None = None, **kwargs: Any
) -> DinoVisionTransformer:
    """DINOv2 ViT-B/14."""
    return _make_dinov2_model(short_name="b", num_register_tokens=0, pretrained=pretrained, weights=weights, **kwargs)


def dinov2_vitl14(
    *, pretrained: bool = True, weights: str | os.PathLike | None = None, **kwargs: Any
) -> DinoVisionTransformer:
    """DINOv2 ViT-L/14."""
    return _make_dinov2_model(short_name="l", num_register_tokens=0, pretrained=pretrained, weights=weights, **kwargs)


def dinov2_vitg14(
    *, pretrained: bool = True, weights: str | os.PathLike | None = None, **kwargs: Any
) -> DinoVisionTransformer:
    """DINOv2 ViT-g/14 (SwiGLU FFN)."""
    return _make_dinov2_model(short_name="g", num_register_tokens=0, pretrained=pretrained, weights=weights, **kwargs)


def dinov2_vits14_reg(
    *, pretrained: bool = True, weights: str | os.PathLike | None = None, **kwargs: Any
) -> DinoVisionTransformer:
    """DINOv2 ViT-S/14 with 4 registers (antialiased interpolation, offset 0)."""
    return _make_dinov2_model(short_name="s", num_register_tokens=4, pretrained=pretrained, weights=weights, **kwargs)


def dinov2_vitb14_reg(
    *, pretrained: bool = True, weights: str | os.PathLike | None = None, **kwargs: Any
) -> DinoVisionTransformer:
    """DINOv2 ViT-B/14 with 4 registers."""
    return _make_dinov2_model(short_name="b", num_register_tokens=4, pretrained=pretrained, weights=weights, **kwargs)


def dinov2_vitl14_reg(
    *, pretrained: bool = True, weights: str | os.PathLike | None = None, **kwargs: Any
) -> DinoVisionTransformer:
    """DINOv2 ViT-L/14 with 4 registers."""
    return _make_dinov2_model(short_name="l", num_register_tokens=4, pretrained=pretrained, weights=weights, **kwargs)


def dinov2_vitg14_reg(
    *, pretrained: bool = True, weights: str | os.PathLike | None = None, **kwargs: Any
) -> DinoVisionTransformer:
    """DINOv2 ViT-g/14 with 4 registers (SwiGLU FFN)."""
    return _make_dinov2_model(short_name="g", num_register_tokens=4, pretrained=pretrained, weights=weights, **kwargs)


HUB_BACKBONES = {
    "dinov2_vits14": dinov2_vits14,
    "dinov2_vitb14": dinov2_vitb14,
    "dinov2_vitl14": dinov2_vitl14,
    "dinov2_vitg14": dinov2_vitg14,
    "dinov2_vits14_reg": dinov2_vits14_reg,
    "dinov2_vitb14_reg": dinov2_vitb14_reg,
    "dinov2_vitl14_reg": dinov2_vitl14_reg,
    "dinov2_vitg14_reg": dinov2_vitg14_reg,
    "simdino_vitb16": simdino_vitb16,
    "simdino_vitl16": simdino_vitl16,
    "simdinov2_vitb16": simdinov2_vitb16,
    "simdinov2_vitl16": simdinov2_vitl16,
}
