"""SwiGLU feed-forward blocks with the packed `w12` / `w3` parameters of DINOv2 (and xFormers)."""

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn


class SwiGLUFFN(nn.Module):
    """`w3(silu(x1) * x2)` where `(x1, x2)` are the two halves of `w12(x)`; `x`: [..., in] -> [..., out].

    `act_layer` and `drop` are accepted for signature compatibility with `Mlp`; SwiGLU always uses SiLU
    and no dropout, as in DINOv2.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] | None = None,
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if drop != 0.0:
            raise ValueError(f"SwiGLU feed-forward blocks have no dropout, got drop={drop}; use drop=0.0")
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.w12 = nn.Linear(in_features, 2 * hidden_features, bias=bias)
        self.w3 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


def swiglu_hidden_features(hidden_features: int) -> int:
    """DINOv2's SwiGLU width: 2/3 of the MLP width rounded up to a multiple of 8 (4 * 1536 -> 4096)."""
    return (int(hidden_features * 2 / 3) + 7) // 8 * 8


class SwiGLUFFNFused(SwiGLUFFN):
    """SwiGLU whose hidden width is `swiglu_hidden_features(hidden_features)` (ffn_layer swiglu/swiglufused).

    Same parameters and output as xFormers' fused SwiGLU used by the released ViT-g/14.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: Callable[..., nn.Module] | None = None,
        drop: float = 0.0,
        bias: bool = True,
    ) -> None:
        out_features = out_features or in_features
        hidden_features = swiglu_hidden_features(hidden_features or in_features)
        super().__init__(in_features, hidden_features, out_features, act_layer=act_layer, drop=drop, bias=bias)
