"""torch.hub-style constructors of the released DINOv2 backbones (architecture only; weights from a local file).

Nothing is ever downloaded: `pretrained=True` needs `weights=<path>` to the official file
(`dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`, from https://dl.fbaipublicfiles.com/dinov2/).
"""

import logging
import os
from typing import Any

from dinov2.models.vision_transformer import ARCHS, DinoVisionTransformer
from dinov2.utils.checkpoint import load_pretrained_backbone

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
}
