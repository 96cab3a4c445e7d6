import math

import pytest
import torch

from dinov2.loss import KoLeoLoss


def test_antipodal_and_orthogonal_pairs():
    loss = KoLeoLoss()
    assert loss(torch.tensor([[1.0, 0.0], [-3.0, 0.0]])).item() == pytest.approx(-math.log(2.0), abs=1e-6)
    assert loss(torch.tensor([[2.0, 0.0], [0.0, 0.5]])).item() == pytest.approx(-math.log(math.sqrt(2.0)), abs=1e-6)


def test_duplicates_are_finite_with_finite_gradient():
    x = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]], requires_grad=True)
    value = KoLeoLoss()(x)
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(x.grad).all()
    assert KoLeoLoss()(torch.ones(1, 4)).isfinite()


def test_matches_slow_nearest_neighbour_loop():
    torch.manual_seed(0)
    x = torch.randn(9, 5, dtype=torch.float64)
    rows = [
        r / max(math.sqrt(sum(v * v for v in r)), 1e-8)
        for r in (torch.tensor(row, dtype=torch.float64) for row in x.tolist())
    ]
    total = 0.0
    for i, row in enumerate(rows):
        others = [j for j in range(len(rows)) if j != i]
        nearest = max(others, key=lambda j: float(row @ rows[j]))
        diff = row - rows[nearest] + 1e-8
        total += -math.log(math.sqrt(float(diff @ diff)) + 1e-8)
    assert KoLeoLoss()(x).item() == pytest.approx(total / len(rows), rel=1e-10)


def test_spreading_points_lowers_the_loss_and_half_inputs_give_fp32():
    clustered = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.98, -0.1]])
    spread = torch.tensor([[1.0, 0.0], [-0.5, 0.87], [-0.5, -0.87]])
    loss = KoLeoLoss()
    assert loss(spread) < loss(clustered)
    out = loss(spread.half())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, loss(spread.half().float()))


def test_rejects_non_matrix_input():
    with pytest.raises(ValueError, match=r"expects \[N, D\]"):
        KoLeoLoss()(torch.ones(4))
