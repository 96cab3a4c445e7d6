"""Type and allowed values of every key of `ssl_default_config.yaml`, checked by `dinov2.utils.config.load_config`.

`SCHEMA` maps each dotted key to a rule; after the defaults, the recipe and the command line are merged, every
leaf value is checked against its rule, and all offending keys are reported at once with the value and what is
allowed, before anything is built. Example: `train.batch_size_per_gpu=-4` fails with
`train.batch_size_per_gpu=-4: expected an integer >= 1`.

Adding a config key is two one-line changes: the key with its default and a comment in
`ssl_default_config.yaml`, and its rule here, e.g.

    "optim.clip_grad_end": Float(min=0),
    "student.pretrained_img_size": Nullable(Int(min=1)),
    "compile": Bool(),

A key of the defaults without a rule makes every config load fail with a message naming the key
(tests/dinov2/utils/test_config_schema.py checks that the two lists are equal).

Rules: `Int(min, max)` (an int, not a bool), `Float(min, max, min_open, max_open)` (an int or float, finite),
`Bool()`, `Str()`, `OneOf(*values)` (equal value of the same type), `Nullable(rule)` (null or the rule),
`List(rule, length, ascending)`. Dataset strings are `Str()`: `dinov2.data.parse_dataset_str` validates them.
"""

import math
from typing import Any, get_args

from dinov2.fsdp import PrecisionName, ShardingStrategy
from dinov2.models.vision_transformer import ARCHS, FFN_LAYERS


def _bound(symbol: str, value: float) -> str:
    return f"{symbol} {value:g}"


class Rule:
    """A set of allowed values: `accepts(value)` and a phrase for error messages, `describe()`."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class Int(Rule):
    def __init__(self, *, min: int | None = None, max: int | None = None) -> None:
        self.min, self.max = min, max

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, int) or isinstance(value, bool):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        lower = [_bound(">=", self.min)] if self.min is not None else []
        upper = [_bound("<=", self.max)] if self.max is not None else []
        return " ".join(["an integer", *lower, *upper])


class Float(Rule):
    def __init__(
        self, *, min: float | None = None, max: float | None = None, min_open: bool = False, max_open: bool = False
    ) -> None:
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return False
        above = self.min is None or (value > self.min if self.min_open else value >= self.min)
        below = self.max is None or (value < self.max if self.max_open else value <= self.max)
        return above and below

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            left, right = "(" if self.min_open else "[", ")" if self.max_open else "]"
            return f"a number in {left}{self.min:g}, {self.max:g}{right}"
        if self.min is not None:
            return "a number " + _bound(">" if self.min_open else ">=", self.min)
        if self.max is not None:
            return "a number " + _bound("<" if self.max_open else "<=", self.max)
        return "a finite number"


class Bool(Rule):
    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"


class Str(Rule):
    def accepts(self, value: Any) -> bool:
        return isinstance(value, str)

    def describe(self) -> str:
        return "a string"


class OneOf(Rule):
    def __init__(self, *values: Any) -> None:
        self.values = values

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(allowed) and value == allowed for allowed in self.values)

    def describe(self) -> str:
        return f"one of {list(self.values)}"


class Nullable(Rule):
    def __init__(self, rule: Rule) -> None:
        self.rule = rule

    def accepts(self, value: Any) -> bool:
        return value is None or self.rule.accepts(value)

    def describe(self) -> str:
        return f"null or {self.rule.describe()}"


class List(Rule):
    def __init__(self, rule: Rule, *, length: int | None = None, ascending: bool = False) -> None:
        self.rule, self.length, self.ascending = rule, length, ascending

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, list) or (self.length is not None and len(value) != self.length):
            return False
        if not all(self.rule.accepts(item) for item in value):
            return False
        return not self.ascending or all(a <= b for a, b in zip(value[:-1], value[1:], strict=True))

    def describe(self) -> str:
        size = f"{self.length} " if self.length is not None else ""
        order = ", in ascending order" if self.ascending else ""
        return f"a list of {size}items, each {self.rule.describe()}{order}"


PROBABILITY = Float(min=0, max=1)
CROP_SCALE = List(Float(min=0, max=1, min_open=True), length=2, ascending=True)
_MODULES = [f"{model}.{part}" for model in ("teacher", "student") for part in ("backbone", "dino_head", "ibot_head")]
_PRECISION = OneOf(*get_args(PrecisionName))

SCHEMA: dict[str, Rule] = {
    "MODEL.WEIGHTS": Str(),
    "compile": Bool(),
    "compute_precision.grad_scaler": Bool(),
    **{f"compute_precision.{module}.sharding_strategy": OneOf(*get_args(ShardingStrategy)) for module in _MODULES},
    **{f"compute_precision.{module}.mixed_precision.param_dtype": _PRECISION for module in _MODULES},
    **{f"compute_precision.{module}.mixed_precision.reduce_dtype": _PRECISION for module in _MODULES},
    **{f"compute_precision.{module}.mixed_precision.buffer_dtype": _PRECISION for module in _MODULES},
    "dino.loss_weight": Float(min=0),
    "dino.head_n_prototypes": Int(min=1),
    "dino.head_bottleneck_dim": Int(min=1),
    "dino.head_nlayers": Int(min=1),
    "dino.head_hidden_dim": Int(min=1),
    "dino.koleo_loss_weight": Float(min=0),
    "dino.use_mcr": Bool(),
    "dino.remove_last_layer": Bool(),
    "dino.head_normalize": Bool(),
    "dino.mcr.eps": Float(min=0, min_open=True),
    "dino.mcr.coeff": Float(min=0),
    "dino.mcr.expa_type": OneOf(0, 1),
    "dino.mcr.reduce_cov": OneOf(0, 1),
    "dino.mcr.gamma_rule": OneOf("official", "theorem"),
    "dino.mcr.eps_end": Nullable(Float(min=0, min_open=True)),
    "dino.mcr.coeff_end": Nullable(Float(min=0)),
    "ibot.loss_weight": Float(min=0),
    "ibot.loss_weight_end": Nullable(Float(min=0)),
    "ibot.loss_weight_warmup_epochs": Int(min=0),
    "ibot.loss_weight_freeze_epochs": Int(min=0),
    "ibot.mask_sample_probability": PROBABILITY,
    "ibot.mask_ratio_min_max": List(PROBABILITY, length=2, ascending=True),
    "ibot.separate_head": Bool(),
    "ibot.head_n_prototypes": Int(min=1),
    "ibot.head_bottleneck_dim": Int(min=1),
    "ibot.head_nlayers": Int(min=1),
    "ibot.head_hidden_dim": Int(min=1),
    "ibot.use_mcr": Bool(),
    "ibot.remove_last_layer": Bool(),
    "ibot.head_normalize": Bool(),
    "train.batch_size_per_gpu": Int(min=1),
    "train.grad_accum_steps": Int(min=1),
    "train.dataset_path": Str(),
    "train.output_dir": Str(),
    "train.seed": Int(min=0),
    "train.num_workers": Int(min=0),
    "train.OFFICIAL_EPOCH_LENGTH": Int(),
    "train.centering": OneOf("centering", "sinkhorn_knopp", "none"),
    "train.max_bad_image_fraction": PROBABILITY,
    "train.log_period_iterations": Int(min=1),
    "student.arch": OneOf(*sorted(ARCHS)),
    "student.depth": Nullable(Int(min=1)),
    "student.patch_size": Int(min=1),
    "student.drop_path_rate": Float(min=0, max=1, max_open=True),
    "student.layerscale": Nullable(Float(min=0)),
    "student.drop_path_uniform": Bool(),
    "student.pretrained_weights": Str(),
    "student.pretrained_img_size": Nullable(Int(min=1)),
    "student.pretrained_patch_size": Nullable(Int(min=1)),
    "student.freeze_backbone_epochs": Int(min=0),
    "student.ffn_layer": OneOf(*FFN_LAYERS),
    "student.block_chunks": Int(min=0),
    "student.qkv_bias": Bool(),
    "student.proj_bias": Bool(),
    "student.ffn_bias": Bool(),
    "student.num_register_tokens": Int(min=0),
    "student.interpolate_antialias": Bool(),
    "student.interpolate_offset": Float(min=0),
    "student.gradient_checkpointing": Bool(),
    "teacher.momentum_teacher": PROBABILITY,
    "teacher.final_momentum_teacher": PROBABILITY,
    "teacher.warmup_teacher_temp": Float(min=0, min_open=True),
    "teacher.teacher_temp": Float(min=0, min_open=True),
    "teacher.warmup_teacher_temp_epochs": Int(min=0),
    "optim.epochs": Int(min=1),
    "optim.weight_decay": Float(min=0),
    "optim.weight_decay_end": Float(min=0),
    "optim.base_lr": Float(min=0),
    "optim.lr": Float(min=0),
    "optim.warmup_epochs": Int(min=0),
    "optim.peak_epochs": Int(min=0),
    "optim.min_lr": Float(min=0),
    "optim.warmup_start_lr": Float(min=0),
    "optim.clip_grad": Float(min=0),
    "optim.clip_grad_end": Nullable(Float(min=0, min_open=True)),
    "optim.freeze_last_layer_epochs": Int(min=0),
    "optim.scaling_rule": OneOf("sqrt_wrt_1024", "linear_wrt_1024"),
    "optim.patch_embed_lr_mult": Float(min=0),
    "optim.layerwise_decay": Float(min=0, max=1, min_open=True),
    "optim.adamw_beta1": Float(min=0, max=1, max_open=True),
    "optim.adamw_beta2": Float(min=0, max=1, max_open=True),
    "crops.global_crops_scale": CROP_SCALE,
    "crops.local_crops_number": Int(min=0),
    "crops.local_crops_scale": CROP_SCALE,
    "crops.global_crops_size": Int(min=1),
    "crops.local_crops_size": Int(min=1),
    "crops.global_crops_1_blur_prob": PROBABILITY,
    "crops.global_crops_2_blur_prob": PROBABILITY,
    "crops.local_crops_blur_prob": PROBABILITY,
    "evaluation.eval_period_iterations": Int(min=0),
    "checkpointing.period_iterations": Int(min=0),
    "checkpointing.max_to_keep": Int(min=1),
}
