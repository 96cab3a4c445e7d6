"""The linear protocol trains through mmengine's Runner on a generated ADE20K-layout dataset (CPU, 64 px)
and is evaluated by IoUMetric; the backbone stays frozen."""

from pathlib import Path

import numpy as np
import pytest
import torch

from eval.segmentation.configs import ade20k_config
from eval.segmentation.run import build_runner, unwrap

ITERS = 40


@pytest.fixture(scope="module")
def trained(ade20k_root: Path, tiny_backbone_kwargs: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg = ade20k_config(
        protocol="linear",
        data_root=str(ade20k_root),
        work_dir=str(tmp_path_factory.mktemp("work")),
        backbone=tiny_backbone_kwargs,
        embed_dim=192,
        crop_size=64,
        iters=ITERS,
        batch_size_per_gpu=2,
        num_workers=0,
        log_interval=10,
    )
    runner = build_runner(cfg)
    runner.train()
    segmentor = unwrap(runner.model)
    modes_after_training = dict(segmentor=segmentor.training, vit=segmentor.backbone.vit.training)
    lr_history, _ = runner.message_hub.get_scalar("train/lr").data
    return dict(
        lr_history=lr_history,
        runner=runner,
        segmentor=segmentor,
        modes=modes_after_training,
        metrics=runner.test(),
        iters_done=runner.iter,
    )


def test_runs_the_configured_iterations_and_reports_the_three_metrics(trained: dict) -> None:
    assert trained["iters_done"] == ITERS
    assert set(trained["metrics"]) == {"aAcc", "mIoU", "mAcc"}
    assert all(0.0 <= value <= 100.0 for value in trained["metrics"].values())


def test_the_head_learns_the_shapes(trained: dict) -> None:
    """Three classes (wall ~75% of the pixels, sky, tree): predicting the majority class gives mAcc 33.3;
    the trained head recognises the sky and the tree too."""
    assert trained["metrics"]["mAcc"] > 60.0, trained["metrics"]


def test_backbone_weights_are_those_of_the_checkpoint_after_training(trained: dict, tiny_backbone_kwargs: dict) -> None:
    saved = torch.load(tiny_backbone_kwargs["pretrained_weights"], map_location="cpu")
    trained_vit = trained["segmentor"].backbone.vit.state_dict()
    assert saved.keys() == trained_vit.keys()
    changed = [key for key in saved if not torch.equal(saved[key], trained_vit[key].cpu())]
    assert changed == [], f"frozen backbone tensors changed (training or mmengine's init_weights): {changed}"


def test_the_head_was_trained(trained: dict) -> None:
    head = trained["segmentor"].decode_head
    assert all(p.requires_grad for p in head.parameters())
    assert not torch.allclose(head.bn.weight, torch.ones_like(head.bn.weight))  # BN affine starts at (1, 0)
    assert head.bn.num_batches_tracked.item() == ITERS
    assert head.conv_seg.weight.shape == (150, 192, 1, 1)
    # The config's SyncBN is reverted to a plain BatchNorm by mmengine in a single process.
    assert isinstance(head.bn, torch.nn.modules.batchnorm._BatchNorm)
    assert not isinstance(head.bn, torch.nn.SyncBatchNorm)


def test_the_vit_stays_in_eval_mode_while_the_segmentor_trains(trained: dict) -> None:
    assert trained["modes"] == dict(segmentor=True, vit=False)


def test_optimizer_and_learning_rate_schedule(trained: dict) -> None:
    """AdamW(1e-3, wd 1e-4); lr(t) = 1e-3 * warm-up(t) * (1 - t / (ITERS - 1)), the warm-up linear from 1e-6
    over round(ITERS * 1500 / 40000) = 2 iterations (chained on the poly curve, as in mmseg 0.x)."""
    optimizer = trained["runner"].optim_wrapper.optimizer
    assert type(optimizer).__name__ == "AdamW"
    assert (optimizer.defaults["weight_decay"], optimizer.defaults["betas"]) == (1e-4, (0.9, 0.999))
    steps = np.arange(ITERS)
    warmup = np.where(steps < 2, 1e-6 + (1 - 1e-6) * steps, 1.0)
    expected = 1e-3 * warmup * (1 - steps / (ITERS - 1))
    np.testing.assert_allclose(trained["lr_history"], expected, rtol=1e-6, atol=1e-15)
