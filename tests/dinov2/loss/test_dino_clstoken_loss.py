import math

import pytest
import torch
import torch.nn.functional as F

from dinov2.loss import DINOLoss


def _slow_cross_entropy(teacher_probs: torch.Tensor, student_logits: torch.Tensor, temp: float) -> float:
    """Mean over rows of -Σ_k t_k log softmax(s / temp)_k, one row and one entry at a time, in float64."""
    total = 0.0
    for t_row, s_row in zip(teacher_probs.double().tolist(), student_logits.double().tolist(), strict=True):
        log_norm = math.log(sum(math.exp(s / temp) for s in s_row))
        total += -sum(t * (s / temp - log_norm) for t, s in zip(t_row, s_row, strict=True))
    return total / len(student_logits)


def test_uniform_outputs_give_log_k_per_term():
    K, n_students, n_teachers = 50, 3, 2
    loss = DINOLoss(K)
    students = [torch.zeros(4, K) for _ in range(n_students)]
    teachers = [torch.full((4, K), 1.0 / K) for _ in range(n_teachers)]
    value = loss(students, teachers)
    assert value.item() == pytest.approx(n_students * n_teachers * math.log(K), rel=1e-6)


def test_forward_matches_slow_loop_and_sums_all_pairs():
    torch.manual_seed(0)
    loss = DINOLoss(7, student_temp=0.2)
    students = [torch.randn(5, 7) for _ in range(3)]
    teachers = [torch.softmax(torch.randn(5, 7), dim=-1) for _ in range(2)]
    expected = sum(_slow_cross_entropy(t, s, 0.2) for s in students for t in teachers)
    assert loss(students, teachers).item() == pytest.approx(expected, rel=1e-5)


def test_official_pairing_gives_the_mean_of_the_18_cross_view_terms():
    """Official DINOv2: swapped teacher CLS, local loss / T plus global loss * 2 / T, T = 2 * 8 + 2."""
    torch.manual_seed(1)
    B, K, n_local, temp = 3, 11, 8, 0.07
    loss = DINOLoss(K)
    teacher_logits = torch.randn(2 * B, K)  # crop-major: [crop1 of all images; crop2 of all images]
    student_global = torch.randn(2 * B, K)
    student_local = torch.randn(n_local * B, K)
    swapped = torch.cat(teacher_logits.chunk(2)[::-1])
    targets = loss.softmax_center_teacher(swapped, temp).view(2, B, K)
    n_terms = 2 * n_local + 2
    dino_local = loss(list(student_local.chunk(n_local)), [targets[0], targets[1]]) / n_terms
    dino_global = loss([student_global], [targets.flatten(0, 1)]) * 2 / n_terms

    teacher_probs = torch.softmax(teacher_logits / temp, dim=-1).chunk(2)
    student_crops = list(student_global.chunk(2)) + list(student_local.chunk(n_local))
    terms = [
        _slow_cross_entropy(teacher_probs[i], student_crops[j], 0.1)
        for i in range(2)
        for j in range(len(student_crops))
        if j != i
    ]
    assert len(terms) == 18
    assert (dino_local + dino_global).item() == pytest.approx(sum(terms) / 18, rel=1e-5)
    # without the swap the global term would pair each crop with itself
    unswapped = loss.softmax_center_teacher(teacher_logits, temp)
    assert loss([student_global], [unswapped]).item() != pytest.approx(dino_global.item() * n_terms / 2, rel=1e-3)


def test_center_update_is_lazy_ema_of_the_batch_mean():
    torch.manual_seed(2)
    loss = DINOLoss(6, center_momentum=0.9)
    first, second = torch.randn(4, 6), torch.randn(8, 6)
    loss.update_center(first)
    torch.testing.assert_close(loss.center, torch.zeros(1, 6))  # not applied yet
    probs = loss.softmax_center_teacher(second, 0.5)
    expected_center = 0.1 * first.mean(dim=0, keepdim=True)
    torch.testing.assert_close(loss.center, expected_center)
    torch.testing.assert_close(probs, torch.softmax((second - expected_center) / 0.5, dim=-1))
    loss.update_center(second)
    loss.apply_center_update()
    torch.testing.assert_close(loss.center, 0.9 * expected_center + 0.1 * second.mean(dim=0, keepdim=True))
    assert "center" in loss.state_dict()


def test_second_update_without_apply_keeps_both_batches():
    loss = DINOLoss(3)
    loss.update_center(torch.ones(2, 3))
    loss.update_center(torch.full((2, 3), 2.0))
    loss.apply_center_update()
    torch.testing.assert_close(loss.center, torch.full((1, 3), 0.9 * 0.1 + 0.1 * 2.0))


def test_fp32_outputs_for_half_inputs():
    loss = DINOLoss(5)
    probs = loss.softmax_center_teacher(torch.randn(3, 5).half(), 0.04)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(3))
    student = torch.randn(3, 5, dtype=torch.bfloat16, requires_grad=True)
    value = loss([student], [probs])
    assert value.dtype == torch.float32
    expected = -(probs * F.log_softmax(student.float() / 0.1, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(value, expected)
    value.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_sinkhorn_teacher_rows_sum_to_one_and_input_untouched():
    logits = torch.randn(6, 9)
    before = logits.clone()
    targets = DINOLoss(9).sinkhorn_knopp_teacher(logits, 0.07)
    torch.testing.assert_close(targets.sum(dim=-1), torch.ones(6))
    torch.testing.assert_close(logits, before, rtol=0, atol=0)


def test_errors():
    with pytest.raises(ValueError, match="at least one student and one teacher"):
        DINOLoss(4)([], [torch.ones(1, 4)])
    with pytest.raises(ValueError, match="student_temp=0"):
        DINOLoss(4, student_temp=0)
    with pytest.raises(ValueError, match="center_momentum=1.5"):
        DINOLoss(4, center_momentum=1.5)
