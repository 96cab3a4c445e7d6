"""Translate an official DINOv2 / SimDINOv2 YAML config (or SimDINO v1's arguments) into a config of ours.

    python tools/import_config.py --upstream simdinov2 simdino_config.yaml --epoch-length 1251 > ours.yaml
    python tools/import_config.py --upstream dinov2 vitl14.yaml > ours.yaml
    python tools/import_config.py --upstream simdino_v1 args.yaml --epoch-length 2502 > ours.yaml
    python tools/train.py --config-file ours.yaml --output-dir runs/imported

`--upstream` names the code base the file was written for, i.e. the defaults it was merged over:
`dinov2` (official DINOv2 `ssl_default_config.yaml`, the same defaults as ours), `simdinov2` (the SimDINO
release's `ssl_default_config.yaml`, whose changed defaults are applied first: crops 0.4-1 / 10 x 0.05-0.4,
4 registers, antialiased position embedding, 4 block chunks, batch 128, epoch = dataset / batch, fixed blur
probabilities, warm-up from `min_lr`), or `simdino_v1` (a YAML mapping of the argument names of SimDINO v1's
`main_dino.py`, as printed in its log, for the ViT it defines).

Every upstream key is mapped to ours, or dropped with the reason (unused upstream, unsafe, replaced), or
refused when its value cannot be honoured here (exit status 2, message naming the key). The result is
printed as YAML with the dropped keys and notes as comments; the same notes go to stderr. Keys that are the
same in both code bases are copied; the result loads with the strict loader (unknown keys are errors).
"""

import argparse
import dataclasses
import os
import sys
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from omegaconf import DictConfig, ListConfig, OmegaConf  # noqa: E402

from dinov2.configs import load_packaged_config  # noqa: E402

UPSTREAM_FLAVOURS = ("dinov2", "simdinov2", "simdino_v1")

# Defaults of the SimDINO release's ssl_default_config.yaml that differ from DINOv2's (ours), plus what its
# code does differently at the same key: blur probabilities applied as intended, lr warm-up from min_lr.
SIMDINO_DEFAULTS: dict[str, Any] = {
    "crops.global_crops_scale": [0.4, 1.0],
    "crops.local_crops_number": 10,
    "crops.local_crops_scale": [0.05, 0.4],
    "crops.global_crops_1_blur_prob": 1.0,
    "crops.global_crops_2_blur_prob": 0.1,
    "crops.local_crops_blur_prob": 0.5,
    "student.block_chunks": 4,
    "student.num_register_tokens": 4,
    "student.interpolate_antialias": True,
    "student.interpolate_offset": 0.0,
    "train.batch_size_per_gpu": 128,
    "train.OFFICIAL_EPOCH_LENGTH": -1,
    "compile": True,
}
SIMDINO_DEFAULT_EVAL_PERIOD_EPOCHS = 10

# SimDINO v1 (main_dino.py) builds a DINO-v1 ViT and a head without prototype layer; these follow from the code,
# not from any argument.
SIMDINO_V1_STRUCTURE: dict[str, Any] = {
    "student.num_register_tokens": 0,
    "student.layerscale": 0,
    "student.interpolate_antialias": False,
    "student.interpolate_offset": 0.1,
    "student.drop_path_uniform": False,
    "dino.use_mcr": True,
    "dino.loss_weight": 1.0,
    "dino.remove_last_layer": True,
    "dino.head_nlayers": 3,
    "dino.koleo_loss_weight": 0.0,
    "ibot.use_mcr": True,
    "ibot.loss_weight": 0.0,
    "ibot.mask_sample_probability": 0.0,
    "ibot.remove_last_layer": True,
    "train.centering": "none",
    "train.OFFICIAL_EPOCH_LENGTH": -1,
    "teacher.final_momentum_teacher": 1.0,
    "optim.freeze_last_layer_epochs": 0,
    "optim.scaling_rule": "linear_wrt_1024",
    "optim.layerwise_decay": 1.0,
    "optim.patch_embed_lr_mult": 1.0,
    "optim.warmup_start_lr": 0.0,
    "crops.global_crops_1_blur_prob": 1.0,
    "crops.global_crops_2_blur_prob": 0.1,
    "crops.local_crops_blur_prob": 0.5,
}

PRECISION_FIELDS = [
    f"compute_precision.{role}.{key}.mixed_precision.{field}"
    for role in ("student", "teacher")
    for key in ("backbone", "dino_head", "ibot_head")
    for field in ("param_dtype", "reduce_dtype")
]


class ImportRefused(ValueError):
    """An upstream key holds a value this code base cannot honour (the message names the key)."""


@dataclasses.dataclass
class Translation:
    """What the import produced: our keys (dotted) and the notes on dropped / replaced upstream keys."""

    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    epoch_length: int | None = None  # --epoch-length
    default_epoch_length: int = 1250  # our train.OFFICIAL_EPOCH_LENGTH default

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value

    def drop(self, key: str, value: Any, reason: str) -> None:
        self.notes.append(f"dropped {key}={value!r}: {reason}")

    def note(self, text: str) -> None:
        self.notes.append(text)

    def iterations(self, key: str, epochs: int) -> int:
        """`epochs` in iterations, for the epoch-based upstream key `key`."""
        epoch_length = self.values.get("train.OFFICIAL_EPOCH_LENGTH", self.default_epoch_length)
        if epoch_length > 0:
            return epochs * epoch_length
        if self.epoch_length is None:
            raise ImportRefused(
                f"{key}={epochs} is in epochs but train.OFFICIAL_EPOCH_LENGTH <= 0 (len(dataset) // batch): pass "
                "--epoch-length E, e.g. 1251 for ImageNet-1k at global batch 1024, 2502 at 512"
            )
        return epochs * self.epoch_length


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {dotted key: leaf}; lists are leaves."""
    if isinstance(node, (dict, DictConfig)):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    if isinstance(node, ListConfig):
        node = OmegaConf.to_container(node)
    return {prefix[:-1]: node}


def _minus_one_is_null(value: Any) -> Any:
    # The official code marks "no schedule" with -1 (and tests `> 0`); ours uses null.
    return None if value is None or value <= 0 else value


def _refuse_unless(condition: bool, key: str, value: Any, reason: str) -> None:
    if not condition:
        raise ImportRefused(f"{key}={value!r} cannot be honoured: {reason}")


Handler = Callable[[Translation, str, Any], None]


def _same(t: Translation, key: str, value: Any) -> None:
    t.set(key, value)


def _to(our_key: str, convert: Callable[[Any], Any] = lambda v: v) -> Handler:
    def handler(t: Translation, key: str, value: Any) -> None:
        t.set(our_key, convert(value))

    return handler


def _dropped(reason: str) -> Handler:
    def handler(t: Translation, key: str, value: Any) -> None:
        t.drop(key, value, reason)

    return handler


def _dropped_if(default: Any, reason: str, refusal: str) -> Handler:
    """Drop when the value is the no-op `default`, refuse anything else."""

    def handler(t: Translation, key: str, value: Any) -> None:
        _refuse_unless(value == default, key, value, refusal)
        t.drop(key, value, reason)

    return handler


def _train_actions(t: Translation, key: str, value: Any) -> None:
    _refuse_unless(not value, key, value, "it executes Python source from the config (arbitrary code); not supported")
    t.drop(key, value, "empty list of exec'd actions (removed here: arbitrary code execution)")


def _ignore_nan(t: Translation, key: str, value: Any) -> None:
    _refuse_unless(not value, key, value, "training here always stops on a non-finite loss, without applying the step")
    t.drop(key, value, "a non-finite loss always stops training here (upstream: breakpoint, then assert)")


def _optimizer_name(t: Translation, key: str, value: Any) -> None:
    _refuse_unless(value == "adamw", key, value, "only AdamW is implemented (optim.adamw_beta1 / adamw_beta2)")
    t.drop(key, value, "AdamW is the only optimizer here")


def _optimizer_kwargs(t: Translation, key: str, value: Any) -> None:
    kwargs = dict(value or {})
    betas = kwargs.pop("betas", (0.9, 0.999))
    t.set("optim.adamw_beta1", float(betas[0]))
    t.set("optim.adamw_beta2", float(betas[1]))
    if "foreach" in kwargs:
        t.drop(f"{key}.foreach", kwargs.pop("foreach"), "AdamW always runs with foreach=True here (speed only)")
    _refuse_unless(not kwargs, key, value, f"AdamW arguments {sorted(kwargs)} have no key here")


def _eval_period_epochs(t: Translation, key: str, value: Any) -> None:
    t.set("evaluation.eval_period_iterations", t.iterations(key, value) if value > 0 else 0)


def _student_block(t: Translation, key: str, value: Any) -> None:
    _refuse_unless(value in ("nested", "memeff", "base"), key, value, "not an upstream block type")
    t.drop(key, value, "one block implementation here; the student always runs global and local crops in one call")


DINOV2_RULES: dict[str, Handler] = {
    "train.saveckp_freq": _dropped("unused upstream (the checkpoint period is checkpointing.period_iterations)"),
    "train.cache_dataset": _dropped("unused upstream"),
    "train.output_dir": _dropped("set by --output-dir"),
    "optim.lr": _dropped("derived from optim.base_lr by optim.scaling_rule"),
}

SIMDINOV2_RULES: dict[str, Handler] = {
    **DINOV2_RULES,
    "compile": _same,
    "ignore_nan": _ignore_nan,
    "train.recipe": _dropped("only logged upstream"),
    "train.actions": _train_actions,
    "student.block": _student_block,
    "student.rescale_weight": _dropped("unused upstream"),
    "student.pretrained_img_size": _dropped_if(None, "shape only", "building at another image size is not supported"),
    "student.pretrained_patch_size": _dropped_if(None, "shape only", "building at another patch size is not supported"),
    "student.freeze_backbone_epochs": _dropped_if(0, "no freeze", "backbone freezing is not implemented"),
    "student.drop_masks": _dropped_if(False, "off", "MAE-style token dropping is not implemented"),
    "student.attn_drop": _dropped_if(0.0, "no dropout", "attention dropout is not implemented"),
    "student.ffn_drop": _dropped_if(0.0, "no dropout", "FFN dropout is not implemented"),
    "student.qknorm": _dropped_if(False, "off", "q/k normalisation is not implemented"),
    "dino.mcr.expa_loss": _dropped("descriptive only upstream"),
    "dino.mcr.comp_loss": _dropped("descriptive only upstream"),
    "dino.mcr.eps_end": _to("dino.mcr.eps_end", _minus_one_is_null),
    "dino.mcr.coeff_end": _to("dino.mcr.coeff_end", _minus_one_is_null),
    "ibot.mcr.eps": _dropped("ignored by the cosine patch loss upstream"),
    "ibot.mcr.coeff": _dropped("ignored by the cosine patch loss upstream"),
    "ibot.mcr.coeff_end": _dropped("ignored by the cosine patch loss upstream"),
    "ibot.loss_weight_end": _to("ibot.loss_weight_end", _minus_one_is_null),
    "ibot.activate_epochs": _dropped("unused upstream"),
    "optim.opt": _optimizer_name,
    "optim.kwargs": _optimizer_kwargs,
    "optim.schedulefree_kwargs": _dropped("unused upstream"),
    "optim.clip_grad_end": _to("optim.clip_grad_end", _minus_one_is_null),
    "evaluation.eval_period_epochs": _eval_period_epochs,
    "evaluation.img_size": _dropped_if(None, "no eval-time resize", "eval-time position-embedding resizing"),
    "evaluation.patch_size": _dropped_if(None, "no eval-time resize", "eval-time patch-embedding resizing"),
}


def _v1_arch(t: Translation, key: str, value: Any) -> None:
    _refuse_unless(value in ("vit_tiny", "vit_small", "vit_base"), key, value,
                   "only SimDINO v1's own ViTs (vit_tiny / vit_small / vit_base) map onto this backbone")  # fmt: skip
    t.set("student.arch", value)


def _v1_lr(t: Translation, key: str, value: Any) -> None:
    # v1: lr = args.lr * global batch / 256; ours with linear_wrt_1024: base_lr * global batch / 1024.
    t.set("optim.base_lr", value * 1024 / 256)


def _v1_fp16(t: Translation, key: str, value: Any) -> None:
    if value:
        t.note(f"{key}=True: fp16 compute with loss scaling as our defaults (DINOv2's per-submodule settings)")
        return
    for field in PRECISION_FIELDS:
        t.set(field, "fp32")
    t.set("compute_precision.grad_scaler", False)


def _v1_saveckp(t: Translation, key: str, value: Any) -> None:
    t.set("evaluation.eval_period_iterations", t.iterations(key, value))
    t.note(f"{key}={value}: v1's periodic checkpoint (which holds the teacher) becomes the teacher export period")


def _v1_use_simdino(t: Translation, key: str, value: Any) -> None:
    _refuse_unless(bool(value), key, value, "DINO v1 itself: use configs/dino_vitb16.yaml (DINO on this code base)")


def _v1_optimizer(t: Translation, key: str, value: Any) -> None:
    _refuse_unless(value == "adamw", key, value, "only AdamW is implemented")


def _v1_momentum(t: Translation, key: str, value: Any) -> None:
    t.set("teacher.momentum_teacher", value)


def _v1_clip(t: Translation, key: str, value: Any) -> None:
    t.set("optim.clip_grad", value)
    t.note(f"{key}={value}: v1 clips each parameter's gradient; here the norm of each student submodule is clipped")


def _v1_data_path(t: Translation, key: str, value: Any) -> None:
    t.set("train.dataset_path", f"ImageFolder:root={value}")


SIMDINO_V1_RULES: dict[str, Handler] = {
    "arch": _v1_arch,
    "patch_size": _to("student.patch_size"),
    "out_dim": _dropped("unused: SimDINO's head has no prototype layer"),
    "norm_last_layer": _dropped("unused: SimDINO's head has no prototype layer"),
    "momentum_teacher": _v1_momentum,
    "use_bn_in_head": _dropped_if(False, "no batch norm", "batch norm in the head is not implemented"),
    "z_dim": _to("dino.head_bottleneck_dim"),
    "hidden_dim": _to("dino.head_hidden_dim"),
    "use_simdino": _v1_use_simdino,
    "warmup_teacher_temp": _dropped("DINO loss only (no temperature in SimDINO)"),
    "teacher_temp": _dropped("DINO loss only (no temperature in SimDINO)"),
    "warmup_teacher_temp_epochs": _dropped("DINO loss only (no temperature in SimDINO)"),
    "compile": _to("compile"),
    "use_fp16": _v1_fp16,
    "weight_decay": _to("optim.weight_decay"),
    "weight_decay_end": _to("optim.weight_decay_end"),
    "clip_grad": _v1_clip,
    "batch_size_per_gpu": _to("train.batch_size_per_gpu"),
    "epochs": _to("optim.epochs"),
    "freeze_last_layer": _dropped("unused: no prototype layer to freeze"),
    "lr": _v1_lr,
    "warmup_epochs": _to("optim.warmup_epochs"),
    "min_lr": _to("optim.min_lr"),
    "optimizer": _v1_optimizer,
    "drop_path_rate": _to("student.drop_path_rate"),
    "global_crops_scale": _to("crops.global_crops_scale"),
    "local_crops_number": _to("crops.local_crops_number"),
    "local_crops_scale": _to("crops.local_crops_scale"),
    "data_path": _v1_data_path,
    "output_dir": _dropped("set by --output-dir"),
    "saveckp_freq": _v1_saveckp,
    "seed": _to("train.seed"),
    "num_workers": _to("train.num_workers"),
    "dist_url": _dropped("the launcher (torchrun / SLURM) sets the process group"),
    "local_rank": _dropped("the launcher (torchrun / SLURM) sets the process group"),
    "track_wandb": _dropped("metrics go to training_metrics.json and TensorBoard"),
    "track_swan": _dropped("metrics go to training_metrics.json and TensorBoard"),
    "coeff": _to("dino.mcr.coeff"),
    "eps": _to("dino.mcr.eps"),
    "reduce_cov": _to("dino.mcr.reduce_cov"),
    "expa_type": _to("dino.mcr.expa_type"),
}


def translate(upstream: DictConfig, flavour: str, our_defaults: DictConfig, *, epoch_length: int | None) -> Translation:
    """Map every key of `upstream` (written for `flavour`) to our keys; raises ImportRefused naming a key."""
    if flavour not in UPSTREAM_FLAVOURS:
        raise ValueError(f"--upstream {flavour!r} is not one of {list(UPSTREAM_FLAVOURS)}")
    ours = flatten(our_defaults)
    t = Translation(epoch_length=epoch_length, default_epoch_length=ours["train.OFFICIAL_EPOCH_LENGTH"])
    given = flatten(upstream)
    if flavour == "simdino_v1":
        rules = SIMDINO_V1_RULES
        t.values.update(SIMDINO_V1_STRUCTURE)
        t.note(f"set from SimDINO v1's model and code (no argument): {SIMDINO_V1_STRUCTURE}")
    elif flavour == "simdinov2":
        rules = SIMDINOV2_RULES
        t.values.update(SIMDINO_DEFAULTS)
        t.note(f"SimDINO's defaults where they differ from DINOv2's (overridden by the file): {SIMDINO_DEFAULTS}")
        if "evaluation.eval_period_epochs" not in given and "evaluation.eval_period_iterations" not in given:
            given["evaluation.eval_period_epochs"] = SIMDINO_DEFAULT_EVAL_PERIOD_EPOCHS
    else:
        rules = DINOV2_RULES
    # Keys whose handlers need other keys (the epoch length) run after the plain ones.
    ordered = sorted(given, key=lambda key: key in ("evaluation.eval_period_epochs", "saveckp_freq"))
    for key in ordered:
        value = given[key]
        prefix_rule = next((k for k in rules if key.startswith(k + ".")), None)
        if key in rules:
            rules[key](t, key, value)
        elif prefix_rule is not None:
            continue  # a dict-valued key (optim.kwargs) was flattened: handled as a whole below
        elif flavour != "simdino_v1" and key in ours:
            t.set(key, value)
        else:
            raise ImportRefused(f"{key}={value!r}: unknown {flavour} key, not mapped to any key here")
    for rule_key in rules:
        parts = {k: v for k, v in given.items() if k.startswith(rule_key + ".")}
        if parts:
            rules[rule_key](t, rule_key, OmegaConf.select(upstream, rule_key))
    if flavour == "simdinov2" and "optim.warmup_start_lr" not in given:
        t.set("optim.warmup_start_lr", t.values.get("optim.min_lr", ours["optim.min_lr"]))
        t.note("optim.warmup_start_lr = optim.min_lr: the SimDINO scheduler starts the lr warm-up at min_lr")
    if (
        flavour != "dinov2"
        and t.values.get("dino.remove_last_layer")
        and not (t.values.get("ibot.separate_head") and not t.values.get("ibot.remove_last_layer"))
    ):
        for key in ("dino.head_n_prototypes", "ibot.head_n_prototypes"):
            if key in t.values:
                t.drop(key, t.values.pop(key), "unused: no head has a prototype layer")
        if t.values.get("optim.freeze_last_layer_epochs", 0) != 0:
            t.drop("optim.freeze_last_layer_epochs", t.values["optim.freeze_last_layer_epochs"],
                   "no prototype layer to freeze (set to 0)")  # fmt: skip
            t.set("optim.freeze_last_layer_epochs", 0)
    unknown = sorted(key for key in t.values if key not in ours)
    assert not unknown, f"the import produced keys that the defaults lack: {unknown}"
    return t


def to_yaml(t: Translation, source: str, flavour: str) -> str:
    """The translated keys as nested YAML, preceded by the notes as comments."""
    nested = OmegaConf.from_dotlist([])
    for key, value in t.values.items():
        OmegaConf.update(nested, key, value, force_add=True)
    header = [f"# Imported from {source} ({flavour}) by tools/import_config.py"]
    header += [f"# {note}" for note in t.notes]
    return "\n".join(header) + "\n" + OmegaConf.to_yaml(nested)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("upstream_config", help="the official YAML config (or v1 arguments as YAML)")
    parser.add_argument("--upstream", choices=UPSTREAM_FLAVOURS, required=True, help="code base the file is for")
    parser.add_argument("--epoch-length", type=int, default=None,
                        help="iterations per epoch, needed to convert epoch periods when "
                        "train.OFFICIAL_EPOCH_LENGTH <= 0 (1251 for ImageNet-1k at global batch 1024)")  # fmt: skip
    args = parser.parse_args(argv)
    upstream = OmegaConf.load(args.upstream_config)
    try:
        t = translate(
            upstream, args.upstream, load_packaged_config("ssl_default_config"), epoch_length=args.epoch_length
        )
    except ImportRefused as err:
        print(f"import_config: refused: {err}", file=sys.stderr)
        return 2
    for note in t.notes:
        print(f"import_config: {note}", file=sys.stderr)
    print(to_yaml(t, args.upstream_config, args.upstream), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
