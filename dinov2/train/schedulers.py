"""Per-iteration schedules, precomputed as arrays (official DINOv2 `CosineScheduler`)."""

import math

import numpy as np


class CosineScheduler:
    """`[0] * freeze_iters ++ linspace(start_warmup_value, base, warmup_iters) ++ cosine(base -> final)`.

    The warm-up includes its endpoint (the last warm-up iteration already has the value `base`), as
    official DINOv2. The cosine part over `n = total - warmup - freeze` iterations is
    `final + 0.5 (base - final) (1 + cos(pi i / n))` for `i = 0 .. n - 1`, so it never quite reaches
    `final` inside the range; indexing at or past `total_iters` returns `final`.
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
        zero_first_iters: int = 0,
    ) -> None:
        if warmup_iters + freeze_iters > total_iters:
            raise ValueError(
                f"warm-up ({warmup_iters}) + freeze ({freeze_iters}) iterations exceed the {total_iters} total "
                "iterations; shorten optim.warmup_epochs / teacher.warmup_teacher_temp_epochs / "
                "optim.freeze_last_layer_epochs or raise optim.epochs"
            )
        self.final_value = final_value
        self.total_iters = total_iters
        freeze = np.zeros(freeze_iters)
        warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
        n_cosine = total_iters - warmup_iters - freeze_iters
        steps = np.arange(n_cosine)
        cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(math.pi * steps / max(n_cosine, 1)))
        self.schedule = np.concatenate((freeze, warmup, cosine))
        self.schedule[:zero_first_iters] = 0.0
        assert len(self.schedule) == total_iters, "schedule length must equal total_iters"

    def __getitem__(self, it: int) -> float:
        if it >= self.total_iters:
            return self.final_value
        return float(self.schedule[it])
