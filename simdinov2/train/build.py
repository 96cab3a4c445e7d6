"""The one place that reads the objective selector and maps it to a meta-architecture.

`dino.use_mcr` / `ibot.use_mcr` (the official SimDINO key names) choose between DINOv2's objective
(`dinov2.train.ssl_meta_arch.SSLMetaArch`: prototype heads, DINO / iBOT cross-entropies, centering, KoLeo)
and SimDINO's (`simdinov2.train.meta_arch.SimDINOMetaArch`: coding rate + cosine losses). No other module
reads these keys. Usage:

    from dinov2.train.train import get_args_parser, main
    from simdinov2.train.build import build_meta_arch
    main(get_args_parser().parse_args(), meta_arch_factory=build_meta_arch)
"""

import logging

from omegaconf import DictConfig

from dinov2.train.ssl_meta_arch import SSLMetaArch
from simdinov2.train.meta_arch import SimDINOMetaArch, check_simdino_config

logger = logging.getLogger(__name__)

# (dino.use_mcr, ibot.use_mcr) -> meta-architecture.
META_ARCHS: dict[tuple[bool, bool], type[SSLMetaArch]] = {
    (False, False): SSLMetaArch,
    (True, True): SimDINOMetaArch,
}


def _check_bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key}={value!r} is not one of [true, false]; fix {key}")
    return value


def select_meta_arch(cfg: DictConfig) -> type[SSLMetaArch]:
    """The meta-architecture class that `cfg` selects; ValueError naming the keys on an inconsistent config."""
    selector = (_check_bool("dino.use_mcr", cfg.dino.use_mcr), _check_bool("ibot.use_mcr", cfg.ibot.use_mcr))
    if selector not in META_ARCHS:
        raise ValueError(
            f"(dino.use_mcr, ibot.use_mcr)={selector} is not one of {sorted(META_ARCHS)}: DINOv2 is (false, false), "
            "SimDINO / SimDINOv2 is (true, true) (SimDINO without patch loss: also set ibot.loss_weight=0); "
            "fix dino.use_mcr / ibot.use_mcr"
        )
    meta_arch = META_ARCHS[selector]
    if meta_arch is SimDINOMetaArch:
        check_simdino_config(cfg)
    else:
        for key, value, default in (
            ("dino.remove_last_layer", cfg.dino.remove_last_layer, False),
            ("ibot.remove_last_layer", cfg.ibot.remove_last_layer, False),
        ):
            if value != default:
                raise ValueError(
                    f"{key}={value} only applies to SimDINO (dino.use_mcr=true); DINOv2's prototype heads need "
                    f"{key}={str(default).lower()}: fix {key} or set dino.use_mcr=true and ibot.use_mcr=true"
                )
    return meta_arch


def build_meta_arch(cfg: DictConfig) -> SSLMetaArch:
    """Build the meta-architecture selected by `dino.use_mcr` / `ibot.use_mcr` (see `select_meta_arch`)."""
    meta_arch = select_meta_arch(cfg)
    logger.info(
        "OPTIONS -- objective: %s (dino.use_mcr=%s, ibot.use_mcr=%s)",
        meta_arch.__name__,
        cfg.dino.use_mcr,
        cfg.ibot.use_mcr,
    )
    return meta_arch(cfg)
