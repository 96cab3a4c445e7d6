"""iBOT's masked-patch cross-entropy (Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer",
2022) as used by DINOv2: the student predicts, for each masked patch of a global crop, the teacher's target
on the same (unmasked) patch.
"""

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2.loss.centering import PendingCenterUpdate
from dinov2.loss.common import all_reduce_sum_, at_least_fp32, no_autocast
from dinov2.loss.sinkhorn_knopp import sinkhorn_knopp

logger = logging.getLogger(__name__)


def default_masks_weight(student_masks_flat: Tensor) -> Tensor:
    """1 / (number of masked patches of its crop) for every masked patch, in mask order.

    student_masks_flat: [n_crops, P] bool -> [n_masked] float32.
    """
    n_masked_per_crop = student_masks_flat.sum(dim=-1, dtype=torch.float32).clamp(min=1.0)  # [n_crops]
    return (1.0 / n_masked_per_crop).unsqueeze(-1).expand_as(student_masks_flat)[student_masks_flat]


class iBOTPatchLoss(nn.Module):  # the official class name
    """Masked-patch cross-entropy with per-crop averaging, plus the teacher-side centering / Sinkhorn-Knopp.

    Args:
        patch_out_dim: K, the number of prototypes of the patch head.
        student_temp: temperature of the student softmax (0.1).
        center_momentum: EMA momentum of the teacher centre (0.9).
        device: where the `center` buffer [1, 1, K] is created.
    """

    center: Tensor

    def __init__(
        self,
        patch_out_dim: int,
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
        self.patch_out_dim = patch_out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, patch_out_dim, device=device))
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
    def softmax_center_teacher(self, teacher_patch_tokens: Tensor, teacher_temp: float) -> Tensor:
        """softmax((t - center) / teacher_temp) after any pending centre update.

        teacher_patch_tokens: [1, n_masked, K] (or [n_masked, K]) logits -> fp32 probabilities, shaped
        [1, n_masked, K] (the centre broadcasts).
        """
        self.apply_center_update()
        with no_autocast(teacher_patch_tokens):
            return F.softmax((at_least_fp32(teacher_patch_tokens) - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_patch_tokens: Tensor) -> None:
        """Start the centre update with the mean over masked patches, averaged over groups and ranks.

        teacher_patch_tokens: [G, n_masked, K] (the meta-architecture passes G = 1) or [n_masked, K].
        Batch centre = Σ_g mean_patches(t_g) summed over ranks / (G * W); applied lazily as in DINOLoss.
        """
        self.apply_center_update()
        if teacher_patch_tokens.ndim == 2:
            teacher_patch_tokens = teacher_patch_tokens.unsqueeze(0)
        if teacher_patch_tokens.ndim != 3:
            raise ValueError(
                f"teacher_patch_tokens must be [G, n_masked, K] or [n_masked, K], got "
                f"shape {tuple(teacher_patch_tokens.shape)}"
            )
        with no_autocast(teacher_patch_tokens):
            batch_sum = at_least_fp32(teacher_patch_tokens).mean(dim=1).sum(dim=0, keepdim=True)  # [1, K]
        self._pending.start(batch_sum, n_groups=teacher_patch_tokens.shape[0])

    @torch.no_grad()
    def update_center_from_sum(self, row_sum: Tensor, n_rows: int) -> None:
        """`update_center` of one group [n_rows, K] given only its row sum [1, K] (fp32): mean = sum / n_rows.

        Lets the caller accumulate the masked patches of several micro-batches in [1, K] instead of keeping
        their logits.
        """
        self.apply_center_update()
        self._pending.start(row_sum / n_rows, n_groups=1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_output: Tensor,
        teacher_temp: float,
        n_masked_patches_tensor: Tensor,
        n_iterations: int = 3,
    ) -> Tensor:
        """Sinkhorn-Knopp targets over the masked patches of all ranks.

        teacher_output: [n_masked, K]; n_masked_patches_tensor: [1] int, this rank's count of masked patches
        (not modified: FIX, upstream all-reduces the batch tensor in place and needs a process group).
        Returns [n_masked, K], rows summing to 1.
        """
        n_samples_total = all_reduce_sum_(n_masked_patches_tensor.detach().clone())
        return sinkhorn_knopp(teacher_output, teacher_temp, n_iterations=n_iterations, n_samples_total=n_samples_total)

    def forward_masked(
        self,
        student_patch_tokens_masked: Tensor,
        teacher_patch_tokens_masked: Tensor,
        student_masks_flat: Tensor,
        n_masked_patches: int | None = None,
        masks_weight: Tensor | None = None,
    ) -> Tensor:
        """-Σ_j masks_weight_j · Σ_k t_jk · log_softmax(s_j / student_temp)_k / n_crops, in fp32.

        Args:
            student_patch_tokens_masked: [M, K] student logits of the masked patches (M >= n_masked, the
                rows past n_masked are padding).
            teacher_patch_tokens_masked: [M, K] or [n_masked, K] teacher targets.
            student_masks_flat: [n_crops, P] bool masks of the global crops (n_crops = 2B).
            n_masked_patches: number of real rows (all rows when None); a Python int, so that slicing does not
                wait for the device (`mask_indices_list.shape[0]` of the batch).
            masks_weight: [n_masked] weight of each masked patch; default 1 / (masked patches in its crop).

        Returns:
            The scalar loss: the per-crop mean cross-entropy over its masked patches, averaged over all
            n_crops crops (crops without a mask count as 0 in the average, as upstream).
        """
        with no_autocast(student_patch_tokens_masked):
            student_log_probs = F.log_softmax(
                at_least_fp32(student_patch_tokens_masked) / self.student_temp, dim=-1
            )  # [M, K]
            n_rows = teacher_patch_tokens_masked.shape[0] if n_masked_patches is None else n_masked_patches
            student_log_probs = student_log_probs[:n_rows]
            teacher_probs = at_least_fp32(teacher_patch_tokens_masked)[:n_rows]
            cross_entropy = -(teacher_probs * student_log_probs).sum(dim=-1)  # [n_masked]
            if masks_weight is None:
                masks_weight = default_masks_weight(student_masks_flat)
            weighted = cross_entropy * at_least_fp32(masks_weight)[:n_rows]
            return weighted.sum() / student_masks_flat.shape[0]
