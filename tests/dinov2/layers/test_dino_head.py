import math

import pytest
import torch
from torch import nn

from dinov2.layers.dino_head import DINOHead, WeightNormedLinear


def _tiny_head(**kwargs) -> DINOHead:
    defaults = dict(nlayers=3, hidden_dim=96, bottleneck_dim=32)
    defaults.update(kwargs)
    return DINOHead(64, defaults.pop("out_dim", 100), **defaults)


def test_state_dict_keys_and_shapes_match_official_layout():
    head = _tiny_head()
    shapes = {key: tuple(value.shape) for key, value in head.state_dict().items()}
    assert shapes == {
        "mlp.0.weight": (96, 64),
        "mlp.0.bias": (96,),
        "mlp.2.weight": (96, 96),
        "mlp.2.bias": (96,),
        "mlp.4.weight": (32, 96),
        "mlp.4.bias": (32,),
        "last_layer.weight_g": (100, 1),
        "last_layer.weight_v": (100, 32),
    }
    assert head(torch.randn(5, 64)).shape == (5, 100)


def test_without_last_layer_only_mlp_keys_and_unit_norm_output():
    head = _tiny_head(out_dim=32, remove_last_layer=True)
    assert sorted(head.state_dict()) == [f"mlp.{i}.{p}" for i in (0, 2, 4) for p in ("bias", "weight")]
    out = head(torch.randn(7, 64))
    assert out.shape == (7, 32)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(7))


def test_normalize_false_without_last_layer_is_the_plain_mlp():
    head = _tiny_head(out_dim=32, remove_last_layer=True, normalize=False)
    x = torch.randn(4, 64)
    torch.testing.assert_close(head(x), head.mlp(x))
    assert not torch.allclose(head(x).norm(dim=-1), torch.ones(4))


def test_one_layer_and_batch_norm_layouts():
    assert sorted(_tiny_head(nlayers=1).state_dict()) == [
        "last_layer.weight_g",
        "last_layer.weight_v",
        "mlp.bias",
        "mlp.weight",
    ]
    keys = set(_tiny_head(use_bn=True, mlp_bias=False).state_dict())
    assert {"mlp.0.weight", "mlp.1.running_mean", "mlp.3.weight", "mlp.6.weight"} <= keys
    assert "mlp.0.bias" not in keys


def test_official_init_in_the_official_random_order():
    torch.manual_seed(3)
    head = _tiny_head()
    # Upstream order: build the MLP (default inits), re-init its Linears, then build the prototype Linear.
    torch.manual_seed(3)
    mlp = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 96), nn.GELU(), nn.Linear(96, 32))
    for layer in mlp[::2]:
        nn.init.trunc_normal_(layer.weight, std=0.02)
        nn.init.zeros_(layer.bias)
    prototypes = nn.Linear(32, 100, bias=False)
    for i in (0, 2, 4):
        torch.testing.assert_close(head.mlp[i].weight, mlp[i].weight, rtol=0, atol=0)
        assert torch.count_nonzero(head.mlp[i].bias) == 0
    torch.testing.assert_close(head.last_layer.weight_v, prototypes.weight, rtol=0, atol=0)
    torch.testing.assert_close(head.last_layer.weight_g, torch.ones(100, 1), rtol=0, atol=0)
    assert head.last_layer.weight_g.requires_grad
    assert abs(head.mlp[2].weight.std().item() - 0.02) < 0.002
    assert head.last_layer.weight_v.abs().max() <= 1 / math.sqrt(32)


def test_weight_norm_matches_torch_parametrization_value_and_gradient():
    torch.manual_seed(0)
    ours = WeightNormedLinear(6, 5)
    with torch.no_grad():
        ours.weight_g.copy_(torch.rand(5, 1) + 0.5)
    reference = nn.utils.parametrizations.weight_norm(nn.Linear(6, 5, bias=False))
    with torch.no_grad():
        reference.parametrizations.weight.original0.copy_(ours.weight_g)
        reference.parametrizations.weight.original1.copy_(ours.weight_v)
    x = torch.randn(3, 6)
    torch.testing.assert_close(ours(x), reference(x))
    ours(x).square().sum().backward()
    reference(x).square().sum().backward()
    torch.testing.assert_close(ours.weight_g.grad, reference.parametrizations.weight.original0.grad)
    torch.testing.assert_close(ours.weight_v.grad, reference.parametrizations.weight.original1.grad)
    # rows of the effective weight have norm g
    torch.testing.assert_close(ours.weight.norm(dim=1, keepdim=True), ours.weight_g.detach())


def test_prototype_logits_of_normalised_features_are_bounded_by_g():
    head = _tiny_head()
    logits = head(torch.randn(8, 64) * 100)
    assert logits.abs().max() <= 1.0 + 1e-5  # |<z, v/|v|>| <= 1 for unit z and g = 1


def test_load_state_dict_round_trip_and_reset_parameters():
    head = _tiny_head()
    other = _tiny_head()
    other.load_state_dict(head.state_dict(), strict=True)
    x = torch.randn(3, 64)
    torch.testing.assert_close(other(x), head(x))
    with torch.no_grad():
        other.last_layer.weight_g.fill_(3.0)
        other.mlp[0].bias.fill_(1.0)
    other.reset_parameters()
    assert torch.all(other.last_layer.weight_g == 1) and torch.count_nonzero(other.mlp[0].bias) == 0


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="nlayers=0"):
        _tiny_head(nlayers=0)
    with pytest.raises(ValueError, match="out_dim=100 must equal bottleneck_dim=32"):
        _tiny_head(remove_last_layer=True)
