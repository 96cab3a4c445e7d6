"""Packaged configuration files: the defaults every recipe is merged over."""

import pathlib

from omegaconf import DictConfig, OmegaConf

CONFIGS_DIR = pathlib.Path(__file__).parent


def load_packaged_config(name: str) -> DictConfig:
    """Load `dinov2/configs/<name>.yaml` (e.g. `ssl_default_config`)."""
    path = CONFIGS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no packaged config {name!r}: {path} does not exist")
    return OmegaConf.load(path)  # type: ignore[return-value]
