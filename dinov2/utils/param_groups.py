"""Optimizer parameter groups: layer-wise lr decay, patch-embed lr multiplier, weight-decay multipliers.

Per trainable parameter (official DINOv2 rules):
- layer id: tokens / pos_embed / patch_embed / mask_token / register_tokens -> 0; `blocks.i` (flat) or
  `blocks.c.i` (chunked, global block index i) -> i + 1; everything else (final norm, heads) -> L + 1.
- `lr_multiplier = layerwise_decay ** (L + 1 - layer_id)`, times `patch_embed_lr_mult` for patch_embed.
  Head parameters (n_blocks = 0) get 1.
- `wd_multiplier = 0` for biases and names containing `norm` or `gamma` (LayerScale); tokens, pos_embed,
  mask_token and `last_layer.weight_g` keep weight decay (KEEP: as official DINOv2).
- `is_last_layer = "last_layer" in name` (the prototype layer frozen by a zero lr schedule).
Groups with identical (lr_multiplier, wd_multiplier, is_last_layer) are fused.
"""

import logging
from collections import defaultdict
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)

_EMBEDDING_NAMES = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")


def layer_id(name: str, n_blocks: int, *, chunked: bool) -> int:
    """Layer index of parameter `name` (relative to the backbone) for layer-wise lr decay."""
    if n_blocks == 0:  # a head: multiplier decay ** 0 = 1
        return 1
    if name.startswith(_EMBEDDING_NAMES):
        return 0
    if name.startswith("blocks."):
        parts = name.split(".")
        return int(parts[2] if chunked else parts[1]) + 1
    return n_blocks + 1


def get_params_groups_with_decay(
    model: nn.Module, *, lr_decay_rate: float = 1.0, patch_embed_lr_mult: float = 1.0
) -> list[dict[str, Any]]:
    """One group per trainable parameter of `model` (a backbone or a head), with its multipliers."""
    n_blocks = int(getattr(model, "n_blocks", 0))
    chunked = bool(getattr(model, "chunked_blocks", False))
    groups = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lid = layer_id(name, n_blocks, chunked=chunked)
        lr_multiplier = lr_decay_rate ** (n_blocks + 1 - lid)
        if "patch_embed" in name:
            lr_multiplier *= patch_embed_lr_mult
        no_decay = name.endswith(".bias") or "norm" in name or "gamma" in name
        groups.append(
            {
                "name": name,
                "params": param,
                "lr_multiplier": lr_multiplier,
                "wd_multiplier": 0.0 if no_decay else 1.0,
                "is_last_layer": "last_layer" in name,
            }
        )
        logger.debug("param group %s: lr x%.5f wd x%.1f", name, lr_multiplier, 0.0 if no_decay else 1.0)
    return groups


def fuse_params_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge groups with identical (lr_multiplier, wd_multiplier, is_last_layer); order of first appearance."""
    fused: dict[tuple[float, float, bool], dict[str, Any]] = defaultdict(lambda: {"params": []})
    for group in groups:
        key = (group["lr_multiplier"], group["wd_multiplier"], group["is_last_layer"])
        target = fused[key]
        target.update(lr_multiplier=key[0], wd_multiplier=key[1], is_last_layer=key[2])
        target["params"].append(group["params"])
    return list(fused.values())
