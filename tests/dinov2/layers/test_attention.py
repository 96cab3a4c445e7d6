"""Attention: SDPA output equals a plain softmax-attention reference; qkv layout (3, H, D/H)."""

import math

import torch

from dinov2.layers import Attention


def plain_attention(module: Attention, x: torch.Tensor) -> torch.Tensor:
    batch, n_tokens, dim = x.shape
    heads, head_dim = module.num_heads, dim // module.num_heads
    qkv = x @ module.qkv.weight.T + module.qkv.bias
    q = qkv[..., :dim].reshape(batch, n_tokens, heads, head_dim).transpose(1, 2)
    k = qkv[..., dim : 2 * dim].reshape(batch, n_tokens, heads, head_dim).transpose(1, 2)
    v = qkv[..., 2 * dim :].reshape(batch, n_tokens, heads, head_dim).transpose(1, 2)
    weights = torch.exp(q @ k.transpose(-1, -2) / math.sqrt(head_dim))
    weights = weights / weights.sum(-1, keepdim=True)
    out = (weights @ v).transpose(1, 2).reshape(batch, n_tokens, dim)
    return out @ module.proj.weight.T + module.proj.bias


def test_sdpa_matches_plain_softmax_attention():
    torch.manual_seed(0)
    module = Attention(96, num_heads=6, qkv_bias=True).eval()
    torch.nn.init.normal_(module.qkv.bias)
    x = torch.randn(3, 17, 96)
    with torch.no_grad():
        torch.testing.assert_close(module(x), plain_attention(module, x), atol=1e-5, rtol=1e-5)
        weights = module.attention_weights(x)
        q, k, v = module.qkv_heads(x)
    assert weights.shape == (3, 6, 17, 17) and q.shape == (3, 6, 17, 16)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 6, 17))
    torch.testing.assert_close(q[:, 1], (x @ module.qkv.weight[16:32].T + module.qkv.bias[16:32]))  # head 1 of q
    torch.testing.assert_close(v[:, 0], (x @ module.qkv.weight[192:208].T + module.qkv.bias[192:208]))


def test_attention_biases_follow_flags():
    module = Attention(32, num_heads=2, qkv_bias=False, proj_bias=False)
    assert module.qkv.bias is None and module.proj.bias is None
    assert module.scale == 16**-0.5


def test_attention_rejects_indivisible_heads():
    import pytest

    with pytest.raises(ValueError, match="num_heads=5"):
        Attention(64, num_heads=5)
