import math

import pytest
import torch

from dinov2.loss import sinkhorn_knopp


def _slow_sinkhorn(logits: torch.Tensor, temp: float, n_iterations: int) -> list[list[float]]:
    """Upstream's algorithm on nested Python lists (one process): q[k][n] = exp(logit[n][k] / temp)."""
    n_samples, n_prototypes = logits.shape
    q = [[math.exp(logits[n, k].item() / temp) for n in range(n_samples)] for k in range(n_prototypes)]
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(n_iterations):
        q = [[v / sum(row) / n_prototypes for v in row] for row in q]
        col_sums = [sum(q[k][n] for k in range(n_prototypes)) for n in range(n_samples)]
        q = [[q[k][n] / col_sums[n] / n_samples for n in range(n_samples)] for k in range(n_prototypes)]
    return [[q[k][n] * n_samples for k in range(n_prototypes)] for n in range(n_samples)]


@pytest.mark.parametrize("n_iterations", [0, 1, 3])
def test_matches_slow_reference(n_iterations):
    torch.manual_seed(0)
    logits = torch.randn(5, 4, dtype=torch.float64)
    out = sinkhorn_knopp(logits, 0.3, n_iterations=n_iterations)
    expected = torch.tensor(_slow_sinkhorn(logits, 0.3, n_iterations), dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)


def test_rows_sum_to_one_and_prototype_marginals_converge_to_n_over_k():
    torch.manual_seed(1)
    n_samples, n_prototypes = 12, 4
    logits = torch.randn(n_samples, n_prototypes)
    out = sinkhorn_knopp(logits, 0.5, n_iterations=3)
    assert out.shape == (n_samples, n_prototypes) and out.dtype == torch.float32
    torch.testing.assert_close(out.sum(dim=1), torch.ones(n_samples))
    converged = sinkhorn_knopp(logits, 0.5, n_iterations=300)
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(n_samples))
    torch.testing.assert_close(converged.sum(dim=0), torch.full((n_prototypes,), n_samples / n_prototypes))
    # three iterations already move the marginals much closer to uniform than the plain softmax
    softmax_gap = (torch.softmax(logits / 0.5, dim=1).sum(0) - 3.0).abs().max()
    assert (out.sum(0) - 3.0).abs().max() < 0.5 * softmax_gap


def test_explicit_sample_count_is_the_column_scale():
    logits = torch.randn(6, 3)
    torch.testing.assert_close(
        sinkhorn_knopp(logits, 0.1, n_samples_total=torch.tensor([6])), sinkhorn_knopp(logits, 0.1)
    )


def test_fp32_for_half_input_and_no_mutation():
    logits = torch.randn(4, 8).half()
    before = logits.clone()
    out = sinkhorn_knopp(logits, 0.07)
    assert out.dtype == torch.float32
    torch.testing.assert_close(logits, before, rtol=0, atol=0)
    torch.testing.assert_close(out, sinkhorn_knopp(logits.float(), 0.07))


def test_large_logits_do_not_overflow_and_shift_invariance():
    torch.manual_seed(2)
    logits = torch.randn(5, 6)
    big = logits + 50.0  # 50 / 0.04 = 1250 would overflow exp() in float32 without the shift
    out = sinkhorn_knopp(big, 0.04)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, sinkhorn_knopp(logits, 0.04), rtol=1e-4, atol=1e-6)


def test_no_gradient_and_errors():
    logits = torch.randn(3, 4, requires_grad=True)
    assert not sinkhorn_knopp(logits, 0.1).requires_grad
    with pytest.raises(ValueError, match="n_iterations=-1"):
        sinkhorn_knopp(logits, 0.1, n_iterations=-1)
    with pytest.raises(ValueError, match=r"must be \[N, K\]"):
        sinkhorn_knopp(torch.randn(2, 3, 4), 0.1)
