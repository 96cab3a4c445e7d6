"""Strict configuration loading: defaults <- recipe file <- command-line `key=value` overrides.

The default config is put in struct mode before anything is merged over it, so a key that the defaults
do not list (a typo in a recipe or on the command line) raises an error naming the key.
"""

import logging
import math
import os
from typing import Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from dinov2.configs import load_packaged_config

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


def load_config(
    config_file: str | os.PathLike | None,
    opts: Sequence[str] = (),
    base_config: str = "ssl_default_config",
) -> DictConfig:
    """Merge `config_file` and the dot-list `opts` (e.g. `["optim.epochs=10"]`) over the defaults.

    Returns a struct-mode DictConfig. Raises ConfigError naming the first unknown key, and
    FileNotFoundError when `config_file` does not exist. Values in `opts` are YAML-typed.
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
