"""The DINO / iBOT projection head: an MLP to a bottleneck, l2-normalisation and a weight-normed prototype layer.

State-dict keys match the official DINOv2 training checkpoints (`dino_head.*` in `teacher_checkpoint.pth`):
`mlp.{0,2,4}.{weight,bias}` for three layers without batch norm, and `last_layer.weight_g` (K, 1) /
`last_layer.weight_v` (K, bottleneck). The weight norm is written by hand because PyTorch's current
parametrisation API stores these two tensors as `parametrizations.weight.original{0,1}`.

SimDINO hooks (as in SimDINO's released code): `normalize` toggles the l2-normalisation of the MLP output and
`remove_last_layer=True` builds no prototype layer, so the head outputs the normalised bottleneck features.
"""

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)


class WeightNormedLinear(nn.Module):
    """Bias-free linear layer with weight `W[k] = weight_g[k] * weight_v[k] / ||weight_v[k]||_2`.

    Equals `torch.nn.utils.weight_norm(nn.Linear(in_features, out_features, bias=False))` with the DINOv2
    initialisation: `weight_v` keeps nn.Linear's default init and `weight_g` is filled with 1 (and stays
    trainable).
    """

    def __init__(self, in_features: int, out_features: int, *, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight_g = nn.Parameter(torch.empty(out_features, 1, device=device))
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default weight init (same random draws as constructing nn.Linear(bias=False)).
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        nn.init.ones_(self.weight_g)

    @property
    def weight(self) -> Tensor:
        """The effective weight [out_features, in_features]."""
        row_norms = torch.linalg.vector_norm(self.weight_v, dim=1, keepdim=True)
        return self.weight_v * (self.weight_g / row_norms)

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., in_features] -> [..., out_features]."""
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _build_mlp(
    *,
    nlayers: int,
    in_dim: int,
    bottleneck_dim: int,
    hidden_dim: int,
    use_bn: bool,
    bias: bool,
    device: torch.device | str | None,
) -> nn.Module:
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias, device=device)
    layers: list[nn.Module] = []
    dims = [in_dim] + [hidden_dim] * (nlayers - 1)
    for layer_in, layer_out in zip(dims[:-1], dims[1:], strict=True):
        layers.append(nn.Linear(layer_in, layer_out, bias=bias, device=device))
        if use_bn:
            layers.append(nn.BatchNorm1d(layer_out, device=device))
        layers.append(nn.GELU())
    layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias, device=device))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """MLP (`nlayers` Linear layers, GELU between them) -> l2-normalise -> weight-normed prototypes.

    Args:
        in_dim: D, the backbone embedding size.
        out_dim: K, the number of prototypes. With `remove_last_layer=True` the head has no prototype layer
            and `out_dim` must equal `bottleneck_dim` (the output size).
        use_bn: batch norm after each hidden Linear (never used by the DINOv2 recipes).
        nlayers: number of Linear layers in the MLP (config `dino.head_nlayers`), at least 1.
        hidden_dim: width of the hidden layers (`dino.head_hidden_dim`).
        bottleneck_dim: MLP output size (`dino.head_bottleneck_dim`).
        mlp_bias: bias in the MLP Linear layers.
        normalize: l2-normalise the MLP output (`dino.head_normalize`; always on in DINOv2).
        remove_last_layer: SimDINO's head without prototypes (`dino.remove_last_layer`).
        device: where the parameters are created.

    Initialisation (official): MLP Linear weights truncated normal with std 0.02, zero biases; prototype
    layer as `WeightNormedLinear`.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        use_bn: bool = False,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        mlp_bias: bool = True,
        normalize: bool = True,
        remove_last_layer: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers={nlayers} must be >= 1; fix dino.head_nlayers (or ibot.head_nlayers)")
        if remove_last_layer and out_dim != bottleneck_dim:
            raise ValueError(
                f"out_dim={out_dim} must equal bottleneck_dim={bottleneck_dim} when remove_last_layer=True "
                "(the head then outputs the bottleneck features); pass out_dim=bottleneck_dim or set "
                "dino.remove_last_layer=false"
            )
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.bottleneck_dim = bottleneck_dim
        self.normalize = normalize
        self.mlp = _build_mlp(
            nlayers=nlayers,
            in_dim=in_dim,
            bottleneck_dim=bottleneck_dim,
            hidden_dim=hidden_dim,
            use_bn=use_bn,
            bias=mlp_bias,
            device=device,
        )
        self._reset_mlp()
        self.last_layer: WeightNormedLinear | None = None
        if not remove_last_layer:
            # Created after the MLP init, as upstream, so that seeded inits draw random numbers in the same order.
            self.last_layer = WeightNormedLinear(bottleneck_dim, out_dim, device=device)

    def _reset_mlp(self) -> None:
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm1d):
                module.reset_parameters()

    def reset_parameters(self) -> None:
        self._reset_mlp()
        if self.last_layer is not None:
            self.last_layer.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, D] -> [N, K] prototype logits, or [N, bottleneck_dim] (l2-normalised) without last layer."""
        x = self.mlp(x)
        if self.normalize:
            eps = 1e-6 if x.dtype == torch.float16 else 1e-12
            x = F.normalize(x, dim=-1, p=2, eps=eps)
        if self.last_layer is not None:
            x = self.last_layer(x)
        return x
