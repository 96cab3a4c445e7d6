"""Synthetic run directories in the layout `dinov2.train.train.main` writes (config, metrics, log, exports)."""

import json
from pathlib import Path
from typing import Callable

import torch
from omegaconf import OmegaConf

from dinov2.models import build_model_from_cfg
from dinov2.utils.config import load_config

REPO = Path(__file__).resolve().parents[3]
TEST_CONFIG = REPO / "configs" / "tiny" / "dinov2_test.yaml"


def metrics_record(iteration: int, **values: float) -> dict:
    """One `training_metrics.json` line: medians at the top level (here deliberately different) and `last`."""
    return {
        "iteration": iteration,
        "iter_time": 0.5,
        "data_time": 0.1,
        "it_per_s": 2.0,
        **{name: value + 1000.0 for name, value in values.items()},
        "last": dict(values),
    }


def write_run(
    run_dir: Path,
    *,
    overrides: tuple[str, ...] = ("student.layerscale=1.0",),
    records: list[dict] = (),
    log_lines: list[str] = (),
    exports: dict[int, Callable[[torch.nn.Module], None]] | None = None,
) -> Path:
    """A run directory: config.yaml of the tiny test recipe (+ overrides), the given metrics and log lines,
    and teacher exports `eval/training_<it>/teacher_checkpoint.pth` of a seeded random backbone, each first
    passed through its `exports[it]` edit function."""
    cfg = load_config(TEST_CONFIG, [*overrides, f"train.output_dir={run_dir}"])
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    with open(run_dir / "training_metrics.json", "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    (run_dir / "logs").mkdir(exist_ok=True)
    (run_dir / "logs" / "log.txt").write_text("".join(line + "\n" for line in log_lines))
    for iteration, edit in (exports or {}).items():
        torch.manual_seed(0)
        model, _ = build_model_from_cfg(cfg, only_teacher=True)
        edit(model)
        path = run_dir / "eval" / f"training_{iteration}" / "teacher_checkpoint.pth"
        path.parent.mkdir(parents=True)
        state = {f"backbone.{key}": value for key, value in model.state_dict().items()}
        torch.save({"teacher": state}, path)
    return run_dir


def constant_features(model: torch.nn.Module) -> None:
    """Make every image map to the same CLS feature: no patch content and no position reaches the tokens."""
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        model.pos_embed.zero_()


def unchanged(model: torch.nn.Module) -> None:
    return None
