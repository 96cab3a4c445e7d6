"""Train the linear head of a segmentation protocol with mmengine's Runner, evaluate it, save the results.

`train_and_evaluate(cfg)` runs an `eval.segmentation.configs.ade20k_config` config: training, then one
evaluation of the final model on the validation split (with test-time augmentation when the config has a
`tta_model`, i.e. the "+ms" protocol). `save_head` and `save_prediction_figure` write the trained head and a
picture of a few predictions next to their ground truth.
"""

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.model import is_model_wrapper
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from torch import nn

from dinov2.data.decoding import decode_image

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255


def register_modules() -> None:
    """Register the project's mmseg modules (backbone, head) and make `mmseg.models` importable."""
    importlib.import_module("eval.segmentation.models")


def unwrap(model: nn.Module) -> nn.Module:
    """The segmentor inside mmengine's (distributed) model wrapper, or the model itself."""
    return model.module if is_model_wrapper(model) else model


@dataclass(frozen=True)
class SegmentationRun:
    """Outcome of `train_and_evaluate`: metrics in percent (aAcc, mIoU, mAcc) and the trained segmentor."""

    metrics: dict[str, float]
    segmentor: nn.Module
    runner: Runner


def build_segmentor(cfg: Config) -> nn.Module:
    """The segmentor of `cfg.model`, built outside a Runner (weights not yet initialised: call `init_weights`)."""
    register_modules()
    from mmseg.registry import MODELS

    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        return MODELS.build(cfg.model)


def build_runner(cfg: Config) -> Runner:
    """mmengine Runner of `cfg` with the project's modules registered."""
    register_modules()
    return Runner.from_cfg(cfg)


def _tta_runner(cfg: Config, segmentor: nn.Module, experiment_name: str) -> Runner:
    from mmseg.registry import MODELS

    tta_model = MODELS.build(dict(cfg.tta_model, module=segmentor))
    return Runner(
        model=tta_model,
        work_dir=cfg.work_dir,
        test_dataloader=cfg.tta_dataloader,
        test_cfg=cfg.test_cfg,
        test_evaluator=cfg.test_evaluator,
        default_hooks=cfg.default_hooks,
        launcher=cfg.launcher,
        env_cfg=cfg.env_cfg,
        log_processor=cfg.log_processor,
        log_level=cfg.log_level,
        default_scope=cfg.default_scope,
        randomness=cfg.randomness,
        experiment_name=f"{experiment_name}_tta",
    )


def train_and_evaluate(cfg: Config) -> SegmentationRun:
    """Train the head for `cfg.train_cfg.max_iters` iterations, then evaluate the final model once.

    Single-scale slide inference on `cfg.test_dataloader`; when `cfg` has `tta_model` (the +ms protocol) the
    evaluation uses its test-time augmentation over `cfg.tta_dataloader` instead.
    """
    runner = build_runner(cfg)
    runner.train()
    segmentor = unwrap(runner.model)
    if "tta_model" in cfg:
        logger.info("evaluating with test-time augmentation (%s)", cfg.tta_model.type)
        metrics = _tta_runner(cfg, segmentor, runner.experiment_name).test()
    else:
        metrics = runner.test()
    metrics = {name: round(float(value), 2) for name, value in metrics.items()}
    logger.info("segmentation results: %s", metrics)
    return SegmentationRun(metrics=metrics, segmentor=segmentor, runner=runner)


def save_head(segmentor: nn.Module, path: str | Path) -> None:
    """Save the trained decode head's state dict (the frozen backbone is not saved: it is the checkpoint's)."""
    torch.save(segmentor.decode_head.state_dict(), path)


def _colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """labels [H, W] with values in [0, K) or 255 -> RGB uint8 [H, W, 3]; ignored pixels are black."""
    rgb = np.zeros((*labels.shape, 3), dtype=np.uint8)
    valid = labels != IGNORE_INDEX
    rgb[valid] = palette[labels[valid]]
    return rgb


@torch.no_grad()
def predict_samples(segmentor: nn.Module, dataset_cfg: dict, n_images: int) -> list[dict]:
    """Predict the first `n_images` images of the dataset described by `dataset_cfg` (single scale).

    Returns one dict per image: `img_path`, `gt` [H, W] and `pred` [H, W] (uint8/int64 numpy, original
    resolution, 255 = ignored), plus the dataset's `palette` [K, 3].
    """
    from mmseg.registry import DATASETS

    register_modules()
    with DefaultScope.overwrite_default_scope("mmseg"):
        dataset = DATASETS.build(dataset_cfg)
    palette = np.asarray(dataset.metainfo["palette"], dtype=np.uint8)
    was_training = segmentor.training
    segmentor.eval()
    samples = []
    for index in range(min(n_images, len(dataset))):
        (result,) = segmentor.test_step(pseudo_collate([dataset[index]]))
        samples.append(
            dict(
                img_path=result.img_path,
                gt=result.gt_sem_seg.data[0].cpu().numpy(),
                pred=result.pred_sem_seg.data[0].cpu().numpy(),
                palette=palette,
            )
        )
    segmentor.train(was_training)
    return samples


def save_prediction_figure(samples: list[dict], path: str | Path) -> None:
    """One row per sample: image | ground truth | prediction (dataset palette, ignored pixels black)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not samples:
        raise ValueError("save_prediction_figure needs at least one sample; the validation split is empty")
    figure = Figure(figsize=(9, 3 * len(samples)))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(samples), 3, squeeze=False)
    for row, sample in zip(axes, samples, strict=True):
        image = np.asarray(decode_image(sample["img_path"]))
        panels = [image, _colorize(sample["gt"], sample["palette"]), _colorize(sample["pred"], sample["palette"])]
        titles = [Path(sample["img_path"]).name, "ground truth", "prediction"]
        for axis, panel, title in zip(row, panels, titles, strict=True):
            axis.imshow(panel)
            axis.set_title(title)
            axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
