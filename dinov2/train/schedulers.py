"""Per-iteration schedules, precomputed as arrays (official DINOv2 `CosineScheduler`), and the set a run uses.

`build_schedulers(cfg, lr=..., epoch_length=E)` returns `Schedules`: the five DINOv2 schedules (lr, weight
decay, teacher momentum, teacher temperature, last-layer lr) and the ones the SimDINO release names in its
config (gradient-clip threshold, iBOT loss weight, coding-rate eps and coeff). Every value is a pure
function of the iteration and the config, so a resumed run continues each schedule exactly.
"""

import dataclasses
import math

import numpy as np
from omegaconf import DictConfig

from dinov2.utils.config import ConfigError


class CosineScheduler:
    """`[0] * freeze_iters ++ linspace(start_warmup_value, base, warmup_iters) ++ [base] * peak_iters ++ cosine`.

    The warm-up includes its endpoint (the last warm-up iteration already has the value `base`), as
    official DINOv2. The cosine part over `n = total - freeze - warmup - peak` iterations is
    `final + 0.5 (base - final) (1 + cos(pi i / n))` for `i = 0 .. n - 1`, so it never quite reaches
    `final` inside the range; indexing at or past `total_iters` returns `final`.
    `peak_iters` holds `base` after the warm-up (SimDINO's `optim.peak_epochs` plateau).
    `zero_first_iters` overwrites the first entries with 0 without shifting the rest (official DINOv2's
    last-layer freeze: a copy of the lr schedule whose first `freeze_last_layer_epochs * E` values are 0).
    """

    def __init__(
        self,
        *,
        base_value: float,
        final_value: float,
        total_iters: int,
        warmup_iters: int = 0,
        start_warmup_value: float = 0.0,
        freeze_iters: int = 0,
        peak_iters: int = 0,
        zero_first_iters: int = 0,
    ) -> None:
        if warmup_iters + freeze_iters + peak_iters > total_iters:
            raise ValueError(
                f"warm-up ({warmup_iters}) + freeze ({freeze_iters}) + plateau ({peak_iters}) iterations exceed the "
                f"{total_iters} total iterations; shorten optim.warmup_epochs / optim.peak_epochs / "
                "teacher.warmup_teacher_temp_epochs / optim.freeze_last_layer_epochs / ibot.loss_weight_warmup_epochs "
                "/ ibot.loss_weight_freeze_epochs or raise optim.epochs"
            )
        self.final_value = final_value
        self.total_iters = total_iters
        freeze = np.zeros(freeze_iters)
        warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
        plateau = np.full(peak_iters, float(base_value))
        n_cosine = total_iters - warmup_iters - freeze_iters - peak_iters
        steps = np.arange(n_cosine)
        cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(math.pi * steps / max(n_cosine, 1)))
        self.schedule = np.concatenate((freeze, warmup, plateau, cosine))
        self.schedule[:zero_first_iters] = 0.0
        assert len(self.schedule) == total_iters, "schedule length must equal total_iters"

    def __getitem__(self, it: int) -> float:
        if it >= self.total_iters:
            return self.final_value
        return float(self.schedule[it])


@dataclasses.dataclass(frozen=True)
class Schedules:
    """Every per-iteration value of a run (index with the iteration).

    `mcr_eps` / `mcr_coeff` exist only with the coding-rate objective (`dino.use_mcr`).
    """

    lr: CosineScheduler
    wd: CosineScheduler
    momentum: CosineScheduler
    teacher_temp: CosineScheduler
    last_layer_lr: CosineScheduler
    clip_grad: CosineScheduler
    ibot_loss_weight: CosineScheduler
    mcr_eps: CosineScheduler | None
    mcr_coeff: CosineScheduler | None

    def loss_parameters(self, it: int) -> dict[str, float]:
        """Keyword arguments of `SSLMetaArch.set_loss_parameters` at iteration `it` (also logged as metrics)."""
        values = {"ibot_loss_weight": self.ibot_loss_weight[it]}
        if self.mcr_eps is not None and self.mcr_coeff is not None:
            values.update(mcr_eps=self.mcr_eps[it], mcr_coeff=self.mcr_coeff[it])
        return values


def _cosine_to_end(base: float, end: float | None, total: int) -> CosineScheduler:
    # `end: null` keeps the value constant (the official -1 sentinel is mapped to null by tools/import_config.py).
    return CosineScheduler(base_value=base, final_value=base if end is None else end, total_iters=total)


def _check_schedule_keys(cfg: DictConfig) -> None:
    # Single values are checked by the schema at load time (dinov2/configs/schema.py); these are combinations.
    mcr, ibot, optim = cfg.dino.mcr, cfg.ibot, cfg.optim
    if (mcr.eps_end is not None or mcr.coeff_end is not None) and not cfg.dino.use_mcr:
        raise ConfigError(
            "dino.mcr.eps_end / dino.mcr.coeff_end schedule the coding-rate loss, which dino.use_mcr=false does not "
            "use; set them to null or dino.use_mcr=true"
        )
    if optim.clip_grad_end is not None and not optim.clip_grad > 0:
        raise ConfigError(
            f"optim.clip_grad_end={optim.clip_grad_end} with optim.clip_grad={optim.clip_grad}: optim.clip_grad=0 "
            "disables clipping, so there is no threshold to schedule; set optim.clip_grad_end=null or clip_grad > 0"
        )
    scheduled = ibot.loss_weight_end is not None or ibot.loss_weight_warmup_epochs or ibot.loss_weight_freeze_epochs
    if scheduled and not ibot.loss_weight > 0:
        raise ConfigError(
            f"ibot.loss_weight={ibot.loss_weight} turns iBOT off, so its schedule keys (loss_weight_end, "
            "loss_weight_warmup_epochs, loss_weight_freeze_epochs) have nothing to schedule; set ibot.loss_weight > 0"
        )


def build_schedulers(cfg: DictConfig, *, lr: float, epoch_length: int) -> Schedules:
    """The schedules of a run over `optim.epochs * epoch_length` iterations (E = epoch_length).

    lr: linear warm-up from `optim.warmup_start_lr` over `warmup_epochs * E`, `peak_epochs * E` at `lr`,
    cosine to `min_lr`; last-layer lr: the same with the first `freeze_last_layer_epochs * E` values 0;
    wd and teacher momentum: cosine; teacher temperature: linear warm-up then constant; gradient-clip
    threshold, coding-rate eps and coeff: cosine from `optim.clip_grad` / `dino.mcr.eps` / `dino.mcr.coeff`
    to the `*_end` key (constant when it is null); iBOT weight: 0 for `loss_weight_freeze_epochs * E`, linear
    0 -> `ibot.loss_weight` over `loss_weight_warmup_epochs * E`, cosine to `loss_weight_end` (constant when
    null). Raises ConfigError naming a key whose value cannot be honoured.
    """
    _check_schedule_keys(cfg)
    total = cfg.optim.epochs * epoch_length
    lr_args = dict(
        base_value=lr,
        final_value=cfg.optim.min_lr,
        total_iters=total,
        warmup_iters=cfg.optim.warmup_epochs * epoch_length,
        start_warmup_value=cfg.optim.warmup_start_lr,
        peak_iters=cfg.optim.peak_epochs * epoch_length,
    )
    teacher_warmup = cfg.teacher.warmup_teacher_temp_epochs * epoch_length
    ibot = cfg.ibot
    use_mcr = cfg.dino.use_mcr
    return Schedules(
        lr=CosineScheduler(**lr_args),
        wd=CosineScheduler(
            base_value=cfg.optim.weight_decay, final_value=cfg.optim.weight_decay_end, total_iters=total
        ),
        momentum=CosineScheduler(
            base_value=cfg.teacher.momentum_teacher,
            final_value=cfg.teacher.final_momentum_teacher,
            total_iters=total,
        ),
        teacher_temp=CosineScheduler(
            base_value=cfg.teacher.teacher_temp,
            final_value=cfg.teacher.teacher_temp,
            total_iters=teacher_warmup,
            warmup_iters=teacher_warmup,
            start_warmup_value=cfg.teacher.warmup_teacher_temp,
        ),
        last_layer_lr=CosineScheduler(**lr_args, zero_first_iters=cfg.optim.freeze_last_layer_epochs * epoch_length),
        clip_grad=_cosine_to_end(cfg.optim.clip_grad, cfg.optim.clip_grad_end, total),
        ibot_loss_weight=CosineScheduler(
            base_value=ibot.loss_weight,
            final_value=ibot.loss_weight if ibot.loss_weight_end is None else ibot.loss_weight_end,
            total_iters=total,
            warmup_iters=ibot.loss_weight_warmup_epochs * epoch_length,
            freeze_iters=ibot.loss_weight_freeze_epochs * epoch_length,
        ),
        mcr_eps=_cosine_to_end(cfg.dino.mcr.eps, cfg.dino.mcr.eps_end, total) if use_mcr else None,
        mcr_coeff=_cosine_to_end(cfg.dino.mcr.coeff, cfg.dino.mcr.coeff_end, total) if use_mcr else None,
    )
