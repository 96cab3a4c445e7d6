"""SimDINOv2's masked-patch objective: negative cosine between student and teacher features of each masked patch.

The patch part of SimDINOv2 eq. 17 (Wu et al., "Simplifying DINO via Coding Rate Regularization"): on unit
features ½·||s - t||² = 1 - cos(s, t), so minimising -cos is the paper's squared distance up to a constant.
Weighted exactly like DINOv2's iBOTPatchLoss (per-crop mean over its masked patches, averaged over all
global crops). There is no coding-rate term on patches.
"""

import logging

import torch.nn.functional as F
from torch import Tensor, nn

from dinov2.loss.common import at_least_fp32, no_autocast
from dinov2.loss.ibot_patch_loss import default_masks_weight

logger = logging.getLogger(__name__)


class CosinePatchLoss(nn.Module):
    """-Σ_j masks_weight_j · cos(s_j, t_j) / n_crops over the masked patches j, in fp32.

    Args:
        patch_out_dim: K, the feature size of the patch head outputs (checked against the inputs).
    """

    def __init__(self, patch_out_dim: int) -> None:
        super().__init__()
        self.patch_out_dim = patch_out_dim

    def forward_masked(
        self,
        student_patch_tokens_masked: Tensor,
        teacher_patch_tokens_masked: Tensor,
        student_masks_flat: Tensor,
        n_masked_patches: int | None = None,
        masks_weight: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Masked-patch cosine loss.

        Args:
            student_patch_tokens_masked: [M, K] student features of the masked patches (rows past
                n_masked_patches are padding).
            teacher_patch_tokens_masked: [M, K] or [n_masked, K] teacher features of the same patches.
            student_masks_flat: [n_crops, P] bool masks of the global crops (n_crops = 2B).
            n_masked_patches: number of real rows (all teacher rows when None); a Python int, so that slicing
                does not wait for the device.
            masks_weight: [n_masked] weight of each masked patch; default 1 / (masked patches in its crop).

        Returns:
            `(loss, {"comp_loss": loss})` (the metric detached) as upstream; loss is -(per-crop mean cosine),
            averaged over all n_crops crops.
        """
        for name, tensor in (("student", student_patch_tokens_masked), ("teacher", teacher_patch_tokens_masked)):
            if tensor.ndim != 2 or tensor.shape[-1] != self.patch_out_dim:
                raise ValueError(
                    f"{name} patch features have shape {tuple(tensor.shape)}; expected [n, {self.patch_out_dim}] "
                    "(patch_out_dim)"
                )
        n_rows = teacher_patch_tokens_masked.shape[0] if n_masked_patches is None else n_masked_patches
        with no_autocast(student_patch_tokens_masked):
            student = at_least_fp32(student_patch_tokens_masked)[:n_rows]
            teacher = at_least_fp32(teacher_patch_tokens_masked)[:n_rows].detach()
            cosine = F.cosine_similarity(student, teacher, dim=-1, eps=1e-8)  # [n_masked]
            if masks_weight is None:
                masks_weight = default_masks_weight(student_masks_flat)
            loss = -(cosine * at_least_fp32(masks_weight)[:n_rows]).sum() / student_masks_flat.shape[0]
        return loss, {"comp_loss": loss.detach()}
