"""SSLMetaArch: DINOv2's student/teacher pair, heads, losses, `forward_backward` and the teacher EMA.

`forward_backward` is a short orchestrator over three named steps that a subclass may override
(simdinov2's meta-architecture overrides `teacher_targets` and `compute_losses`, and the construction
hooks `build_heads` / `build_losses`):

    teacher = self.teacher_targets(batch, teacher_temp=...)   # no grad: named teacher tensors
    student = self.student_forward(batch)                      # named student tensors
    terms, diagnostics = self.compute_losses(student=..., teacher=..., batch=...)
    total = sum(self.loss_weights[name] * terms[name])          # one weights mapping

Glossary: B images per process, G = 2 global crops, L local crops, D embedding, K head output,
P patch tokens per global crop, M masked patches of this process's batch.

Numerics follow official DINOv2: the teacher sees the unmasked global crops, the student
masked global crops and local crops in one nested backbone call, and one shared-head call over
`[local CLS; global CLS; masked patches]`. The DINO loss is the mean of the T = G·L + G·(G-1)
cross-view cross-entropies (student crop A against teacher crop B != A), KoLeo acts on the student's
global backbone CLS tokens, iBOT on the masked patches. Logged terms are unweighted and unhalved (FIX of
an official bug, display only): `total_loss` is exactly the optimised loss.
"""

import contextlib
import logging
from typing import Any, Literal

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

from dinov2.fsdp import (
    Meshes,
    autocast_context,
    local_tensor,
    reshard_,
    set_gradient_sync_,
    shard_submodule,
    submodule_precision,
)
from dinov2.layers.dino_head import DINOHead
from dinov2.loss import DINOLoss, KoLeoLoss, iBOTPatchLoss
from dinov2.models import build_model_from_cfg
from dinov2.utils.pretrained import load_pretrained_weights

logger = logging.getLogger(__name__)

Batch = dict[str, Any]
Tensors = dict[str, Tensor]

CENTERING_MODES = ("centering", "sinkhorn_knopp", "none")


def effective_rank(features: Tensor) -> Tensor:
    """exp(entropy of the normalised singular values) of `features` [N, D] (uncentred), in [1, min(N, D)].

    Collapse monitor: near 1 when every sample maps to the same direction. NaN when `features` holds a
    non-finite value (the SVD would raise; a diverged step must reach the loop's non-finite check instead).
    No host-device synchronisation beyond what the SVD itself needs.
    """
    features = features.detach().float()
    is_finite = torch.isfinite(features).all()
    singular_values = torch.linalg.svdvals(torch.where(is_finite, features, torch.zeros_like(features)))
    probs = singular_values / singular_values.sum().clamp_min(1e-12)
    entropy = -torch.special.xlogy(probs, probs).sum()  # 0·log 0 = 0, without a data-dependent mask
    return torch.where(is_finite, torch.exp(entropy), torch.full_like(entropy, float("nan")))


class SSLMetaArch(nn.Module):
    """DINOv2 self-distillation: `student` and `teacher` ModuleDicts (`backbone`, `dino_head`, [`ibot_head`]).

    Args:
        cfg: the resolved training config (read, never written).
    """

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.train.centering not in CENTERING_MODES:
            raise ValueError(
                f"train.centering={cfg.train.centering!r} is not one of {list(CENTERING_MODES)}; fix train.centering"
            )
        self.centering: str = cfg.train.centering
        self.n_global_crops = 2
        self.n_local_crops: int = cfg.crops.local_crops_number
        self.use_dino = cfg.dino.loss_weight > 0
        self.use_ibot = cfg.ibot.loss_weight > 0
        self.use_koleo = self.use_dino and cfg.dino.koleo_loss_weight > 0
        self.use_separate_ibot_head = self.use_ibot and cfg.ibot.separate_head
        if not (self.use_dino or self.use_ibot):
            raise ValueError("dino.loss_weight and ibot.loss_weight are both 0: nothing to train; set one > 0")
        if self.use_ibot and (max(cfg.ibot.mask_ratio_min_max) <= 0 or cfg.ibot.mask_sample_probability <= 0):
            raise ValueError(
                f"iBOT is on (ibot.loss_weight={cfg.ibot.loss_weight}) but no patch is ever masked: "
                f"ibot.mask_ratio_min_max={list(cfg.ibot.mask_ratio_min_max)}, ibot.mask_sample_probability="
                f"{cfg.ibot.mask_sample_probability}; raise them or set ibot.loss_weight=0"
            )

        if not 0 <= cfg.student.freeze_backbone_epochs < cfg.optim.epochs:
            raise ValueError(
                f"student.freeze_backbone_epochs={cfg.student.freeze_backbone_epochs} must be in [0, optim.epochs="
                f"{cfg.optim.epochs}); fix student.freeze_backbone_epochs"
            )
        student_backbone, teacher_backbone, embed_dim = build_model_from_cfg(cfg)  # type: ignore[misc]
        self.embed_dim: int = embed_dim
        if cfg.student.pretrained_weights:  # heads stay freshly initialised; the teacher copies the student below
            load_pretrained_weights(
                student_backbone,
                cfg.student.pretrained_weights,
                pretrained_img_size=cfg.student.pretrained_img_size,
                pretrained_patch_size=cfg.student.pretrained_patch_size,
            )
        self.student = nn.ModuleDict({"backbone": student_backbone, **self.build_heads(embed_dim)})
        self.teacher = nn.ModuleDict({"backbone": teacher_backbone, **self.build_heads(embed_dim)})
        self.teacher.load_state_dict(self.student.state_dict())
        for param in self.teacher.parameters():
            param.requires_grad = False
        self.loss_weights: dict[str, float] = self.build_losses()
        self.precision = {
            (role, key): submodule_precision(cfg, role, key)  # type: ignore[arg-type]
            for role in ("student", "teacher")
            for key in self.student.keys()
        }
        for key in self.student.keys():
            student_strategy = self.precision[("student", key)].sharding_strategy
            teacher_strategy = self.precision[("teacher", key)].sharding_strategy
            if (student_strategy == "NO_SHARD") != (teacher_strategy == "NO_SHARD"):
                raise ValueError(
                    f"compute_precision.student.{key}.sharding_strategy={student_strategy!r} and "
                    f"compute_precision.teacher.{key}.sharding_strategy={teacher_strategy!r}: the teacher EMA needs "
                    "both replicated (NO_SHARD) or both sharded (SHARD_GRAD_OP / FULL_SHARD); make them agree"
                )
        self.is_sharded = False
        self.backbone_frozen = False  # see set_backbone_frozen (student.freeze_backbone_epochs)
        self.grad_scaler: torch.amp.GradScaler | None = None  # attached by build_grad_scaler (fp16 only)
        # Running [1, K] row sums and row counts of the teacher logits since the last `update_centers` (the
        # centre needs only these; keeping the [N, K] logits would hold them through the student pass).
        self._center_row_sums: dict[str, tuple[Tensor, int]] = {}
        logger.info(
            "OPTIONS -- SSLMetaArch: dino %s (weight %s), koleo %s (weight %s), ibot %s (weight %s, %s head), "
            "centering %s, %d global + %d local crops",
            self.use_dino,
            cfg.dino.loss_weight,
            self.use_koleo,
            cfg.dino.koleo_loss_weight,
            self.use_ibot,
            cfg.ibot.loss_weight,
            "separate" if self.use_separate_ibot_head else "shared",
            self.centering,
            self.n_global_crops,
            self.n_local_crops,
        )

    # ------------------------------------------------------------------------------------------------------
    # Construction hooks
    # ------------------------------------------------------------------------------------------------------
    def build_heads(self, embed_dim: int) -> dict[str, nn.Module]:
        """The heads of one network (called once for the student, once for the teacher).

        `dino_head` whenever DINO or iBOT is on (FIX: official needs DINO on), `ibot_head`
        with `ibot.separate_head`. `*.head_normalize=false` drops the l2-normalisation before the prototype
        layer (the "no last-layer normalization" perturbation of the SimDINO paper's Table 5);
        `*.remove_last_layer=true` (SimDINO) drops the prototype layer itself.
        """
        heads: dict[str, nn.Module] = {"dino_head": self._build_head(embed_dim, self.cfg.dino)}
        if self.use_separate_ibot_head:
            heads["ibot_head"] = self._build_head(embed_dim, self.cfg.ibot)
        return heads

    @staticmethod
    def _build_head(embed_dim: int, section: DictConfig) -> DINOHead:
        """DINOHead from the `dino` or `ibot` config section; output K = prototypes, or the bottleneck without them."""
        out_dim = section.head_bottleneck_dim if section.remove_last_layer else section.head_n_prototypes
        return DINOHead(
            embed_dim,
            out_dim,
            nlayers=section.head_nlayers,
            hidden_dim=section.head_hidden_dim,
            bottleneck_dim=section.head_bottleneck_dim,
            normalize=section.head_normalize,
            remove_last_layer=section.remove_last_layer,
        )

    def build_losses(self) -> dict[str, float]:
        """Register the loss modules; return the weight of every term `compute_losses` produces."""
        dino_out_dim = self.cfg.dino.head_n_prototypes
        ibot_out_dim = self.cfg.ibot.head_n_prototypes if self.use_separate_ibot_head else dino_out_dim
        weights: dict[str, float] = {}
        if self.use_dino:
            self.dino_loss = DINOLoss(dino_out_dim)
            weights["dino_global_crops_loss"] = self.cfg.dino.loss_weight
            if self.n_local_crops > 0:
                weights["dino_local_crops_loss"] = self.cfg.dino.loss_weight
        if self.use_koleo:
            self.koleo_loss = KoLeoLoss()
            weights["koleo_loss"] = self.cfg.dino.koleo_loss_weight
        if self.use_ibot:
            self.ibot_patch_loss = iBOTPatchLoss(ibot_out_dim)
            weights["ibot_loss"] = self.cfg.ibot.loss_weight
        return weights

    # ------------------------------------------------------------------------------------------------------
    # Distributed preparation, precision, train mode
    # ------------------------------------------------------------------------------------------------------
    def prepare_for_distributed_training(self, meshes: Meshes) -> None:
        """Shard student and teacher alike (FSDP2), each submodule with its own precision settings.

        The EMA runs on local shards, so `student.<key>` and `teacher.<key>` are split the same way
        (checked at construction).
        """
        for role, modules in (("student", self.student), ("teacher", self.teacher)):
            for key, module in modules.items():
                shard_submodule(module, precision=self.precision[(role, key)], meshes=meshes)
        self.is_sharded = True

    def build_grad_scaler(self, device: torch.device) -> None:
        """Attach a loss scaler when `compute_precision.grad_scaler` and a student submodule computes in fp16.

        Sharded: FSDP's ShardedGradScaler (its inf check is all-reduced); single process: torch.amp.GradScaler.
        Scaler defaults as official: initial scale 2**16, x2 every 2000 finite steps, x0.5 on overflow.
        """
        uses_fp16 = any(
            precision.param_dtype == torch.float16
            for (role, _), precision in self.precision.items()
            if role == "student"
        )
        if not (self.cfg.compute_precision.grad_scaler and uses_fp16):
            self.grad_scaler = None
            return
        if self.is_sharded:
            self.grad_scaler = ShardedGradScaler(device=device.type)
        else:
            self.grad_scaler = torch.amp.GradScaler(device.type)
        logger.info("OPTIONS -- loss scaling with %s", type(self.grad_scaler).__name__)

    def compute_context(self, role: str, key: str, device: torch.device) -> Any:
        """Context for the forward of `role.key`: nothing when sharded (FSDP casts), autocast otherwise."""
        if self.is_sharded:
            return contextlib.nullcontext()
        return autocast_context(self.precision[(role, key)], device)

    def train(self, mode: bool = True) -> "SSLMetaArch":
        """Train/eval mode for the student; the teacher always stays in eval mode (FIX of official DINOv2)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def set_gradient_sync(self, enabled: bool) -> None:
        """Gradient reduction on/off (off for the non-final micro-batches of an accumulated step)."""
        if self.is_sharded:
            set_gradient_sync_(self.student, enabled)

    def set_loss_parameters(self, *, ibot_loss_weight: float) -> None:
        """This iteration's scheduled loss values (`dinov2.train.schedulers.Schedules.loss_parameters`)."""
        if self.use_ibot:
            self.loss_weights["ibot_loss"] = ibot_loss_weight

    # ------------------------------------------------------------------------------------------------------
    # The training step
    # ------------------------------------------------------------------------------------------------------
    def _head_logits(
        self, role: str, cls_tokens: Tensor, patch_tokens: Tensor, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Run the head(s) of `role` on CLS tokens [N, D] and masked patch tokens [M, D] -> [N, K], [M, K']."""
        heads = self.student if role == "student" else self.teacher
        if "ibot_head" in heads:
            with self.compute_context(role, "dino_head", device):
                cls_logits = heads["dino_head"](cls_tokens)
            with self.compute_context(role, "ibot_head", device):
                patch_logits = heads["ibot_head"](patch_tokens)
            return cls_logits, patch_logits
        # One call of the shared head over [CLS; masked patches] (official: concat, run once, split).
        with self.compute_context(role, "dino_head", device):
            logits = heads["dino_head"](torch.cat([cls_tokens, patch_tokens]))
        return logits.split([cls_tokens.shape[0], patch_tokens.shape[0]])

    @torch.no_grad()
    def teacher_targets(self, batch: Batch, *, teacher_temp: float) -> Tensors:
        """Teacher forward on the unmasked global crops and its post-processed targets.

        Returns:
            teacher_cls: [G, B, D] backbone CLS tokens.
            teacher_cls_targets: [G, B, K] target distributions (centred softmax / Sinkhorn) or raw head
                outputs (`train.centering=none`), in crop order.
            teacher_patch_targets: [M, K] targets of the masked patches (when iBOT is on).
        """
        global_crops = batch["collated_global_crops"]  # [G B, 3, S, S]
        device = global_crops.device
        n_images = global_crops.shape[0] // self.n_global_crops
        with self.compute_context("teacher", "backbone", device):
            backbone_out = self.teacher["backbone"](global_crops, is_training=True)
        teacher_cls = backbone_out["x_norm_clstoken"]  # [G B, D]
        patch_tokens = backbone_out["x_norm_patchtokens"]  # [G B, P, D]
        masked_patches = patch_tokens.flatten(0, 1).index_select(0, batch["mask_indices_list"])  # [M, D]
        if not self.use_ibot:
            masked_patches = masked_patches[:0]
        cls_logits, patch_logits = self._head_logits("teacher", teacher_cls, masked_patches, device)
        cls_logits, patch_logits = cls_logits.float(), patch_logits.float()  # [G B, K], [M, K]

        targets: Tensors = {"teacher_cls": teacher_cls.float().unflatten(0, (self.n_global_crops, n_images))}
        if self.use_dino:
            targets["teacher_cls_targets"] = self._postprocess("dino", cls_logits, teacher_temp=teacher_temp).unflatten(
                0, (self.n_global_crops, n_images)
            )
        if self.use_ibot:
            targets["teacher_patch_targets"] = self._postprocess(
                "ibot", patch_logits, teacher_temp=teacher_temp, n_masked_patches=batch["n_masked_patches"]
            )
        return targets

    def _postprocess(
        self,
        which: Literal["dino", "ibot"],
        logits: Tensor,
        *,
        teacher_temp: float,
        n_masked_patches: Tensor | None = None,
    ) -> Tensor:
        """Teacher logits [N, K] -> targets [N, K] according to `train.centering`."""
        if self.centering == "none":
            return logits
        if which == "dino":
            if self.centering == "centering":
                self._accumulate_center_rows("dino", logits)
                return self.dino_loss.softmax_center_teacher(logits, teacher_temp)
            return self.dino_loss.sinkhorn_knopp_teacher(logits, teacher_temp)
        if self.centering == "centering":
            self._accumulate_center_rows("ibot", logits)
            return self.ibot_patch_loss.softmax_center_teacher(logits.unsqueeze(0), teacher_temp).squeeze(0)
        assert n_masked_patches is not None, "Sinkhorn on patches needs the masked-patch count"
        return self.ibot_patch_loss.sinkhorn_knopp_teacher(logits, teacher_temp, n_masked_patches.clone())

    def _accumulate_center_rows(self, which: Literal["dino", "ibot"], logits: Tensor) -> None:
        """Add the fp32 row sum [1, K] and the row count of teacher logits [N, K] to the running totals."""
        row_sum = logits.float().sum(dim=0, keepdim=True)
        if which in self._center_row_sums:
            previous_sum, previous_rows = self._center_row_sums[which]
            self._center_row_sums[which] = (previous_sum + row_sum, previous_rows + logits.shape[0])
        else:
            self._center_row_sums[which] = (row_sum, logits.shape[0])

    def update_centers(self) -> None:
        """Start one centre update from the teacher rows of all micro-batches since the last call (one per step)."""
        if "dino" in self._center_row_sums:
            self.dino_loss.update_center_from_sum(*self._center_row_sums["dino"])
        if "ibot" in self._center_row_sums:
            self.ibot_patch_loss.update_center_from_sum(*self._center_row_sums["ibot"])
        self._center_row_sums = {}

    def apply_center_updates(self) -> None:
        """Fold pending centre updates into the centre buffers (before a checkpoint is written)."""
        if self.use_dino and self.centering == "centering":
            self.dino_loss.apply_center_update()
        if self.use_ibot and self.centering == "centering":
            self.ibot_patch_loss.apply_center_update()

    def student_forward(self, batch: Batch) -> Tensors:
        """Student forward: masked global crops and local crops in one backbone call, one head call.

        Returns:
            student_global_cls: [G, B, D] backbone CLS tokens of the (masked) global crops.
            student_global_logits: [G, B, K]; student_local_logits: [L, B, K];
            student_masked_patch_logits: [M, K'].
        """
        global_crops = batch["collated_global_crops"]  # [G B, 3, S, S]
        local_crops = batch["collated_local_crops"]  # [L B, 3, s, s]
        device = global_crops.device
        n_images = global_crops.shape[0] // self.n_global_crops
        crops = [global_crops, local_crops] if self.n_local_crops > 0 else [global_crops]
        masks = [batch["collated_masks"], None] if self.n_local_crops > 0 else [batch["collated_masks"]]
        with self.compute_context("student", "backbone", device):
            outputs = self.student["backbone"](crops, masks=masks, is_training=True)
        global_out = outputs[0]
        global_cls = global_out["x_norm_clstoken"]  # [G B, D]
        local_cls = outputs[1]["x_norm_clstoken"] if self.n_local_crops > 0 else global_cls[:0]  # [L B, D]
        masked_patches = global_out["x_norm_patchtokens"].flatten(0, 1).index_select(0, batch["mask_indices_list"])
        if not self.use_ibot:
            masked_patches = masked_patches[:0]  # [M, D]
        cls_logits, patch_logits = self._head_logits(
            "student", torch.cat([local_cls, global_cls]), masked_patches, device
        )
        local_logits, global_logits = cls_logits.float().split([local_cls.shape[0], global_cls.shape[0]])
        return {
            "student_global_cls": global_cls.float().unflatten(0, (self.n_global_crops, n_images)),
            "student_global_logits": global_logits.unflatten(0, (self.n_global_crops, n_images)),
            "student_local_logits": local_logits.unflatten(0, (self.n_local_crops, n_images)),
            "student_masked_patch_logits": patch_logits.float(),
        }

    def compute_losses(self, *, student: Tensors, teacher: Tensors, batch: Batch) -> tuple[Tensors, Tensors]:
        """Unweighted loss terms (weighted by `self.loss_weights`) and extra detached diagnostics.

        DINO (official DINOv2): the T = G·L + G·(G-1) cross-view cross-entropies are averaged; the global term
        pairs student crop A with teacher crop B (the teacher crops are swapped) and is computed over the
        G·B rows at once, hence the factor G.
        """
        terms: Tensors = {}
        n_local_terms = max(self.n_local_crops * self.n_global_crops, 1)
        n_global_terms = (self.n_global_crops - 1) * self.n_global_crops
        n_dino_terms = n_local_terms + n_global_terms
        if self.use_dino:
            teacher_swapped = teacher["teacher_cls_targets"].flip(0)  # [G, B, K]: crop c holds crop G-1-c
            if self.n_local_crops > 0:
                terms["dino_local_crops_loss"] = (
                    self.dino_loss(list(student["student_local_logits"].unbind(0)), list(teacher_swapped.unbind(0)))
                    / n_dino_terms
                )
            terms["dino_global_crops_loss"] = (
                self.dino_loss([student["student_global_logits"].flatten(0, 1)], [teacher_swapped.flatten(0, 1)])
                * self.n_global_crops
                / n_dino_terms
            )
        if self.use_koleo:
            terms["koleo_loss"] = sum(self.koleo_loss(cls) for cls in student["student_global_cls"].unbind(0))  # type: ignore[assignment]
        if self.use_ibot:
            terms["ibot_loss"] = self.ibot_patch_loss.forward_masked(
                student["student_masked_patch_logits"],
                teacher["teacher_patch_targets"],
                student_masks_flat=batch["collated_masks"],
                n_masked_patches=batch["mask_indices_list"].shape[0],
                masks_weight=batch["masks_weight"],
            )
        return terms, {}

    def forward_backward(
        self,
        batch: Batch,
        teacher_temp: float,
        *,
        loss_scale: float = 1.0,
        update_centers: bool = True,
        compute_feature_stats: bool = False,
    ) -> tuple[Tensor, Tensors]:
        """One forward and backward pass on a (micro-)batch already on the device.

        Args:
            batch: the collated batch (`collated_global_crops` [G B, 3, S, S], `collated_local_crops`
                [L B, 3, s, s], `collated_masks` [G B, P], `mask_indices_list` [M], `masks_weight` [M],
                `n_masked_patches` [1], `upperbound`).
            teacher_temp: teacher softmax temperature of this iteration.
            loss_scale: the backward pass uses `loss_scale * total` (1 / grad_accum_steps).
            update_centers: start the centering EMA update from all micro-batches of this step (last one).
            compute_feature_stats: add `teacher_cls_effective_rank` to the metrics (log iterations).

        Returns:
            `(total_loss, metrics)`: the detached optimised loss and a dict of detached scalars (every
            unweighted term, `total_loss` and diagnostics).
        """
        teacher = self.teacher_targets(batch, teacher_temp=teacher_temp)
        if self.is_sharded:
            # The teacher never runs backward: free its gathered parameters now, so that the next forward
            # gathers the EMA-updated shards (done here so that overrides of teacher_targets need not).
            reshard_(self.teacher)
        student = self.student_forward(batch)
        terms, diagnostics = self.compute_losses(student=student, teacher=teacher, batch=batch)
        teacher_cls = teacher["teacher_cls"] if compute_feature_stats else None
        # Autograd keeps what backward needs (log-softmax outputs, the targets the cross-entropy multiplies);
        # the student logits themselves, [(2 + L) B + M, K] fp32, are not among it: drop the dicts before
        # backward so that the logits are freed instead of living through it.
        del student, teacher
        assert set(terms) == set(self.loss_weights), (
            f"loss terms {sorted(terms)} != weights {sorted(self.loss_weights)}"
        )
        total_loss = sum(self.loss_weights[name] * term for name, term in terms.items())
        assert isinstance(total_loss, Tensor), "at least one loss term is always active"
        self.backward(total_loss * loss_scale)
        if update_centers:
            self.update_centers()
        metrics = {name: term.detach() for name, term in terms.items()}
        metrics.update({name: value.detach() for name, value in diagnostics.items()})
        metrics["total_loss"] = total_loss.detach()
        if teacher_cls is not None:
            metrics["teacher_cls_effective_rank"] = effective_rank(teacher_cls.flatten(0, 1))
        return total_loss.detach(), metrics

    def backward(self, loss: Tensor) -> None:
        """`loss.backward()`, through the gradient scaler when one is attached (fp16)."""
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
        else:
            loss.backward()

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze / release the student backbone (`student.freeze_backbone_epochs`: heads learn first).

        Frozen: its parameters do not require grad (no gradient, so the optimizer skips them and keeps no
        state for them) and `update_teacher` leaves the teacher backbone alone, so both backbones stay
        bit-identical to the weights they started from. Called every iteration; acts on a change only.
        """
        if frozen == self.backbone_frozen:
            return
        for param in self.student["backbone"].parameters():
            param.requires_grad = not frozen
        self.backbone_frozen = frozen
        logger.info("student backbone %s", "frozen: only the heads train" if frozen else "released: all of it trains")

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA on local shards: `teacher <- momentum * teacher + (1 - momentum) * student` (fp32 masters).

        The backbone is skipped while it is frozen (`set_backbone_frozen`).
        """
        for key in self.student.keys():
            if key == "backbone" and self.backbone_frozen:
                continue
            teacher_params = [local_tensor(p) for p in self.teacher[key].parameters()]
            student_params = [local_tensor(p) for p in self.student[key].parameters()]
            torch._foreach_mul_(teacher_params, momentum)
            torch._foreach_add_(teacher_params, student_params, alpha=1 - momentum)
