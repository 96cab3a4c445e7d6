"""Feed-forward blocks (Mlp, packed SwiGLU) and the patch embedding."""

import pytest
import torch
import torch.nn.functional as F

from dinov2.layers import Mlp, PatchEmbed, SwiGLUFFNFused, swiglu_hidden_features


def test_swiglu_hidden_width_rule():
    assert swiglu_hidden_features(4 * 1536) == 4096
    assert swiglu_hidden_features(4 * 64) == 176  # int(256 * 2 / 3) = 170 -> next multiple of 8
    ffn = SwiGLUFFNFused(in_features=64, hidden_features=256)
    assert ffn.w12.weight.shape == (352, 64) and ffn.w3.weight.shape == (64, 176)


def test_swiglu_forward_uses_first_half_as_gate():
    torch.manual_seed(0)
    ffn = SwiGLUFFNFused(in_features=16, hidden_features=48)
    x = torch.randn(3, 16)
    h = x @ ffn.w12.weight.T + ffn.w12.bias
    x1, x2 = h[:, :32], h[:, 32:]
    expected = (x1 * torch.sigmoid(x1) * x2) @ ffn.w3.weight.T + ffn.w3.bias
    torch.testing.assert_close(ffn(x), expected)
    with pytest.raises(ValueError, match="drop=0.1"):
        SwiGLUFFNFused(in_features=16, hidden_features=48, drop=0.1)


def test_mlp_is_fc_gelu_fc():
    torch.manual_seed(0)
    mlp = Mlp(8, hidden_features=32)
    x = torch.randn(2, 8)
    torch.testing.assert_close(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x))))
    assert Mlp(8, 32, bias=False).fc1.bias is None


def test_patch_embed_row_major_tokens():
    torch.manual_seed(0)
    embed = PatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=12)
    assert embed.num_patches == 16 and embed.patches_resolution == (4, 4) and embed.patch_size == (8, 8)
    x = torch.randn(2, 3, 16, 24)
    tokens = embed(x)
    assert tokens.shape == (2, 6, 12)
    # token 4 = grid row 1, column 1
    patch = x[:, :, 8:16, 8:16]
    expected = (patch.flatten(1) @ embed.proj.weight.flatten(1).T) + embed.proj.bias
    torch.testing.assert_close(tokens[:, 4], expected, atol=1e-5, rtol=1e-5)
    unflat = PatchEmbed(img_size=32, patch_size=8, embed_dim=12, flatten_embedding=False)
    assert unflat(x).shape == (2, 2, 3, 12)
    with pytest.raises(ValueError, match="16x20"):
        embed(torch.randn(1, 3, 16, 20))
