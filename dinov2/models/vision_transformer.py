"""DINOv2's vision transformer with the official constructor, state-dict keys and forward variants.

State-dict layout (flat, `block_chunks=0`): `cls_token` [1, 1, D], `pos_embed` [1, 1 + N, D],
`register_tokens` [1, R, D] (only when R > 0), `mask_token` [1, D], `patch_embed.proj.*`,
`blocks.{i}.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1|mlp.w12, mlp.fc2|mlp.w3, ls2.gamma}.*`,
`norm.*`. With `block_chunks=C > 0` the blocks are grouped into chunks of `depth // C` blocks, each chunk
padded in front with parameter-free Identity modules so that a block keeps its global index:
keys become `blocks.{chunk}.{i}.*` with `i` global (what FSDP-wrapped DINOv2 training runs save).

Token order everywhere: [cls, register_1..register_R, patch_1..patch_N], patches row-major.
"""

import logging
import math
from functools import partial
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2.layers import Block, Mlp, PatchEmbed, SwiGLUFFNFused

logger = logging.getLogger(__name__)

FfnLayer = Literal["mlp", "swiglu", "swiglufused", "identity"]
FFN_LAYERS: tuple[str, ...] = ("mlp", "swiglu", "swiglufused", "identity")


def _identity_ffn(*args: Any, **kwargs: Any) -> nn.Module:
    return nn.Identity()


def _ffn_class(ffn_layer: str) -> Callable[..., nn.Module]:
    if ffn_layer == "mlp":
        return Mlp
    if ffn_layer in ("swiglu", "swiglufused"):
        return SwiGLUFFNFused
    if ffn_layer == "identity":
        return _identity_ffn
    raise ValueError(f"ffn_layer={ffn_layer!r} is not one of {list(FFN_LAYERS)}; fix student.ffn_layer")


def init_weights_vit_timm(module: nn.Module) -> None:
    """timm-style init of one module: Linear weights ~ truncated normal (std 0.02), zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class BlockChunk(nn.ModuleList):
    """A run of blocks applied in sequence (one FSDP unit); leading Identity entries keep global indices."""

    def forward(self, x: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
        for block in self:
            x = block(x)
        return x


class DinoVisionTransformer(nn.Module):
    """Vision transformer backbone of DINOv2 (official argument names and defaults, except `block_chunks`).

    Args:
        img_size: training image size; sets the position-embedding grid `img_size // patch_size`.
        patch_size: side of the square patches (p).
        in_chans: input channels.
        embed_dim: token width D.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: FFN hidden width / D.
        qkv_bias, proj_bias, ffn_bias: biases of the qkv, attention-output and FFN linear layers.
        drop_path_rate: stochastic-depth rate (of the last block, or of every block when uniform).
        drop_path_uniform: same rate in every block instead of linear 0 -> rate.
        init_values: LayerScale init; None or 0 removes LayerScale (and its `ls*.gamma` keys).
        embed_layer: patch-embedding class.
        act_layer: FFN activation class (exact GELU).
        block_fn: block class.
        ffn_layer: "mlp", "swiglu"/"swiglufused" (packed SwiGLU, both the same) or "identity".
        block_chunks: 0 for flat `blocks.{i}` keys, C > 0 for `blocks.{chunk}.{i}` keys. The official
            constructor defaults to 1, but every official caller passes 0 (config default, hub); we
            default to 0 (official DINOv2 does the same).
        num_register_tokens: R extra learned tokens after the cls token (no position embedding).
        interpolate_antialias: antialias of the bicubic position-embedding interpolation.
        interpolate_offset: DINOv2's scale-factor offset; 0 interpolates to an explicit output size.
        gradient_checkpointing: recompute every block in backward instead of keeping its activations
            (training forwards with autograd only; see `Block`). Memory per block drops to its input
            [B, N, D]; the backward pays one more forward of the blocks.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        ffn_bias: bool = True,
        proj_bias: bool = True,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        init_values: float | None = None,
        embed_layer: Callable[..., nn.Module] = PatchEmbed,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        block_fn: Callable[..., nn.Module] = Block,
        ffn_layer: FfnLayer = "mlp",
        block_chunks: int = 0,
        num_register_tokens: int = 0,
        interpolate_antialias: bool = False,
        interpolate_offset: float = 0.1,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth={depth} must be >= 1; fix student.depth or the arch")
        if block_chunks < 0 or block_chunks > depth:
            raise ValueError(f"block_chunks={block_chunks} must be in [0, depth={depth}]; fix student.block_chunks")
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens={num_register_tokens} must be >= 0; fix student.num_register_tokens")
        norm_layer = partial(nn.LayerNorm, eps=1e-6)

        self.num_features = self.embed_dim = embed_dim
        self.num_tokens = 1
        self.n_blocks = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self.block_chunks = block_chunks

        self.patch_embed = embed_layer(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_tokens, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )

        if drop_path_uniform:
            rates = [drop_path_rate] * depth
        else:
            # float32 linspace as upstream (0.1 may round to 0.10000000149, above the batch-subset threshold)
            rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        ffn_class = _ffn_class(ffn_layer)
        logger.debug("ViT ffn_layer=%s, drop path rates %s", ffn_layer, rates)
        blocks = [
            block_fn(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                ffn_bias=ffn_bias,
                drop_path=rates[i],
                norm_layer=norm_layer,
                act_layer=act_layer,
                ffn_layer=ffn_class,
                init_values=init_values,
            )
            for i in range(depth)
        ]
        if block_chunks > 0:
            self.chunked_blocks = True
            chunk_size = depth // block_chunks
            chunks = [
                BlockChunk([nn.Identity() for _ in range(start)] + blocks[start : start + chunk_size])
                for start in range(0, depth, chunk_size)
            ]
            self.blocks = nn.ModuleList(chunks)
        else:
            self.chunked_blocks = False
            self.blocks = nn.ModuleList(blocks)

        self.set_gradient_checkpointing(gradient_checkpointing)
        self.norm = norm_layer(embed_dim)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.init_weights()

    def init_weights(self) -> None:
        """DINOv2 initialisation (pos_embed ~ N(0, 0.02), cls/registers ~ N(0, 1e-6), Linear timm-style).

        The patch convolution keeps PyTorch's default init, LayerNorm and LayerScale their own; the mask
        token stays zero.
        """
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        self.apply(init_weights_vit_timm)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Activation checkpointing of every block on / off (per block, also inside chunks)."""
        self.gradient_checkpointing = enabled
        for block in self.iter_blocks():
            block.gradient_checkpointing = enabled

    def iter_blocks(self) -> Iterator[nn.Module]:
        """The `depth` transformer blocks in order, skipping the Identity padding of chunked layouts."""
        for module in self.blocks:
            if isinstance(module, BlockChunk):
                yield from (block for block in module if not isinstance(block, nn.Identity))
            else:
                yield module

    def interpolate_pos_encoding(self, x: Tensor, height: int, width: int) -> Tensor:
        """Position embedding [1, 1 + (H/p)(W/p), D] for tokens `x` [B, 1 + N, D] of an H x W image.

        Unchanged when the grid matches the training grid and H == W; otherwise the patch part is
        bicubic-interpolated in float32 (with `interpolate_antialias`), either with the scale factor
        `(H/p + offset) / M, (W/p + offset) / M` (offset != 0, DINOv2's historical rule) or to the
        explicit size (offset == 0), then cast to the dtype of `x`.
        """
        n_patches = x.shape[1] - 1
        n_grid = self.pos_embed.shape[1] - 1
        if n_patches == n_grid and height == width:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        class_pos_embed = pos_embed[:, :1]
        patch_pos_embed = pos_embed[:, 1:]
        dim = x.shape[-1]
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        side = int(math.sqrt(n_grid))
        assert side * side == n_grid, f"pos_embed holds {n_grid} patch rows, which is not a square grid"
        patch_pos_embed = patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            scale = ((grid_h + self.interpolate_offset) / side, (grid_w + self.interpolate_offset) / side)
            patch_pos_embed = F.interpolate(
                patch_pos_embed, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias
            )
        else:
            patch_pos_embed = F.interpolate(
                patch_pos_embed, size=(grid_h, grid_w), mode="bicubic", antialias=self.interpolate_antialias
            )
        assert patch_pos_embed.shape[-2:] == (grid_h, grid_w), (
            f"interpolated grid {tuple(patch_pos_embed.shape[-2:])} != {(grid_h, grid_w)}"
        )
        patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat((class_pos_embed, patch_pos_embed), dim=1).to(x.dtype)

    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Images [B, C, H, W] (+ bool masks [B, N]) -> tokens [B, 1 + R + N, D].

        Masked patch tokens are replaced by `mask_token`; the cls token is prepended, the position
        embedding added, then the registers inserted after the cls token (they get no position embedding).
        """
        batch, _, height, width = x.shape
        x = self.patch_embed(x)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        # No cast of the cls/register tokens (as upstream): under autocast the low-precision patch tokens
        # are promoted by the concatenation, so the residual stream stays in the parameter dtype.
        x = torch.cat((self.cls_token.expand(batch, -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, height, width)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(batch, -1, -1)
            x = torch.cat((x[:, :1], registers, x[:, 1:]), dim=1)
        return x

    def _output_dict(self, x: Tensor, masks: Tensor | None) -> dict[str, Tensor | None]:
        x_norm = self.norm(x)
        first_patch = 1 + self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1:first_patch],
            "x_norm_patchtokens": x_norm[:, first_patch:],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward_features_list(
        self, x_list: Sequence[Tensor], masks_list: Sequence[Tensor | None] | None = None
    ) -> list[dict[str, Tensor | None]]:
        """`forward_features` on several batches of crops (each [B_i, C, H_i, W_i]) in one pass of the blocks."""
        masks_list = list(masks_list) if masks_list is not None else [None] * len(x_list)
        if len(masks_list) != len(x_list):
            raise ValueError(
                f"got {len(x_list)} crop batches but {len(masks_list)} masks; pass one mask (or None) each"
            )
        tokens: Tensor | list[Tensor] = [
            self.prepare_tokens_with_masks(x, m) for x, m in zip(x_list, masks_list, strict=True)
        ]
        for block in self.blocks:
            tokens = block(tokens)
        assert isinstance(tokens, list), "blocks must map a list of token batches to a list"
        return [self._output_dict(t, m) for t, m in zip(tokens, masks_list, strict=True)]

    def forward_features(
        self, x: Tensor | Sequence[Tensor], masks: Tensor | Sequence[Tensor | None] | None = None
    ) -> dict[str, Tensor | None] | list[dict[str, Tensor | None]]:
        """Normalised tokens of images `x` [B, C, H, W] (H, W multiples of p), optionally masked.

        Returns `x_norm_clstoken` [B, D], `x_norm_regtokens` [B, R, D], `x_norm_patchtokens` [B, N, D],
        `x_prenorm` [B, 1 + R + N, D] and `masks` (the argument). A list of image batches (with a list
        of masks or None) returns a list of such dicts.
        """
        if isinstance(x, (list, tuple)):
            if isinstance(masks, Tensor):
                raise ValueError("a list of crop batches needs a list of masks (or None), got a single tensor")
            return self.forward_features_list(list(x), masks)
        if masks is not None and not isinstance(masks, Tensor):
            raise ValueError("a single image batch needs a single mask tensor [B, N] (or None), got a list")
        tokens = self.prepare_tokens_with_masks(x, masks)
        for block in self.blocks:
            tokens = block(tokens)
        return self._output_dict(tokens, masks)

    def _intermediate_tokens(self, x: Tensor, n: int | Sequence[int]) -> list[Tensor]:
        tokens = self.prepare_tokens_with_masks(x)
        wanted = range(self.n_blocks - n, self.n_blocks) if isinstance(n, int) else n
        bad = [i for i in wanted if not 0 <= i < self.n_blocks]
        if bad:
            raise ValueError(f"block indices {bad} are out of range for a ViT of depth {self.n_blocks}")
        outputs = []
        for i, block in enumerate(self.iter_blocks()):
            tokens = block(tokens)
            if i in wanted:
                outputs.append(tokens)
        return outputs

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple[Tensor, ...] | tuple[tuple[Tensor, Tensor], ...]:
        """Outputs of the last `n` blocks (int) or of the blocks with global indices `n` (sequence).

        `x`: [B, C, H, W]. Each output optionally goes through the final norm; patch tokens (cls and
        registers removed) are [B, N, D], or [B, D, H/p, W/p] with `reshape`. With `return_class_token`
        each entry is `(patch_tokens, class_token [B, D])`.
        """
        outputs = self._intermediate_tokens(x, n)
        if norm:
            outputs = [self.norm(out) for out in outputs]
        class_tokens = [out[:, 0] for out in outputs]
        patch_tokens = [out[:, 1 + self.num_register_tokens :] for out in outputs]
        if reshape:
            batch, _, height, width = x.shape
            patch_tokens = [
                out.reshape(batch, height // self.patch_size, width // self.patch_size, -1)
                .permute(0, 3, 1, 2)
                .contiguous()
                for out in patch_tokens
            ]
        if return_class_token:
            return tuple(zip(patch_tokens, class_tokens, strict=True))
        return tuple(patch_tokens)

    def _tokens_before_last_block(self, x: Tensor) -> tuple[Tensor, nn.Module]:
        tokens = self.prepare_tokens_with_masks(x)
        blocks = list(self.iter_blocks())
        for block in blocks[:-1]:
            tokens = block(tokens)
        return tokens, blocks[-1]

    def get_last_selfattention(self, x: Tensor) -> Tensor:
        """Softmax attention [B, H, 1 + R + N, 1 + R + N] of the last block for images `x` [B, C, H, W]."""
        tokens, last = self._tokens_before_last_block(x)
        return last.attn.attention_weights(last.norm1(tokens))

    def get_last_block_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of the last block's attention, each [B, heads, 1 + R + N, D / heads]."""
        tokens, last = self._tokens_before_last_block(x)
        return last.attn.qkv_heads(last.norm1(tokens))

    def forward(
        self,
        x: Tensor | Sequence[Tensor],
        masks: Tensor | Sequence[Tensor | None] | None = None,
        is_training: bool = False,
    ) -> Tensor | list[Tensor] | dict[str, Tensor | None] | list[dict[str, Tensor | None]]:
        """`forward_features` dict(s) when `is_training`, else the CLS embedding `head(x_norm_clstoken)` [B, D]."""
        out = self.forward_features(x, masks)
        if is_training:
            return out
        if isinstance(out, list):
            return [self.head(o["x_norm_clstoken"]) for o in out]
        return self.head(out["x_norm_clstoken"])


_ARCH_SHAPES: dict[str, dict[str, int]] = {
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "vit_giant2": {"embed_dim": 1536, "depth": 40, "num_heads": 24},
}


def _create(arch: str, patch_size: int, num_register_tokens: int, kwargs: dict[str, Any]) -> DinoVisionTransformer:
    # Keyword arguments override the arch's shape (build_model uses this for student.depth).
    settings: dict[str, Any] = {**_ARCH_SHAPES[arch], "mlp_ratio": 4, **kwargs}
    return DinoVisionTransformer(patch_size=patch_size, num_register_tokens=num_register_tokens, **settings)


def vit_tiny(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: Any) -> DinoVisionTransformer:
    """ViT-Ti: D 192, depth 12, 3 heads (not an official DINOv2 size; for CPU recipes)."""
    return _create("vit_tiny", patch_size, num_register_tokens, kwargs)


def vit_small(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: Any) -> DinoVisionTransformer:
    """ViT-S: D 384, depth 12, 6 heads."""
    return _create("vit_small", patch_size, num_register_tokens, kwargs)


def vit_base(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: Any) -> DinoVisionTransformer:
    """ViT-B: D 768, depth 12, 12 heads."""
    return _create("vit_base", patch_size, num_register_tokens, kwargs)


def vit_large(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: Any) -> DinoVisionTransformer:
    """ViT-L: D 1024, depth 24, 16 heads."""
    return _create("vit_large", patch_size, num_register_tokens, kwargs)


def vit_giant2(patch_size: int = 16, num_register_tokens: int = 0, **kwargs: Any) -> DinoVisionTransformer:
    """ViT-g (DINOv2's "giant2"): D 1536, depth 40, 24 heads of width 64."""
    return _create("vit_giant2", patch_size, num_register_tokens, kwargs)


ARCHS: dict[str, Callable[..., DinoVisionTransformer]] = {
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "vit_base": vit_base,
    "vit_large": vit_large,
    "vit_giant2": vit_giant2,
}
