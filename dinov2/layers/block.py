"""Pre-norm transformer block with LayerScale and DINOv2's two stochastic-depth variants."""

from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dinov2.layers.attention import Attention
from dinov2.layers.drop_path import DropPath, add_residual_on_batch_subset
from dinov2.layers.layer_scale import LayerScale
from dinov2.layers.mlp import Mlp

# Above this drop rate a block computes its residuals only on a random subset of the batch
# (DINOv2's cheaper stochastic depth); at or below it, it uses per-sample DropPath.
BATCH_SUBSET_DROP_THRESHOLD = 0.1


class Block(nn.Module):
    """`x = x + ls1(attn(norm1(x)))`, then `x = x + ls2(mlp(norm2(x)))`; `x`: [B, N, D] or a list of such.

    In training with `drop_path > 0.1` each residual is computed on a random batch subset and rescaled
    (`add_residual_on_batch_subset`); with `0 < drop_path <= 0.1` per-sample DropPath is used. A list
    input (crops of different sizes) is processed element by element and always uses the batch-subset
    variant when `drop_path > 0` in training, as DINOv2's nested-tensor block does.

    With `gradient_checkpointing` (set by the ViT) a training forward with autograd on keeps only the block
    input and recomputes the block in backward (non-reentrant `torch.utils.checkpoint`, RNG state replayed,
    so drop path draws the same samples and the gradients are those of the plain forward).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        init_values: float | None = None,
        drop_path: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        attn_class: Callable[..., nn.Module] = Attention,
        ffn_layer: Callable[..., nn.Module] = Mlp,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn_class(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, attn_drop=attn_drop, proj_drop=drop
        )
        self.ls1 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = ffn_layer(
            in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop, bias=ffn_bias
        )
        self.ls2 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.sample_drop_ratio = drop_path
        self.gradient_checkpointing = False

    def attn_residual(self, x: Tensor) -> Tensor:
        """`ls1(attn(norm1(x)))`, [B, N, D] -> [B, N, D]."""
        return self.ls1(self.attn(self.norm1(x)))

    def ffn_residual(self, x: Tensor) -> Tensor:
        """`ls2(mlp(norm2(x)))`, [B, N, D] -> [B, N, D]."""
        return self.ls2(self.mlp(self.norm2(x)))

    def _forward_tensor(self, x: Tensor, always_batch_subset: bool) -> Tensor:
        rate = self.sample_drop_ratio
        if self.training and (rate > BATCH_SUBSET_DROP_THRESHOLD or (always_batch_subset and rate > 0.0)):
            x = add_residual_on_batch_subset(x, self.attn_residual, rate)
            return add_residual_on_batch_subset(x, self.ffn_residual, rate)
        if self.training and rate > 0.0:
            x = x + self.drop_path1(self.attn_residual(x))
            return x + self.drop_path2(self.ffn_residual(x))
        x = x + self.attn_residual(x)
        return x + self.ffn_residual(x)

    def forward(self, x: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
        if isinstance(x, list):
            return [self._forward_tensor(element, always_batch_subset=True) for element in x]
        return self._forward_tensor(x, always_batch_subset=False)
