"""Sinkhorn-Knopp teacher targets, the one implementation used by both DINOLoss and iBOTPatchLoss.

SwAV / DINOv2 (Caron et al., 2020; Oquab et al., 2023): turn teacher logits into soft assignments whose
prototype marginals are (approximately, after a few iterations) uniform over the samples of *all* ranks.
"""

import logging

import torch
from torch import Tensor

from dinov2.loss.common import all_reduce_max_, all_reduce_sum_, at_least_fp32, no_autocast, world_size

logger = logging.getLogger(__name__)

# exp() overflows float32 just above 88.7; scores above this bound are shifted down (see sinkhorn_knopp).
_MAX_EXPONENT = 80.0


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: Tensor,
    teacher_temp: float,
    *,
    n_iterations: int = 3,
    n_samples_total: int | Tensor | None = None,
) -> Tensor:
    """Sinkhorn-Knopp normalisation of `exp(teacher_logits / teacher_temp)`, computed in fp32 (or fp64).

    Args:
        teacher_logits: [N, K] teacher head outputs of this rank's N samples (CLS tokens or masked patches).
            Not modified.
        teacher_temp: the teacher softmax temperature.
        n_iterations: alternating normalisations (3 in DINOv2).
        n_samples_total: the number of samples over all ranks. None means N * W (every rank holds N samples,
            the DINO CLS case); iBOT passes the all-reduced count of masked patches.

    Returns:
        [N, K] targets (a transposed view): every row sums to 1, and each prototype's mass summed over the
        samples of all ranks tends to n_samples_total / K as `n_iterations` grows.

    Algorithm (as upstream, with Q = exp(logits / temp)^T of shape [K, N]): Q /= global sum(Q); repeat
    {Q /= global row sums; Q /= K; Q /= local column sums; Q /= n_samples_total}; Q *= n_samples_total.
    The row sums and the total are all-reduced, the column sums are per sample.

    Deviation (overflow guard): the exponent is shifted by `c = max(0, max_all_ranks(logits / temp) - 80)`.
    The constant cancels in the first normalisation, so the result is unchanged, and c = 0 (upstream's
    sequence of operations) unless upstream's exp() would overflow float32 and return NaN targets.
    No gradient flows through the targets (the teacher runs without grad upstream too).
    """
    if n_iterations < 0:
        raise ValueError(f"n_iterations={n_iterations} must be >= 0")
    if teacher_logits.ndim != 2:
        raise ValueError(f"teacher_logits must be [N, K], got shape {tuple(teacher_logits.shape)}")
    with no_autocast(teacher_logits):
        scores = at_least_fp32(teacher_logits) / teacher_temp  # [N, K], a new tensor
        if scores.numel() > 0:
            local_max = scores.amax().reshape(1)
        else:
            local_max = scores.new_full((1,), float("-inf"))
        shift = all_reduce_max_(local_max).sub_(_MAX_EXPONENT).clamp_(min=0.0)
        q = scores.sub_(shift).exp_().t()  # [K, N]
        n_prototypes = q.shape[0]
        if n_samples_total is None:
            n_samples_total = q.shape[1] * world_size()
        q /= all_reduce_sum_(q.sum().reshape(1))
        for _ in range(n_iterations):
            q /= all_reduce_sum_(q.sum(dim=1, keepdim=True))  # [K, 1]: each prototype's mass over all ranks
            q /= n_prototypes
            q /= q.sum(dim=0, keepdim=True)  # [1, N]: each sample's mass (local)
            q /= n_samples_total
        q *= n_samples_total
        return q.t()
