import pytest
import torch
import torch.nn.functional as F

from simdinov2.loss import CosinePatchLoss


def _batch(seed: int = 0, K: int = 6):
    torch.manual_seed(seed)
    masks = torch.zeros(4, 5, dtype=torch.bool)
    masks[1, [0, 2]] = True
    masks[3, [1, 2, 3, 4]] = True
    n_masked = int(masks.sum())
    return masks, torch.randn(n_masked + 2, K), torch.randn(n_masked, K), n_masked


def test_matches_per_crop_loop():
    masks, student, teacher, n_masked = _batch()
    loss, metrics = CosinePatchLoss(6).forward_masked(student, teacher, masks, n_masked_patches=n_masked)
    row, per_crop = 0, []
    for crop_mask in masks.tolist():
        cosines = []
        for is_masked in crop_mask:
            if is_masked:
                s, t = student[row].double(), teacher[row].double()
                cosines.append(float(s @ t / (s.norm() * t.norm())))
                row += 1
        per_crop.append(sum(cosines) / len(cosines) if cosines else 0.0)
    assert loss.item() == pytest.approx(-sum(per_crop) / len(per_crop), rel=1e-5)
    assert set(metrics) == {"comp_loss"} and metrics["comp_loss"].item() == pytest.approx(loss.item())


def test_closed_forms_identical_and_opposite():
    masks, student, _, n_masked = _batch()
    loss_fn = CosinePatchLoss(6)
    same, _ = loss_fn.forward_masked(student[:n_masked], 3 * student[:n_masked], masks)
    assert same.item() == pytest.approx(-2 / 4, rel=1e-6)  # 2 of 4 crops are masked
    opposite, _ = loss_fn.forward_masked(student[:n_masked], -student[:n_masked], masks)
    assert opposite.item() == pytest.approx(2 / 4, rel=1e-6)


def test_explicit_weights_and_backward_in_fp32():
    masks, student, teacher, n_masked = _batch(1)
    student = student.half().requires_grad_()
    weights = torch.full((n_masked,), 0.5)
    loss, _ = CosinePatchLoss(6).forward_masked(student, teacher, masks, n_masked, weights)
    expected = -0.5 * F.cosine_similarity(student[:n_masked].float(), teacher, dim=-1).sum() / 4
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(student.grad).all() and torch.count_nonzero(student.grad[n_masked:]) == 0


def test_rejects_wrong_feature_size():
    masks, student, teacher, _ = _batch()
    with pytest.raises(ValueError, match=r"expected \[n, 8\] \(patch_out_dim\)"):
        CosinePatchLoss(8).forward_masked(student, teacher, masks)
