"""SimDINO / SimDINOv2 meta-architecture: DINOv2's SSLMetaArch with coding-rate and cosine losses.

The delta over `dinov2.train.ssl_meta_arch.SSLMetaArch` (paper eq. 9 and 17):

* heads without the weight-normed prototype layer (`DINOHead(remove_last_layer=True)`): a 3-layer MLP to
  the bottleneck, l2-normalised, so the teacher export holds only `backbone.*` and `dino_head.mlp.*`;
* CLS tokens: `MCRLoss` (cross-view cosine minus the coding rate of the global views' covariance), called
  as the official release calls it: student views `[g1, g2, l1 .. lL]`, teacher views `[t1, t2]` (not
  swapped), `no_diag=True`, so the mean runs over the 2·(2 + L) - 2 cross-view pairs;
* masked patch tokens: `CosinePatchLoss` (negative cosine, iBOT's weighting);
* no teacher post-processing (`train.centering: none`), no temperature, no KoLeo.

Everything else (backbone, data, student forward, sharding, EMA, loop, checkpoints) is DINOv2's. The
teacher is an EMA of the student; `teacher.momentum_teacher = teacher.final_momentum_teacher = 0` makes the
EMA a copy, i.e. teacher = student at every step (the paper's "no self-distillation", Table 8).

Logged metrics (official SimDINOv2 names): `dino_mcr_loss`, `dino_mcr_comp_loss` (mean cross-view cosine),
`dino_mcr_global_comp_loss` (its global-global pairs), `dino_mcr_expa_loss` (gamma · coding rate),
`ibot_comp_loss`, plus `dino_mcr_effective_eps` (the ε² the computed rate corresponds to: W·eps with the
per-rank covariance) and `dino_mcr_cholesky_fallbacks`; `teacher_cls_effective_rank` on log iterations.
"""

import logging

import torch
from omegaconf import DictConfig

from dinov2.train.ssl_meta_arch import Batch, SSLMetaArch, Tensors
from simdinov2.loss import CosinePatchLoss, MCRLoss

logger = logging.getLogger(__name__)


def check_simdino_config(cfg: DictConfig) -> None:
    """Raise ValueError naming the key to fix when `cfg` asks for something the SimDINO objective does not do."""
    if not cfg.dino.remove_last_layer:
        raise ValueError(
            "dino.remove_last_layer=false: the coding-rate loss works on the l2-normalised bottleneck features of a "
            "head without prototype layer; set dino.remove_last_layer=true"
        )
    if cfg.ibot.separate_head and cfg.ibot.loss_weight > 0 and not cfg.ibot.remove_last_layer:
        raise ValueError(
            "ibot.remove_last_layer=false with ibot.separate_head=true: the cosine patch loss works on the "
            "bottleneck features of a head without prototype layer; set ibot.remove_last_layer=true"
        )
    for key in ("dino", "ibot"):
        if not cfg[key].head_normalize:
            raise ValueError(
                f"{key}.head_normalize=false: the coding-rate and cosine losses need unit features; set "
                f"{key}.head_normalize=true"
            )
    if cfg.train.centering != "none":
        raise ValueError(
            f"train.centering={cfg.train.centering!r}: SimDINO uses the raw teacher features as targets, the only "
            "valid value is 'none'; set train.centering=none"
        )
    if cfg.dino.koleo_loss_weight != 0:
        raise ValueError(
            f"dino.koleo_loss_weight={cfg.dino.koleo_loss_weight}: SimDINO replaces KoLeo by the coding rate, the "
            "only valid value is 0; set dino.koleo_loss_weight=0"
        )


class SimDINOMetaArch(SSLMetaArch):
    """SSLMetaArch with MCRLoss on CLS tokens and CosinePatchLoss on masked patches (see the module docstring).

    Args:
        cfg: the resolved training config with `dino.use_mcr = ibot.use_mcr = true` (selected by
            `simdinov2.train.build.build_meta_arch`); validated by `check_simdino_config`.
    """

    def __init__(self, cfg: DictConfig) -> None:
        check_simdino_config(cfg)
        super().__init__(cfg)
        logger.info(
            "OPTIONS -- SimDINOMetaArch: MCR eps %g (paper's eps^2) coeff %g expa_type %d reduce_cov %d gamma_rule "
            "%s; heads without prototype layer (out %d)",
            cfg.dino.mcr.eps,
            cfg.dino.mcr.coeff,
            cfg.dino.mcr.expa_type,
            cfg.dino.mcr.reduce_cov,
            cfg.dino.mcr.gamma_rule,
            cfg.dino.head_bottleneck_dim,
        )

    # ------------------------------------------------------------------------------------------------------
    # Construction hooks
    # ------------------------------------------------------------------------------------------------------
    def build_losses(self) -> dict[str, float]:
        """MCRLoss (`dino_loss`) and CosinePatchLoss (`ibot_patch_loss`); the weight of each term."""
        dino_out_dim = self.cfg.dino.head_bottleneck_dim
        patch_out_dim = self.cfg.ibot.head_bottleneck_dim if self.use_separate_ibot_head else dino_out_dim
        mcr = self.cfg.dino.mcr
        self.mcr_eps: float = float(mcr.eps)
        self.mcr_coeff: float = float(mcr.coeff)
        weights: dict[str, float] = {}
        if self.use_dino:
            self.dino_loss = MCRLoss(
                dino_out_dim,
                expa_type=mcr.expa_type,
                reduce_cov=mcr.reduce_cov,
                eps=self.mcr_eps,
                coeff=self.mcr_coeff,
                gamma_rule=mcr.gamma_rule,
            )
            weights["dino_mcr_loss"] = self.cfg.dino.loss_weight
        if self.use_ibot:
            self.ibot_patch_loss = CosinePatchLoss(patch_out_dim)
            weights["ibot_comp_loss"] = self.cfg.ibot.loss_weight
        return weights

    def set_loss_parameters(self, *, ibot_loss_weight: float, mcr_eps: float, mcr_coeff: float) -> None:
        """This iteration's iBOT weight and coding-rate eps / coeff (`dino.mcr.eps_end` / `coeff_end` schedules)."""
        if self.use_ibot:
            self.loss_weights["ibot_comp_loss"] = ibot_loss_weight
        self.mcr_eps, self.mcr_coeff = mcr_eps, mcr_coeff

    # ------------------------------------------------------------------------------------------------------
    # The training step
    # ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_targets(self, batch: Batch, *, teacher_temp: float) -> Tensors:
        """Teacher features of the unmasked global crops (`teacher_temp` is not used: no softmax in SimDINO).

        Returns:
            teacher_cls: [G, B, D] backbone CLS tokens (for the effective-rank monitor).
            teacher_cls_features: [G, B, K] l2-normalised head outputs, in crop order (not swapped).
            teacher_patch_features: [M, K] head outputs of the masked patches (empty when iBOT is off).
        """
        global_crops = batch["collated_global_crops"]  # [G B, 3, S, S]
        device = global_crops.device
        n_images = global_crops.shape[0] // self.n_global_crops
        with self.compute_context("teacher", "backbone", device):
            backbone_out = self.teacher["backbone"](global_crops, is_training=True)
        teacher_cls = backbone_out["x_norm_clstoken"]  # [G B, D]
        masked_patches = backbone_out["x_norm_patchtokens"].flatten(0, 1)  # [G B P, D]
        masked_patches = masked_patches.index_select(0, batch["mask_indices_list"])  # [M, D]
        if not self.use_ibot:
            masked_patches = masked_patches[:0]
        cls_features, patch_features = self._head_logits("teacher", teacher_cls, masked_patches, device)
        return {
            "teacher_cls": teacher_cls.float().unflatten(0, (self.n_global_crops, n_images)),
            "teacher_cls_features": cls_features.float().unflatten(0, (self.n_global_crops, n_images)),
            "teacher_patch_features": patch_features.float(),
        }

    def compute_losses(self, *, student: Tensors, teacher: Tensors, batch: Batch) -> tuple[Tensors, Tensors]:
        """`dino_mcr_loss` and `ibot_comp_loss` (unweighted) and the detached MCR diagnostics.

        MCR call convention (official): student `[g1, g2, l1 .. lL]`, teacher `[t1, t2]`, `no_diag=True`;
        eps and coeff are passed per call.
        """
        terms: Tensors = {}
        diagnostics: Tensors = {}
        if self.use_dino:
            student_views = [*student["student_global_logits"].unbind(0), *student["student_local_logits"].unbind(0)]
            teacher_views = list(teacher["teacher_cls_features"].unbind(0))
            loss, metrics = self.dino_loss(
                student_views, teacher_views, no_diag=True, eps=self.mcr_eps, coeff=self.mcr_coeff
            )
            terms["dino_mcr_loss"] = loss
            for name in ("comp_loss", "global_comp_loss", "expa_loss", "effective_eps", "cholesky_fallbacks"):
                diagnostics[f"dino_mcr_{name}"] = metrics[name]
        if self.use_ibot:
            terms["ibot_comp_loss"], _ = self.ibot_patch_loss.forward_masked(
                student["student_masked_patch_logits"],
                teacher["teacher_patch_features"],
                student_masks_flat=batch["collated_masks"],
                n_masked_patches=batch["mask_indices_list"].shape[0],
                masks_weight=batch["masks_weight"],
            )
        return terms, diagnostics
