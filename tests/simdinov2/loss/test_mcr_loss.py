import math

import pytest
import torch
import torch.nn.functional as F

from simdinov2.loss import MCRLoss


def _views(seed: int, n_views: int, m: int, p: int, dtype=torch.float32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(m, p, generator=generator, dtype=dtype), dim=-1) for _ in range(n_views)]


def _slow_mcr(students, teachers, *, eps, coeff, expa_type, no_diag=True) -> float:
    """Loops over view pairs and samples; float64 logdet of I + p/(m eps) Σ z zᵀ (one process)."""
    m, p = students[0].shape
    sims, n_terms = 0.0, 0
    for i, t in enumerate(teachers):
        for j, s in enumerate(students):
            if no_diag and i == j:
                continue
            sims += sum(float(t[b].double() @ s[b].double()) for b in range(m)) / m
            n_terms += 1
    rates = []
    for v, t in enumerate(teachers):
        z = students[v].double() if expa_type == 0 else (students[v].double() + t.double()) / 2
        cov = sum(torch.outer(row, row) for row in z)
        rates.append(0.5 * torch.logdet(torch.eye(p, dtype=torch.float64) + p / (m * eps) * cov).item())
    gamma = (p + m) / (p * m)
    return -coeff * sims / n_terms - gamma * sum(rates) / len(rates)


def test_spec_closed_form_identity_views():
    loss, metrics = MCRLoss(4, eps=0.5)([torch.eye(4)] * 4, [torch.eye(4)] * 2)
    assert metrics["comp_loss"].item() == pytest.approx(1.0)
    assert metrics["expa_loss"].item() == pytest.approx(math.log(3.0), rel=1e-6)
    assert loss.item() == pytest.approx(-2.0986, abs=1e-4)
    assert metrics["effective_eps"].item() == pytest.approx(0.5)
    assert metrics["cholesky_fallbacks"].item() == 0
    assert set(metrics) == {"loss", "comp_loss", "global_comp_loss", "expa_loss", "effective_eps", "cholesky_fallbacks"}


@pytest.mark.parametrize("expa_type", [0, 1])
@pytest.mark.parametrize("no_diag", [True, False])
def test_matches_slow_reference(expa_type, no_diag):
    students, teachers = _views(0, 5, 6, 4), _views(1, 2, 6, 4)
    loss, metrics = MCRLoss(4, expa_type=expa_type, eps=0.2, coeff=0.7)(students, teachers, no_diag=no_diag)
    expected = _slow_mcr(students, teachers, eps=0.2, coeff=0.7, expa_type=expa_type, no_diag=no_diag)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    global_pairs = (students[1] * teachers[0]).sum(-1).mean() + (students[0] * teachers[1]).sum(-1).mean()
    assert metrics["global_comp_loss"].item() == pytest.approx(global_pairs.item() / 2, rel=1e-5)


def test_teacher_gets_no_gradient_and_backward_is_finite():
    students = [v.requires_grad_() for v in _views(2, 4, 5, 3)]
    teachers = [v.requires_grad_() for v in _views(3, 2, 5, 3)]
    loss, _ = MCRLoss(3, expa_type=1)(students, teachers)
    loss.backward()
    assert all(s.grad is not None and torch.isfinite(s.grad).all() for s in students)
    assert all(t.grad is None for t in teachers)


@pytest.mark.parametrize("expa_type", [0, 1])
def test_gradcheck_float64(expa_type):
    students = _views(4, 3, 5, 3, dtype=torch.float64)
    teachers = _views(5, 2, 5, 3, dtype=torch.float64)
    loss_fn = MCRLoss(3, expa_type=expa_type, eps=0.3, coeff=0.5)

    def loss_of(*student_views):
        return loss_fn(list(student_views), teachers)[0]

    inputs = tuple(s.clone().requires_grad_() for s in students)
    assert torch.autograd.gradcheck(loss_of, inputs)
    assert loss_of(*inputs).dtype == torch.float64


def test_fp32_whatever_the_autocast_dtype():
    students, teachers = _views(6, 4, 8, 6), _views(7, 2, 8, 6)
    reference, _ = MCRLoss(6)([s.bfloat16().float() for s in students], [t.bfloat16().float() for t in teachers])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, metrics = MCRLoss(6)([s.bfloat16() for s in students], [t.bfloat16() for t in teachers])
    assert loss.dtype == torch.float32 and metrics["expa_loss"].dtype == torch.float32
    torch.testing.assert_close(loss, reference)


def test_per_call_eps_and_coeff_override_the_constructor_values():
    students, teachers = _views(8, 4, 6, 4), _views(9, 2, 6, 4)
    per_call, metrics = MCRLoss(4, eps=0.05, coeff=1.0)(students, teachers, eps=0.2, coeff=0.3)
    constructed, _ = MCRLoss(4, eps=0.2, coeff=0.3)(students, teachers)
    torch.testing.assert_close(per_call, constructed)
    assert metrics["effective_eps"].item() == pytest.approx(0.2)


def test_official_gamma():
    assert MCRLoss(256).gamma(n_per_rank=128, eps=0.05, coeff=1.0) == pytest.approx(384 / (256 * 128))


@pytest.mark.parametrize("m", [3, 10])  # n < p and n > p
def test_theorem_gamma_and_coeff_scaling(m):
    p, eps = 5, 0.09
    loss_fn = MCRLoss(p, eps=eps, coeff=2.0, gamma_rule="theorem")
    expected_gamma = 2.0 * math.sqrt(eps) * math.sqrt(m / (p * min(p, m)))
    assert loss_fn.gamma(n_per_rank=m, eps=eps, coeff=2.0) == pytest.approx(expected_gamma)
    students, teachers = _views(10, 3, m, p), _views(11, 2, m, p)
    loss, metrics = loss_fn(students, teachers)
    official_fn = MCRLoss(p, eps=eps, coeff=2.0)
    _, official = official_fn(students, teachers)
    rate = official["expa_loss"].item() / official_fn.gamma(n_per_rank=m, eps=eps, coeff=2.0)
    assert metrics["expa_loss"].item() == pytest.approx(expected_gamma * rate, rel=1e-5)
    # under the theorem rule coeff scales both terms: the balance is fixed
    half, _ = loss_fn(students, teachers, coeff=1.0)
    assert half.item() == pytest.approx(loss.item() / 2, rel=1e-5)


def test_cholesky_failure_falls_back_and_is_counted():
    p, m, eps = 4, 8, 1e-9
    full_rank = torch.cat([torch.eye(p), torch.eye(p)])  # zᵀz = 2·I: Cholesky succeeds
    identical = torch.full((m, p), 0.5)  # rank one: I is lost next to p/(m eps)·zᵀz, float32 Cholesky fails
    loss, metrics = MCRLoss(p, eps=eps)([full_rank, identical, full_rank], [full_rank, identical])
    assert torch.isfinite(loss)
    assert metrics["cholesky_fallbacks"].item() == 1
    rates = [p / 2 * math.log1p(1 / eps), 0.5 * math.log1p(p / eps)]  # style rule 8 closed forms
    gamma = (p + m) / (p * m)
    assert metrics["expa_loss"].item() == pytest.approx(gamma * sum(rates) / 2, rel=1e-5)


def test_error_paths():
    with pytest.raises(ValueError, match=r"expa_type=2 is not one of \[0, 1\].*dino.mcr.expa_type"):
        MCRLoss(4, expa_type=2)
    with pytest.raises(ValueError, match=r"reduce_cov='yes'.*dino.mcr.reduce_cov"):
        MCRLoss(4, reduce_cov="yes")
    with pytest.raises(ValueError, match=r"gamma_rule='paper'.*\['official', 'theorem'\]"):
        MCRLoss(4, gamma_rule="paper")
    with pytest.raises(ValueError, match="eps=0 must be > 0"):
        MCRLoss(4, eps=0)
    loss_fn = MCRLoss(4)
    views = _views(12, 3, 5, 4)
    with pytest.raises(ValueError, match="eps=-1"):
        loss_fn(views, views[:2], eps=-1)
    with pytest.raises(ValueError, match="at least 2 teacher"):
        loss_fn(views, views[:1])
    with pytest.raises(ValueError, match="out_dim=4"):
        loss_fn([torch.ones(5, 3)] * 3, [torch.ones(5, 3)] * 2)
