"""Strict configuration loading: defaults <- recipe file <- command-line `key=value` overrides.

The default config is put in struct mode before anything is merged over it, so a key that the defaults
do not list (a typo in a recipe or on the command line) raises an error naming the key. The merged values
are then checked against `dinov2.configs.schema.SCHEMA` (type and allowed range or set of every key); every
offending key is named with its value and what is allowed.
"""

import logging
import math
import os
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from dinov2.configs import load_packaged_config
from dinov2.configs.schema import SCHEMA

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A recipe or override names a key the defaults do not have, or holds an invalid value."""


def _merge_strict(base: DictConfig, other: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except (ConfigKeyError, ConfigAttributeError) as err:
        key = getattr(err, "full_key", None) or str(err)
        raise ConfigError(
            f"unknown config key {key!r} in {source}; every valid key is listed with its default in "
            "dinov2/configs/ssl_default_config.yaml"
        ) from err


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {dotted key: value}; lists are values."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def validate_config(cfg: DictConfig) -> None:
    """Check every value of `cfg` against `dinov2.configs.schema.SCHEMA`; raise ConfigError listing each bad one."""
    values = _leaves(OmegaConf.to_container(cfg, resolve=True))
    problems = [
        f"{key}: no schema entry; add its rule to dinov2/configs/schema.py" for key in values if key not in SCHEMA
    ]
    problems += [
        f"{key}={value!r}: expected {SCHEMA[key].describe()}"
        for key, value in values.items()
        if key in SCHEMA and not SCHEMA[key].accepts(value)
    ]
    if problems:
        raise ConfigError(f"{len(problems)} invalid config value(s):\n  " + "\n  ".join(problems))


def load_config(
    config_file: str | os.PathLike | None,
    opts: Sequence[str] = (),
    base_config: str = "ssl_default_config",
) -> DictConfig:
    """Merge `config_file` and the dot-list `opts` (e.g. `["optim.epochs=10"]`) over the defaults.

    Returns a struct-mode DictConfig. Raises ConfigError naming the first unknown key or every value that
    breaks its schema rule (`validate_config`), and FileNotFoundError when `config_file` does not exist.
    Values in `opts` are YAML-typed.
    """
    cfg = load_packaged_config(base_config)
    OmegaConf.set_struct(cfg, True)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"config file {config_file} does not exist")
        cfg = _merge_strict(cfg, OmegaConf.load(config_file), str(config_file))  # type: ignore[arg-type]
    malformed = [opt for opt in opts if "=" not in opt]
    if malformed:
        raise ConfigError(f"overrides must look like key=value, got {malformed}")
    if opts:
        cfg = _merge_strict(cfg, OmegaConf.from_dotlist(list(opts)), "the command-line overrides")
    OmegaConf.set_struct(cfg, True)
    validate_config(cfg)
    return cfg


def scaled_lr(cfg: DictConfig, world_size: int) -> float:
    """Learning rate for the global batch `B * W * grad_accum_steps` under `optim.scaling_rule`."""
    global_batch = cfg.train.batch_size_per_gpu * world_size * cfg.train.grad_accum_steps
    rule = cfg.optim.scaling_rule
    if rule == "sqrt_wrt_1024":
        return cfg.optim.base_lr * math.sqrt(global_batch / 1024.0)
    if rule == "linear_wrt_1024":
        return cfg.optim.base_lr * global_batch / 1024.0
    raise ConfigError(
        f"optim.scaling_rule={rule!r} is not one of ['sqrt_wrt_1024', 'linear_wrt_1024']; fix optim.scaling_rule"
    )
