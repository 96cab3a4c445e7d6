"""Block residual structure and DINOv2's two stochastic-depth variants."""

import pytest
import torch

from dinov2.layers import Block, DropPath, LayerScale, add_residual_on_batch_subset, drop_path


def make_block(drop: float, init_values: float | None = 0.5) -> Block:
    torch.manual_seed(0)
    return Block(32, num_heads=2, qkv_bias=True, init_values=init_values, drop_path=drop,
                 norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6))  # fmt: skip


def test_block_is_prenorm_residual_with_layerscale():
    block = make_block(0.0).eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        y = x + block.ls1.gamma * block.attn(block.norm1(x))
        expected = y + block.ls2.gamma * block.mlp(block.norm2(y))
        torch.testing.assert_close(block(x), expected)


def test_layerscale_and_droppath_modules():
    scale = LayerScale(4, init_values=0.25)
    assert torch.equal(scale.gamma, torch.full((4,), 0.25))
    x = torch.ones(2, 4)
    torch.testing.assert_close(scale(x), x * 0.25)
    assert torch.equal(x, torch.ones(2, 4)), "not in place by default"
    module = DropPath(0.5).eval()
    assert module(x) is x


def test_drop_path_zeroes_or_rescales_whole_samples():
    torch.manual_seed(0)
    x = torch.ones(400, 3, 2)
    out = drop_path(x, 0.25, training=True)
    per_sample = out.flatten(1)
    assert torch.all((per_sample == 0).all(1) | torch.isclose(per_sample, torch.tensor(1 / 0.75)).all(1))
    assert 0.15 < (per_sample[:, 0] == 0).float().mean() < 0.35


def test_batch_subset_residual():
    torch.manual_seed(0)
    x = torch.zeros(5, 3, 4)
    seen = []

    def residual(sub: torch.Tensor) -> torch.Tensor:
        seen.append(sub.shape[0])
        return torch.ones_like(sub)

    out = add_residual_on_batch_subset(x, residual, drop_ratio=0.5)
    assert seen == [2]  # max(int(5 * 0.5), 1)
    changed = out.flatten(1).abs().sum(1) > 0
    assert changed.sum() == 2
    torch.testing.assert_close(out[changed], torch.full((2, 3, 4), 5 / 2))
    add_residual_on_batch_subset(torch.zeros(1, 2, 2), residual, drop_ratio=0.9)
    assert seen[-1] == 1


def attention_batch_sizes(block: Block, x) -> list[int]:
    sizes: list[int] = []
    handle = block.attn.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    block(x)
    handle.remove()
    return sizes


@pytest.mark.parametrize(
    "rate, list_input, expected",
    [
        (0.3, False, [5]),  # > 0.1: batch subset of max(int(8 * 0.7), 1) = 5
        (0.1, False, [8]),  # <= 0.1: per-sample DropPath on the full batch
        (0.1, True, [7]),  # nested (list) input: batch subset for any rate > 0
        (0.0, True, [8]),
    ],
)
def test_block_stochastic_depth_variant(rate, list_input, expected):
    block = make_block(rate).train()
    x = torch.randn(8, 4, 32)
    assert attention_batch_sizes(block, [x] if list_input else x) == expected
    block.eval()
    assert attention_batch_sizes(block, x) == [8]


def test_block_small_rate_drops_whole_residuals():
    torch.manual_seed(1)
    block = make_block(0.1).train()
    x = torch.randn(300, 3, 32)
    with torch.no_grad():
        out = block(x)
        candidates = []  # the four keep/drop outcomes of (attention, FFN), kept residuals scaled by 1 / 0.9
        for keep_attn in (0.0, 1 / 0.9):
            y = x + keep_attn * block.attn_residual(x)
            for keep_ffn in (0.0, 1 / 0.9):
                candidates.append(y + keep_ffn * block.ffn_residual(y))
    matches = torch.stack([torch.isclose(out, c, atol=1e-5).flatten(1).all(1) for c in candidates], dim=1)
    assert torch.all(matches.sum(1) == 1), "every sample is exactly one keep/drop outcome"
    assert 0.7 < matches[:, 3].float().mean() < 0.9  # both kept with probability 0.81
