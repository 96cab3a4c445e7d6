"""SimDINO / SimDINOv2 CLS-token objective: cross-view cosine alignment minus a coding-rate regulariser.

Paper: Wu et al., "Simplifying DINO via Coding Rate Regularization" (arXiv:2502.10385), eq. 8, 9 and 17,
Theorem C.1 and Appendix D. Reference code: the official SimDINO release, `MCRLoss` in
`simdinov2/loss/dino_clstoken_loss.py` (the class name and its constructor arguments are kept so that
the official `dino.mcr.*` config values transfer unchanged).

Notation: p = feature size (`out_dim`, D in the paper), m = B = images per rank, W = world size,
n = samples in the covariance estimate, V = views.

Coding rate, paper eq. 8:  R_ε(Γ) = ½·logdet(I + (p / ε²)·Γ),  Γ = (1/n)·Σ_i z_i z_iᵀ.
**The `eps` argument (config `dino.mcr.eps`) is the paper's ε², not ε**: the code computes
½·logdet(I + p / (n·eps) · Σ z zᵀ), so eps = 0.05 means ε ≈ 0.224.

Distributed estimate (`reduce_cov`):
* 1: the per-rank sums Σ z zᵀ are all-reduced with gradients, n = m·W: the value and the gradient equal
  those of one process holding the concatenated batch.
* 0 (official default): each rank uses its own m samples but still divides by m·W, i.e. it computes
  R with Γ = (1/m)·Σ_local z zᵀ and an effective ε² of W·eps (0.4 for eps = 0.05 on 8 GPUs). The released
  SimDINOv2 numbers depend on this; the effective value is reported as the `effective_eps` metric.
"""

import logging
import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from dinov2.loss.common import all_reduce_sum_with_grad, at_least_fp32, no_autocast, world_size

logger = logging.getLogger(__name__)

ExpaType = Literal[0, 1]
ReduceCov = Literal[0, 1]
GammaRule = Literal["official", "theorem"]
_EXPA_TYPES = (0, 1)
_REDUCE_COVS = (0, 1)
_GAMMA_RULES = ("official", "theorem")


class HalfLogdet(NamedTuple):
    """½·logdet values and, as a device tensor, how many matrices needed the float64 fallback."""

    value: Tensor
    n_fallbacks: Tensor


def _half_logdet_cholesky(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """½·logdet = Σ log diag(L) of positive definite matrices [..., p, p] -> ([...], failed [...] bool).

    Rows that did not factorise hold NaN. Differentiable; no host-device synchronisation (`cholesky_ex`).
    """
    chol, info = torch.linalg.cholesky_ex(matrix)
    value = chol.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1)
    failed = info != 0
    return torch.where(failed, torch.full_like(value, float("nan")), value), failed


def half_logdet_identity_plus(cov: Tensor, alpha: float) -> HalfLogdet:
    """½·logdet(I + alpha·cov) for symmetric positive semi-definite cov: [..., p, p] -> value [...].

    Computed with a Cholesky factorisation, ½·logdet = Σ log diag(L), in float32 (float64 inputs stay
    float64) whatever the autocast dtype. A matrix whose float32 factorisation fails (numerically not
    positive definite: tiny eps, huge or degenerate features) takes the float64 factorisation of the same
    matrix instead, and `n_fallbacks` counts them (upstream returned NaN silently). A matrix that fails in
    float64 too (non-finite features, eps far below any recipe's) gives NaN, which the training loop reports
    as a non-finite loss. Nothing here waits for the device: the float64 branch is computed for every call
    (p³/3 float64 operations per matrix, negligible next to the backbone) and selected per matrix on the
    device, and a failed factorisation is first replaced by the identity so that its garbage cannot reach
    the gradient.
    """
    with no_autocast(cov):
        cov = at_least_fp32(cov)
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        matrix = eye + alpha * cov
        with torch.no_grad():
            failed = torch.linalg.cholesky_ex(matrix).info != 0  # [...]
        keep = failed[..., None, None]
        value, _ = _half_logdet_cholesky(torch.where(keep, eye, matrix))
        if cov.dtype == torch.float64:
            return HalfLogdet(torch.where(failed, torch.full_like(value, float("nan")), value), failed.sum())
        eye64 = eye.to(torch.float64)
        matrix64 = eye64 + alpha * cov.to(torch.float64)  # from cov: `matrix` may have lost the identity to rounding
        value64, _ = _half_logdet_cholesky(torch.where(keep, matrix64, eye64))
        value = torch.where(failed, value64.to(value.dtype), value)
        return HalfLogdet(value, failed.sum())


def coding_rate(z: Tensor, eps_sq: float, n_total: int | None = None) -> HalfLogdet:
    """Per view R = ½·logdet(I + p/(n·eps_sq)·zᵀz); z: [V, m, p] -> [V]; eps_sq is the paper's ε² (eq. 8).

    n_total is the sample count n the covariance is normalised by (default m, the rows of z).
    Closed forms: z = 0 -> 0; zᵀz = (m/p)·I -> (p/2)·log(1 + 1/eps_sq); m identical unit rows ->
    ½·log(1 + p/eps_sq).
    """
    n = z.shape[-2] if n_total is None else n_total
    with no_autocast(z):
        z = at_least_fp32(z)
        cov = z.mT @ z  # [V, p, p]
    return half_logdet_identity_plus(cov, z.shape[-1] / (n * eps_sq))


class MCRLoss(nn.Module):
    """loss = -coeff · comp - gamma · mean_v R_v (SimDINO eq. 9 / SimDINOv2 eq. 17, CLS part).

    Args:
        out_dim: p, the feature size of the head outputs (checked against the inputs).
        expa_type: 0 (`dino.mcr.expa_type`): coding rate of the student global views; 1: of the average of
            student and teacher global features (the released SimDINOv2 recipe; the teacher part carries no
            gradient).
        reduce_cov: 1: all-reduce the covariance with gradients (exact global estimate); 0: per-rank
            estimate as upstream (effective ε² = W · eps). Config `dino.mcr.reduce_cov`.
        eps: the paper's ε² (default of the per-call `eps`; config `dino.mcr.eps`).
        coeff: weight of the alignment term (default of the per-call `coeff`; config `dino.mcr.coeff`).
        gamma_rule: weight of the coding rate (config `dino.mcr.gamma_rule`):
            "official": gamma = (p + W·m) / (p·W·m), the release's balancing factor;
            "theorem": gamma = coeff · ε · sqrt(n / (p · min(p, n))) with ε = sqrt(ε²) (paper §2.3 and
            Theorem C.1), where (n, ε²) are the effective sample count and ε² of the estimate actually
            computed: (W·m, eps) with reduce_cov=1 and (m, W·eps) with reduce_cov=0 (equal for W = 1).
            Derivation: Theorem C.1 bounds ||∇_Z R_ε(ZZᵀ/n)||_F <= sqrt(p·min(p, n)/n) / (4ε) for unit
            columns, while the alignment term `coeff · comp` has an O(coeff) gradient on unit features;
            equal orders give gamma = Θ(coeff · ε · sqrt(n/(p·min(p, n)))). So `coeff` multiplies gamma
            (and the alignment), and the theorem fixes the ratio of the two terms.

    `forward(student_feat_list, teacher_feat_list, no_diag=True, *, eps=None, coeff=None)` takes the
    student head outputs `[g_1, ..., g_G, l_1, ..., l_L]` (global views first) and the teacher outputs
    `[t_1, ..., t_G]` (not swapped), each [m, p] and already l2-normalised (the head does it).
    Compression `comp` = mean over the cross-view pairs (teacher view i, student view j, j != i when
    `no_diag`) of mean_b <t_i[b], s_j[b]>. Returns `(loss, metrics)` with detached float metrics
    `loss, comp_loss (= comp), global_comp_loss (mean of the global cross-view pairs), expa_loss
    (= gamma · mean_v R_v), effective_eps, cholesky_fallbacks`.

    Closed form: p = m = 4, eps = 0.5, one process, expa_type 0, all four views the 4x4
    identity: comp = 1, R = 2·ln 3, gamma = 0.5, expa = ln 3, loss = -1 - ln 3.
    """

    def __init__(
        self,
        out_dim: int,
        *,
        expa_type: ExpaType = 0,
        reduce_cov: ReduceCov = 0,
        eps: float = 0.05,
        coeff: float = 1.0,
        gamma_rule: GammaRule = "official",
    ) -> None:
        super().__init__()
        if expa_type not in _EXPA_TYPES:
            raise ValueError(
                f"expa_type={expa_type!r} is not one of {list(_EXPA_TYPES)} (0: student global views, 1: mean of "
                "student and teacher global views); fix dino.mcr.expa_type"
            )
        if reduce_cov not in _REDUCE_COVS:
            raise ValueError(
                f"reduce_cov={reduce_cov!r} is not one of {list(_REDUCE_COVS)} (0: per-rank covariance, 1: "
                "all-reduced covariance); fix dino.mcr.reduce_cov"
            )
        if gamma_rule not in _GAMMA_RULES:
            raise ValueError(f"gamma_rule={gamma_rule!r} is not one of {list(_GAMMA_RULES)}; fix dino.mcr.gamma_rule")
        _check_eps(eps)
        self.out_dim = out_dim
        self.expa_type = expa_type
        self.reduce_cov = reduce_cov
        self.eps = eps
        self.coeff = coeff
        self.gamma_rule = gamma_rule

    def effective_eps(self, eps: float) -> float:
        """The ε² that the computed coding rate corresponds to: eps, or W·eps with the per-rank estimate."""
        return eps if self.reduce_cov == 1 else eps * world_size()

    def gamma(self, *, n_per_rank: int, eps: float, coeff: float) -> float:
        """The coding-rate weight for m = n_per_rank samples per rank (see the class docstring)."""
        p, n_ranks = self.out_dim, world_size()
        if self.gamma_rule == "official":
            return (p + n_ranks * n_per_rank) / (p * n_ranks * n_per_rank)
        n = n_per_rank * n_ranks if self.reduce_cov == 1 else n_per_rank
        return coeff * math.sqrt(self.effective_eps(eps)) * math.sqrt(n / (p * min(p, n)))

    def compression(self, student_feat: Tensor, teacher_feat: Tensor, *, no_diag: bool) -> tuple[Tensor, Tensor]:
        """Mean cosine over cross-view pairs and over the global cross-view pairs (detached).

        student_feat: [V_s, m, p]; teacher_feat: [V_t, m, p] (V_t <= V_s, student views 0..V_t-1 are the same
        global crops as the teacher views).
        """
        n_teacher, n_student = teacher_feat.shape[0], student_feat.shape[0]
        sim = torch.einsum("imp,jmp->ij", teacher_feat, student_feat) / student_feat.shape[1]  # [V_t, V_s]
        same_view = torch.eye(n_teacher, n_student, dtype=torch.bool, device=sim.device)
        if no_diag:
            comp = sim.masked_fill(same_view, 0.0).sum() / (n_teacher * n_student - n_teacher)
        else:
            comp = sim.sum() / (n_teacher * n_student)
        global_sim = sim[:, :n_teacher].detach()
        global_comp = global_sim.masked_fill(same_view[:, :n_teacher], 0.0).sum() / (n_teacher * (n_teacher - 1))
        return comp, global_comp

    def expansion(self, features: Tensor, *, eps: float, coeff: float) -> tuple[Tensor, Tensor]:
        """gamma · mean_v R_v of the views' covariances; features: [V, m, p] -> (scalar, Cholesky fallbacks [])."""
        n_per_rank, p = features.shape[1], features.shape[2]
        cov = torch.einsum("vmp,vmq->vpq", features, features)  # [V, p, p], sums over the m local samples
        if self.reduce_cov == 1:
            cov = all_reduce_sum_with_grad(cov)
        alpha = p / (n_per_rank * world_size() * eps)
        rates = half_logdet_identity_plus(cov, alpha)
        return self.gamma(n_per_rank=n_per_rank, eps=eps, coeff=coeff) * rates.value.mean(), rates.n_fallbacks

    def forward(
        self,
        student_feat_list: list[Tensor],
        teacher_feat_list: list[Tensor],
        no_diag: bool = True,
        *,
        eps: float | None = None,
        coeff: float | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """See the class docstring; eps / coeff default to the constructor values (pass schedules here)."""
        eps = self.eps if eps is None else eps
        coeff = self.coeff if coeff is None else coeff
        _check_eps(eps)
        self._check_inputs(student_feat_list, teacher_feat_list)
        with no_autocast(student_feat_list[0]):
            student_feat = at_least_fp32(torch.stack(student_feat_list))  # [V_s, m, p]
            teacher_feat = at_least_fp32(torch.stack(teacher_feat_list)).detach()  # [V_t, m, p]
            n_global = teacher_feat.shape[0]
            comp, global_comp = self.compression(student_feat, teacher_feat, no_diag=no_diag)
            if self.expa_type == 0:
                expa_features = student_feat[:n_global]
            else:
                expa_features = (student_feat[:n_global] + teacher_feat) / 2
            expa, n_fallbacks = self.expansion(expa_features, eps=eps, coeff=coeff)
            loss = -coeff * comp - expa
        metrics = {
            "loss": loss.detach(),
            "comp_loss": comp.detach(),
            "global_comp_loss": global_comp,
            "expa_loss": expa.detach(),
            # torch.full, not new_tensor: a fill on the device instead of a host-to-device copy in the step
            "effective_eps": torch.full((), self.effective_eps(eps), dtype=loss.dtype, device=loss.device),
            "cholesky_fallbacks": n_fallbacks.to(loss.dtype),
        }
        return loss, metrics

    def _check_inputs(self, student_feat_list: list[Tensor], teacher_feat_list: list[Tensor]) -> None:
        n_student, n_teacher = len(student_feat_list), len(teacher_feat_list)
        if n_teacher < 2 or n_student < n_teacher:
            raise ValueError(
                f"MCRLoss needs at least 2 teacher (global) views and at least as many student views (globals "
                f"first), got {n_student} student and {n_teacher} teacher views"
            )
        expected = tuple(teacher_feat_list[0].shape)
        for name, tensors in (("student", student_feat_list), ("teacher", teacher_feat_list)):
            for index, tensor in enumerate(tensors):
                if tensor.ndim != 2 or tuple(tensor.shape) != expected or tensor.shape[-1] != self.out_dim:
                    raise ValueError(
                        f"{name} view {index} has shape {tuple(tensor.shape)}; every view must be [m, out_dim] "
                        f"with the same m, out_dim={self.out_dim} and m={expected[0]}"
                    )


def _check_eps(eps: float) -> None:
    if not eps > 0:
        raise ValueError(f"eps={eps} must be > 0 (it is the paper's epsilon squared); fix dino.mcr.eps")
