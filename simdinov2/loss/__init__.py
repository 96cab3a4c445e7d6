"""SimDINO losses: the coding-rate CLS objective (MCRLoss) and the masked-patch cosine loss."""

from simdinov2.loss.cosine_patch_loss import CosinePatchLoss
from simdinov2.loss.mcr_loss import MCRLoss, coding_rate, half_logdet_identity_plus

__all__ = ["CosinePatchLoss", "MCRLoss", "coding_rate", "half_logdet_identity_plus"]
