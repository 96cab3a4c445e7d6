"""Building blocks of the DINOv2 vision transformer (one concept per module)."""

from dinov2.layers.attention import Attention
from dinov2.layers.block import Block
from dinov2.layers.drop_path import DropPath, add_residual_on_batch_subset, drop_path
from dinov2.layers.layer_scale import LayerScale
from dinov2.layers.mlp import Mlp
from dinov2.layers.patch_embed import PatchEmbed
from dinov2.layers.swiglu_ffn import SwiGLUFFN, SwiGLUFFNFused, swiglu_hidden_features

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "SwiGLUFFN",
    "SwiGLUFFNFused",
    "add_residual_on_batch_subset",
    "drop_path",
    "swiglu_hidden_features",
]
