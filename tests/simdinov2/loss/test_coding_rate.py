import math

import pytest
import torch

from simdinov2.loss import coding_rate, half_logdet_identity_plus
from simdinov2.loss.mcr_loss import _half_logdet_from_eigenvalues


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
    assert rate.n_fallbacks == 0


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


def test_indefinite_input_takes_the_eigenvalue_fallback():
    cov = torch.diag(torch.tensor([1.0, -1.0]))  # I + 2·cov = diag(3, -1): Cholesky fails
    result = half_logdet_identity_plus(cov, 2.0)
    assert result.n_fallbacks == 1
    assert result.value.item() == pytest.approx(0.5 * math.log(3.0), rel=1e-6)  # the negative eigenvalue is noise
    batch = torch.stack([torch.eye(2), cov])
    result = half_logdet_identity_plus(batch, 2.0)
    assert result.n_fallbacks == 1
    torch.testing.assert_close(result.value, torch.tensor([math.log(3.0), 0.5 * math.log(3.0)]))


def test_non_finite_covariance_gives_nan_not_a_crash():
    cov = torch.stack([torch.eye(3), torch.full((3, 3), float("nan"))])
    value = _half_logdet_from_eigenvalues(cov, 1.0, rounding_eps=1e-7)
    assert value[0].item() == pytest.approx(1.5 * math.log(2.0)) and torch.isnan(value[1])


def test_fallback_gradient_is_correct():
    torch.manual_seed(2)
    a = torch.randn(4, 4, dtype=torch.float64)
    cov = (a @ a.T + torch.diag(torch.arange(4.0, dtype=torch.float64))).requires_grad_()
    assert torch.autograd.gradcheck(lambda c: _half_logdet_from_eigenvalues(c, 0.7, 1e-16), (cov,))
    value = _half_logdet_from_eigenvalues(cov, 0.7, 1e-16)
    expected = 0.5 * torch.logdet(torch.eye(4, dtype=torch.float64) + 0.7 * cov)
    torch.testing.assert_close(value, expected)
