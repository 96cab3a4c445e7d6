"""Multi-head self-attention computed with `torch.nn.functional.scaled_dot_product_attention`."""

import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention with DINOv2's parameter layout.

    `qkv` maps D -> 3D laid out as (3, H, D/H): the q block first, then k, then v, heads contiguous in
    each; `proj` maps D -> D. Scale 1/sqrt(D/H). `x`: [B, N, D] -> [B, N, D].
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}; change one of them")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Split the projections of `x` [B, N, D] into q, k, v, each [B, H, N, D/H]."""
        batch, n_tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, n_tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def attention_weights(self, x: Tensor) -> Tensor:
        """Softmax attention matrix [B, H, N, N] of `x` [B, N, D] (rows: queries, columns: keys)."""
        q, k, _ = self.qkv_heads(x)
        return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        batch, n_tokens, dim = x.shape
        q, k, v = self.qkv_heads(x)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(batch, n_tokens, dim)
        return self.proj_drop(self.proj(x))
