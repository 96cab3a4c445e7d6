"""KoLeo regulariser: Kozachenko-Leonenko differential-entropy estimate of l2-normalised features.

Sablayrolles et al., "Spreading vectors for similarity search" (ICLR 2019), as used by DINOv2. Minimising
`-mean_i log(d_i)` (d_i = distance to the nearest other sample) spreads the batch over the sphere.
"""

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2.loss.common import at_least_fp32, no_autocast

logger = logging.getLogger(__name__)


class KoLeoLoss(nn.Module):
    """-mean_i log(||x̂_i - x̂_nn(i) + eps||_2 + eps) with x̂ = x / max(||x||, eps), eps = 1e-8, in fp32.

    Computed on each rank's batch alone (no gather), with autocast disabled. Duplicate rows give a finite
    value (the distance is at least eps·sqrt(D)) and a finite gradient. A batch of one row is its own
    nearest neighbour (as upstream), which contributes a constant with zero gradient.

    FIX: the diagonal of the similarity matrix is set to -inf; upstream sets it to -1, which ties with an
    exactly antipodal neighbour, and argmax then picks the point itself (distance eps, loss ~ -log(eps)).
    The result is unchanged whenever the nearest other point has a dot product above -1.
    """

    def __init__(self, *, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def nearest_neighbours(self, normalized: Tensor) -> Tensor:
        """normalized: [N, D] unit rows -> [N] index of each row's nearest other row (largest dot product)."""
        dots = normalized @ normalized.t()  # [N, N]
        dots.fill_diagonal_(float("-inf"))
        return dots.argmax(dim=1)

    def forward(self, student_output: Tensor) -> Tensor:
        """student_output: [N, D] features (the student's global-crop CLS tokens of one crop) -> scalar."""
        if student_output.ndim != 2:
            raise ValueError(f"KoLeoLoss expects [N, D] features, got shape {tuple(student_output.shape)}")
        with no_autocast(student_output):
            normalized = F.normalize(at_least_fp32(student_output), p=2, dim=-1, eps=self.eps)
            with torch.no_grad():
                neighbour = self.nearest_neighbours(normalized)
            distances = F.pairwise_distance(normalized, normalized[neighbour], p=2, eps=self.eps)  # [N]
            return -torch.log(distances + self.eps).mean()
