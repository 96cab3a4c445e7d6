import math

import pytest
import torch

from dinov2.loss import iBOTPatchLoss, sinkhorn_knopp
from dinov2.loss.ibot_patch_loss import default_masks_weight


def _batch(seed: int = 0, n_crops: int = 4, n_patches: int = 6, K: int = 5):
    torch.manual_seed(seed)
    masks = torch.zeros(n_crops, n_patches, dtype=torch.bool)
    masks[0, [1, 3, 4]] = True
    masks[2, [0, 5]] = True  # crops 1 and 3 are not masked
    n_masked = int(masks.sum())
    student = torch.randn(n_masked + 3, K)  # 3 padding rows (the `upperbound` buffer)
    teacher = torch.softmax(torch.randn(n_masked, K), dim=-1)
    return masks, student, teacher, n_masked


def _slow_loss(masks, student, teacher, temp=0.1) -> float:
    """Per crop: mean CE over its masked patches; then the mean over all crops (unmasked crops count 0)."""
    row, per_crop = 0, []
    for crop_mask in masks.tolist():
        ces = []
        for is_masked in crop_mask:
            if not is_masked:
                continue
            s, t = student[row].double().tolist(), teacher[row].double().tolist()
            log_norm = math.log(sum(math.exp(v / temp) for v in s))
            ces.append(-sum(tk * (sk / temp - log_norm) for tk, sk in zip(t, s, strict=True)))
            row += 1
        per_crop.append(sum(ces) / len(ces) if ces else 0.0)
    return sum(per_crop) / len(per_crop)


def test_forward_masked_matches_per_crop_loop_with_padding_rows_ignored():
    masks, student, teacher, n_masked = _batch()
    loss = iBOTPatchLoss(5)
    value = loss.forward_masked(student, teacher, masks, n_masked_patches=n_masked)
    assert value.item() == pytest.approx(_slow_loss(masks, student, teacher), rel=1e-5)
    explicit = loss.forward_masked(
        student[:n_masked], teacher, masks, n_masked_patches=n_masked, masks_weight=default_masks_weight(masks)
    )
    torch.testing.assert_close(value, explicit)


def test_default_masks_weight_sums_to_the_number_of_masked_crops():
    masks, _, _, _ = _batch()
    weights = default_masks_weight(masks)
    torch.testing.assert_close(weights, torch.tensor([1 / 3] * 3 + [1 / 2] * 2))
    assert weights.sum().item() == pytest.approx(2.0)


def test_uniform_predictions_give_log_k_times_masked_crop_fraction():
    masks, _, _, n_masked = _batch(K=8)
    value = iBOTPatchLoss(8).forward_masked(torch.zeros(n_masked, 8), torch.full((n_masked, 8), 1 / 8), masks)
    assert value.item() == pytest.approx(math.log(8) * 2 / 4, rel=1e-6)


def test_center_update_averages_the_patch_means():
    torch.manual_seed(3)
    loss = iBOTPatchLoss(4, center_momentum=0.9)
    logits = torch.randn(1, 7, 4)
    loss.update_center(logits)
    probs = loss.softmax_center_teacher(logits, 0.2)
    expected_center = 0.1 * logits.mean(dim=1, keepdim=True)
    torch.testing.assert_close(loss.center, expected_center)
    assert probs.shape == (1, 7, 4) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, torch.softmax((logits - expected_center) / 0.2, dim=-1))
    loss.update_center(logits[0])  # [n_masked, K] is one group too
    loss.apply_center_update()
    torch.testing.assert_close(loss.center, 0.9 * expected_center + 0.1 * logits.mean(dim=1, keepdim=True))


def test_sinkhorn_uses_the_shared_function_and_leaves_the_count_untouched():
    logits = torch.randn(6, 5)
    count = torch.tensor([6])
    out = iBOTPatchLoss(5).sinkhorn_knopp_teacher(logits, 0.07, count)
    torch.testing.assert_close(out, sinkhorn_knopp(logits, 0.07))
    assert count.item() == 6
    torch.testing.assert_close(out.sum(dim=-1), torch.ones(6))


def test_backward_and_half_inputs():
    masks, student, teacher, n_masked = _batch()
    student = student.half().requires_grad_()
    value = iBOTPatchLoss(5).forward_masked(student, teacher, masks, n_masked_patches=n_masked)
    assert value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(student.grad).all() and torch.count_nonzero(student.grad[n_masked:]) == 0


def test_errors():
    with pytest.raises(ValueError, match=r"\[G, n_masked, K\]"):
        iBOTPatchLoss(4).update_center(torch.ones(2, 2, 2, 4))
    with pytest.raises(ValueError, match="student_temp=-1"):
        iBOTPatchLoss(4, student_temp=-1)
