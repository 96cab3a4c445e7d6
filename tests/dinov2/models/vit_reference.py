"""A straightforward ViT forward written from official DINOv2's definitions, reading only a state dict.

Independent of dinov2.layers: plain tensor ops, explicit softmax attention, own key parsing.
"""

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor


def flat_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "blocks" and parts[1].isdigit() and parts[2].isdigit():
            parts = [parts[0]] + parts[2:]
        out[".".join(parts)] = value
    return out


def reference_tokens(
    sd: dict[str, Tensor],
    images: Tensor,
    *,
    patch_size: int,
    interpolate_offset: float,
    interpolate_antialias: bool,
    masks: Tensor | None = None,
) -> Tensor:
    """[cls, registers, patches] tokens before the first block."""
    tokens = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch_size)
    batch, dim, grid_h, grid_w = tokens.shape
    tokens = tokens.flatten(2).transpose(1, 2).clone()
    if masks is not None:
        for b in range(batch):
            for n in range(grid_h * grid_w):
                if masks[b, n]:
                    tokens[b, n] = sd["mask_token"][0]
    pos = sd["pos_embed"][0]
    side = math.isqrt(pos.shape[0] - 1)
    if (grid_h, grid_w) != (side, side):
        grid = pos[1:].reshape(side, side, dim).permute(2, 0, 1)[None].float()
        if interpolate_offset:
            grid = F.interpolate(
                grid,
                scale_factor=((grid_h + interpolate_offset) / side, (grid_w + interpolate_offset) / side),
                mode="bicubic",
                antialias=interpolate_antialias,
            )
        else:
            grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", antialias=interpolate_antialias)
        pos = torch.cat([pos[:1], grid[0].permute(1, 2, 0).reshape(grid_h * grid_w, dim)])
    tokens = torch.cat([sd["cls_token"].expand(batch, 1, dim), tokens], dim=1) + pos
    if "register_tokens" in sd:
        regs = sd["register_tokens"].expand(batch, -1, -1)
        tokens = torch.cat([tokens[:, :1], regs, tokens[:, 1:]], dim=1)
    return tokens


def reference_block(sd: dict[str, Tensor], i: int, x: Tensor, num_heads: int) -> Tensor:
    p = f"blocks.{i}."
    batch, n_tokens, dim = x.shape
    head_dim = dim // num_heads
    y = F.layer_norm(x, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
    qkv = y @ sd[p + "attn.qkv.weight"].T
    if p + "attn.qkv.bias" in sd:
        qkv = qkv + sd[p + "attn.qkv.bias"]
    qkv = qkv.reshape(batch, n_tokens, 3, num_heads, head_dim)
    q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(batch, n_tokens, dim) @ sd[p + "attn.proj.weight"].T
    if p + "attn.proj.bias" in sd:
        out = out + sd[p + "attn.proj.bias"]
    x = x + out * sd.get(p + "ls1.gamma", torch.ones(dim))
    y = F.layer_norm(x, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
    if p + "mlp.fc1.weight" in sd:
        h = F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd.get(p + "mlp.fc1.bias")))
        y = F.linear(h, sd[p + "mlp.fc2.weight"], sd.get(p + "mlp.fc2.bias"))
    else:
        h = F.linear(y, sd[p + "mlp.w12.weight"], sd.get(p + "mlp.w12.bias"))
        half = h.shape[-1] // 2
        y = F.linear(F.silu(h[..., :half]) * h[..., half:], sd[p + "mlp.w3.weight"], sd.get(p + "mlp.w3.bias"))
    return x + y * sd.get(p + "ls2.gamma", torch.ones(dim))


def reference_forward(
    state_dict: dict[str, Tensor],
    images: Tensor,
    *,
    patch_size: int,
    num_heads: int,
    interpolate_offset: float = 0.1,
    interpolate_antialias: bool = False,
    masks: Tensor | None = None,
) -> dict[str, Tensor]:
    sd = flat_keys(state_dict)
    x = reference_tokens(
        sd, images, patch_size=patch_size, interpolate_offset=interpolate_offset,
        interpolate_antialias=interpolate_antialias, masks=masks,
    )  # fmt: skip
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    for i in range(depth):
        x = reference_block(sd, i, x, num_heads)
    n_reg = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    x_norm = F.layer_norm(x, (x.shape[-1],), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return {
        "x_norm_clstoken": x_norm[:, 0],
        "x_norm_regtokens": x_norm[:, 1 : 1 + n_reg],
        "x_norm_patchtokens": x_norm[:, 1 + n_reg :],
        "x_prenorm": x,
    }
