"""DINO's cross-entropy between teacher targets and student prototype scores of the CLS tokens.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (2021), as used by DINOv2
(Oquab et al., 2023). Teacher targets come from either the EMA-centred softmax (`softmax_center_teacher` /
`update_center`) or Sinkhorn-Knopp (`sinkhorn_knopp_teacher`), chosen by the meta-architecture with
`train.centering`.
"""

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2.loss.centering import PendingCenterUpdate
from dinov2.loss.common import at_least_fp32, no_autocast
from dinov2.loss.sinkhorn_knopp import sinkhorn_knopp

logger = logging.getLogger(__name__)


class DINOLoss(nn.Module):
    """Summed soft-target cross-entropy over every (student crop, teacher crop) pair of the given lists.

    Args:
        out_dim: K, the number of prototypes.
        student_temp: temperature of the student softmax (0.1).
        center_momentum: EMA momentum of the teacher centre (0.9).
        device: where the `center` buffer [1, K] is created.

    Official conventions kept by the caller: the teacher CLS logits of the two global crops are
    swapped ([crop2; crop1]) before the targets are computed, then
    `DINOLoss(local_chunks, [t1, t2]) / T + DINOLoss([student_globals_2B], [swapped_targets_2B]) * 2 / T`
    with `T = 2 * n_local_crops + 2` is the mean of the T cross-view cross-entropies.
    """

    center: Tensor

    def __init__(
        self,
        out_dim: int,
        *,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if student_temp <= 0:
            raise ValueError(f"student_temp={student_temp} must be > 0")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum={center_momentum} must lie in [0, 1]")
        self.out_dim = out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim, device=device))
        self._pending = PendingCenterUpdate()

    def reset_parameters(self) -> None:
        """Zero the centre and drop any pending update."""
        self._pending = PendingCenterUpdate()
        with torch.no_grad():
            self.center.zero_()

    def apply_center_update(self) -> None:
        """Wait for the all-reduce started by `update_center` and fold it into the EMA centre."""
        self._pending.apply_(self.center, self.center_momentum)

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output: Tensor, teacher_temp: float) -> Tensor:
        """softmax((teacher_output - center) / teacher_temp) after any pending centre update.

        teacher_output: [N, K] teacher logits -> [N, K] fp32 probabilities.
        """
        self.apply_center_update()
        with no_autocast(teacher_output):
            return F.softmax((at_least_fp32(teacher_output) - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self, teacher_output: Tensor, teacher_temp: float, n_iterations: int = 3) -> Tensor:
        """Sinkhorn-Knopp targets over the samples of all ranks; teacher_output: [N, K] -> [N, K]."""
        return sinkhorn_knopp(teacher_output, teacher_temp, n_iterations=n_iterations)

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        """Start the update of the centre with this batch's mean teacher logits (all ranks).

        teacher_output: [N, K] raw teacher logits; same as `update_center_from_sum(teacher_output.sum(0), N)`.
        """
        with no_autocast(teacher_output):
            row_sum = at_least_fp32(teacher_output).sum(dim=0, keepdim=True)  # [1, K]
        self.update_center_from_sum(row_sum, teacher_output.shape[0])

    @torch.no_grad()
    def update_center_from_sum(self, row_sum: Tensor, n_rows: int) -> None:
        """Start the centre update from the row sum [1, K] (fp32) of `n_rows` raw teacher logit rows.

        The sum is all-reduced asynchronously and the EMA `center <- m * center + (1 - m) * sum_all_ranks /
        (n_rows * W)` is applied at the next `softmax_center_teacher` (so step i is centred with outputs up to
        step i - 1, as upstream). A pending update that was never applied is applied first instead of being
        dropped. Taking the sum instead of the logits lets the caller accumulate micro-batches in [1, K].
        """
        self.apply_center_update()
        self._pending.start(row_sum, n_groups=n_rows)

    def forward(self, student_output_list: list[Tensor], teacher_out_softmaxed_centered_list: list[Tensor]) -> Tensor:
        """Σ_s Σ_t mean_rows(-Σ_k t_k · log_softmax(s / student_temp)_k), computed in fp32.

        Args:
            student_output_list: student logits, each [N, K].
            teacher_out_softmaxed_centered_list: teacher targets (probabilities), each [N, K], row-aligned
                with every student tensor.

        Returns:
            The scalar sum over all len(students) * len(teachers) pairs (no pair is excluded, nothing is
            averaged over pairs).
        """
        if not student_output_list or not teacher_out_softmaxed_centered_list:
            raise ValueError(
                f"DINOLoss needs at least one student and one teacher tensor, got {len(student_output_list)} "
                f"student and {len(teacher_out_softmaxed_centered_list)} teacher tensors"
            )
        first = student_output_list[0]
        total = first.new_zeros((), dtype=torch.promote_types(first.dtype, torch.float32))
        with no_autocast(first):
            for student_output in student_output_list:
                student_log_probs = F.log_softmax(at_least_fp32(student_output) / self.student_temp, dim=-1)
                for teacher_probs in teacher_out_softmaxed_centered_list:
                    cross_entropy = -(at_least_fp32(teacher_probs) * student_log_probs).sum(dim=-1)  # [N]
                    total = total + cross_entropy.mean()
        return total
