"""mIoU / mAcc / aAcc through mmseg's IoUMetric (the protocol's evaluator), the label mapping of the ADE20K
pipeline, and the loss normalisation of the protocol's head."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from seg_testdata import SKY, TREE, WALL

from eval.segmentation.configs import ade20k_config
from eval.segmentation.models import BNHead
from eval.segmentation.run import register_modules


def _iou_metric(gt: list, pred: list, n_classes: int) -> dict[str, float]:
    register_modules()
    from mmseg.registry import METRICS

    cfg = ade20k_config(protocol="linear", data_root="unused", work_dir="unused", backbone={}, embed_dim=8)
    metric = METRICS.build(cfg.test_evaluator)
    metric.dataset_meta = dict(classes=[f"class{i}" for i in range(n_classes)])
    sample = dict(
        pred_sem_seg=dict(data=torch.tensor([pred])),
        gt_sem_seg=dict(data=torch.tensor([gt])),
    )
    metric.process({}, [sample])
    return metric.compute_metrics(metric.results)


def test_hand_computed_example() -> None:
    # Per class: IoU = 1/3, 2/3, 1/2, NaN (absent) -> mIoU 50; Acc = 1/2, 1, 1/2 -> mAcc 66.67; 4/6 correct.
    metrics = _iou_metric(gt=[[0, 0, 1], [1, 2, 2]], pred=[[0, 1, 1], [1, 2, 0]], n_classes=4)
    assert metrics == pytest.approx(dict(aAcc=66.67, mIoU=50.0, mAcc=66.67), abs=1e-4)


def test_ignored_pixels_change_nothing() -> None:
    metrics = _iou_metric(gt=[[0, 0, 1, 255], [1, 2, 2, 255]], pred=[[0, 1, 1, 3], [1, 2, 0, 0]], n_classes=4)
    assert metrics == pytest.approx(dict(aAcc=66.67, mIoU=50.0, mAcc=66.67), abs=1e-4)


def test_a_predicted_class_absent_from_the_ground_truth_counts_as_zero_iou() -> None:
    # Class 1 never occurs in the ground truth but is predicted once: IoU_1 = 0 enters the mean, Acc_1 does not.
    metrics = _iou_metric(gt=[[0, 0], [2, 2]], pred=[[0, 1], [2, 2]], n_classes=3)
    assert metrics == pytest.approx(dict(aAcc=75.0, mIoU=(50 + 0 + 100) / 3, mAcc=75.0), abs=1e-2)


def test_perfect_prediction_scores_100() -> None:
    labels = [[0, 1, 2], [2, 1, 0]]
    assert _iou_metric(gt=labels, pred=labels, n_classes=3) == dict(aAcc=100.0, mIoU=100.0, mAcc=100.0)


def test_ade20k_pipeline_maps_other_to_ignore_and_shifts_labels(tmp_path: Path) -> None:
    """Annotation values 0 ("other"), 1, 150, 255 become 255, 0, 149, 255 (reduce_zero_label)."""
    for split in ("training", "validation"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "annotations" / split).mkdir(parents=True)
    annotation = np.array([[0, 1, 150, 255], [WALL, SKY, TREE, 0]], dtype=np.uint8)
    Image.fromarray(np.zeros((2, 4, 3), dtype=np.uint8)).save(tmp_path / "images/validation/a.jpg")
    Image.fromarray(annotation).save(tmp_path / "annotations/validation/a.png")
    cfg = ade20k_config(protocol="linear", data_root=str(tmp_path), work_dir="unused", backbone={}, embed_dim=8)
    register_modules()
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS

    with DefaultScope.overwrite_default_scope("mmseg"):
        dataset = DATASETS.build(cfg.test_dataloader.dataset)
        (sample,) = [dataset[0]]
    labels = sample["data_samples"].gt_sem_seg.data[0].numpy()
    assert labels.tolist() == [[255, 0, 149, 255], [WALL - 1, SKY - 1, TREE - 1, 255]]
    # The image itself was resized to the protocol's short side (512), the labels were not.
    assert tuple(sample["inputs"].shape[1:]) == (512, 1024)


def test_loss_is_normalised_by_all_pixels_including_ignored_ones() -> None:
    """mmseg's CrossEntropyLoss (avg_non_ignore=False, as in DINOv2): half the labels 255 -> half of the
    loss torch's cross_entropy(ignore_index=255) gives, which averages over the valid pixels only."""
    cfg = ade20k_config(protocol="linear", data_root="unused", work_dir="unused", backbone={}, embed_dim=192)
    head_cfg = dict(cfg.model.decode_head)
    assert head_cfg.pop("type") == "BNHead"
    head = BNHead(**head_cfg)
    logits = torch.randn(2, 150, 8, 8)
    labels = torch.randint(0, 150, (2, 8, 8))
    labels[:, :4] = 255
    mmseg_loss = head.loss_decode(logits, labels, ignore_index=255)
    torch_loss = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255)
    torch.testing.assert_close(mmseg_loss, torch_loss / 2)
