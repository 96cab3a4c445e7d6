import math

import pytest
import torch

from simdinov2.loss import coding_rate, half_logdet_identity_plus


def test_closed_forms_of_style_rule_8():
    p, eps_sq = 4, 0.3
    assert coding_rate(torch.zeros(1, 5, p), eps_sq).value.item() == pytest.approx(0.0, abs=1e-7)
    # zᵀz = (m/p)·I with m = 8: two stacked identities
    z = torch.cat([torch.eye(p), torch.eye(p)]).unsqueeze(0)
    assert coding_rate(z, eps_sq).value.item() == pytest.approx(p / 2 * math.log(1 + 1 / eps_sq), rel=1e-6)
    # m identical unit rows
    unit = torch.nn.functional.normalize(torch.randn(p), dim=0)
    rate = coding_rate(unit.expand(6, p).unsqueeze(0), eps_sq)
    assert rate.value.item() == pytest.approx(0.5 * math.log(1 + p / eps_sq), rel=1e-5)
    assert rate.n_fallbacks.item() == 0


def test_matches_float64_logdet_per_view():
    torch.manual_seed(0)
    z = torch.randn(3, 7, 5, dtype=torch.float64)
    rate = coding_rate(z, 0.05, n_total=14)
    for v in range(3):
        cov = sum(torch.outer(row, row) for row in z[v])
        expected = 0.5 * torch.logdet(torch.eye(5, dtype=torch.float64) + 5 / (14 * 0.05) * cov)
        assert rate.value[v].item() == pytest.approx(expected.item(), rel=1e-10)


def test_fp32_under_autocast():
    torch.manual_seed(1)
    z = torch.randn(2, 8, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rate = coding_rate(z, 0.05)
    assert rate.value.dtype == torch.float32
    torch.testing.assert_close(rate.value, coding_rate(z, 0.05).value)


def _rank_one(a: float) -> torch.Tensor:
    """a·v vᵀ with v = (1, 1)/√2: I + a·v vᵀ loses its identity to float32 rounding for a >= 1e8."""
    return torch.full((2, 2), a / 2)


def test_float32_failure_takes_the_float64_factorisation():
    a = 1e9
    expected = 0.5 * math.log1p(a)  # eigenvalues of I + a·v vᵀ: 1 + a and 1
    assert torch.linalg.cholesky_ex(torch.eye(2) + _rank_one(a)).info.item() != 0, "float32 must fail here"
    result = half_logdet_identity_plus(_rank_one(a), 1.0)
    assert result.n_fallbacks.item() == 1
    assert result.value.item() == pytest.approx(expected, rel=1e-6)
    batch = half_logdet_identity_plus(torch.stack([torch.eye(2), _rank_one(a)]), 1.0)
    assert batch.n_fallbacks.item() == 1
    torch.testing.assert_close(batch.value, torch.tensor([math.log(2.0), expected]))


def test_non_finite_or_indefinite_covariance_gives_nan_not_a_crash():
    cov = torch.stack([torch.eye(3), torch.full((3, 3), float("nan")), torch.diag(torch.tensor([1.0, -1.0, 1.0]))])
    result = half_logdet_identity_plus(cov, 2.0)
    assert result.value[0].item() == pytest.approx(1.5 * math.log(3.0))
    assert torch.isnan(result.value[1]) and torch.isnan(result.value[2])


def test_fallback_gradient_is_the_float64_gradient():
    a = 1e9
    cov = _rank_one(a).requires_grad_()
    half_logdet_identity_plus(cov, 1.0).value.backward()
    matrix64 = torch.eye(2, dtype=torch.float64) + _rank_one(a).double()
    expected = 0.5 * torch.linalg.inv(matrix64)  # d ½·logdet(I + C) / dC
    torch.testing.assert_close(cov.grad.double(), expected, rtol=1e-5, atol=1e-12)
    assert torch.isfinite(cov.grad).all()
