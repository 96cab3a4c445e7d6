"""Tiny backbones saved in the two formats the classification tools read.

`tiny_run`: what a training run leaves behind (`config.yaml` + `eval/training_9/teacher_checkpoint.pth` with
`teacher` -> `backbone.*`, `dino_head.*` keys) and a hub-format flat state dict of the same ViT, plus the
flags that select either one.
"""

import dataclasses
import logging
import pathlib
from typing import Iterator

import pytest
import torch
from omegaconf import OmegaConf

from dinov2 import distributed
from dinov2.logging import PACKAGE_LOGGERS
from dinov2.models import build_model_from_cfg
from dinov2.utils.config import load_config

# ViT-Ti width (192), 2 blocks, patch 8 at 32 px (16 patches): small enough for Digits on CPU.
TINY_OPTS = [
    "student.arch=vit_tiny",
    "student.depth=2",
    "student.patch_size=8",
    "student.layerscale=0.1",
    "crops.global_crops_size=32",
    "compute_precision.teacher.backbone.mixed_precision.param_dtype=fp32",
]
HUB_ARGS = ["--arch", "vit_tiny", "--patch-size", "8", "--opts", "student.depth=2", "crops.global_crops_size=32"]


@dataclasses.dataclass(frozen=True)
class TinyRun:
    config_file: pathlib.Path
    teacher_checkpoint: pathlib.Path
    hub_weights: pathlib.Path
    state_dict: dict[str, torch.Tensor]

    def run_args(self) -> list[str]:
        """Flags selecting the training run's teacher export."""
        return ["--config-file", str(self.config_file), "--pretrained-weights", str(self.teacher_checkpoint)]

    def hub_args(self) -> list[str]:
        """Flags selecting the hub-format file (arch given on the command line)."""
        return [*HUB_ARGS, "--weights", str(self.hub_weights)]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    root = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config(None, TINY_OPTS)
    config_file = root / "config.yaml"
    OmegaConf.save(cfg, config_file)
    torch.manual_seed(0)
    model, _ = build_model_from_cfg(cfg, only_teacher=True)
    state_dict = {key: value.detach().clone() for key, value in model.state_dict().items()}
    teacher = {f"backbone.{key}": value for key, value in state_dict.items()}
    teacher["dino_head.mlp.0.weight"] = torch.zeros(4, 192)  # head keys are dropped by the loader
    export_dir = root / "eval" / "training_9"
    export_dir.mkdir(parents=True)
    teacher_checkpoint = export_dir / "teacher_checkpoint.pth"
    torch.save({"teacher": teacher}, teacher_checkpoint)
    hub_weights = root / "dinov2_vittiny8_tiny.pth"
    torch.save(state_dict, hub_weights)
    return TinyRun(config_file, teacher_checkpoint, hub_weights, state_dict)


@pytest.fixture
def tool_process() -> Iterator[None]:
    """Tools call `dinov2.distributed.enable()` and `setup_logging()` in this process; undo both afterwards so
    that later tests (and their `caplog`) start from a clean state."""
    names = (*PACKAGE_LOGGERS, "py.warnings")
    saved = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate,
                    logging.getLogger(name).level) for name in names}  # fmt: skip
    yield None
    if not distributed.is_enabled():
        distributed.disable()
    for name, (handlers, propagate, level) in saved.items():
        package_logger = logging.getLogger(name)
        for handler in list(package_logger.handlers):
            if handler not in handlers:
                package_logger.removeHandler(handler)
                handler.close()
        package_logger.propagate = propagate
        package_logger.setLevel(level)
    logging.captureWarnings(False)
