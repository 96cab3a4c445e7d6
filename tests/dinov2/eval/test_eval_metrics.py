import math

import pytest
import torch

from dinov2.eval.metrics import ClassificationMetric, usable_topk

CPU = torch.device("cpu")
# 4 samples, 3 classes; best-first predictions: [0, 1, 2], [1, 2, 0], [2, 1, 0], [0, 1, 2]
SCORES = torch.tensor([[3.0, 2, 1], [1, 3, 2], [1, 2, 3], [3, 2, 1]])
TARGETS = torch.tensor([0, 2, 2, 1])


def computed(metric_type: str, targets: torch.Tensor = TARGETS) -> dict[str, torch.Tensor]:
    metric = ClassificationMetric(metric_type=metric_type, num_classes=3, topk=(1, 2))  # type: ignore[arg-type]
    metric.update(SCORES[:2], targets[:2])
    metric.update(SCORES[2:], targets[2:])
    metric.reduce(CPU)
    return metric.compute()


def test_micro_macro_and_per_class_accuracy() -> None:
    # top-1 hits: sample 0 (class 0) and sample 2 (class 2); top-2 adds sample 1 (2 in [1, 2]) and 3 (1 in [0, 1])
    micro = computed("mean_accuracy")
    assert float(micro["top-1"]) == 0.5 and float(micro["top-2"]) == 1.0
    per_class = computed("per_class_accuracy")
    assert torch.equal(per_class["top-1"], torch.tensor([1.0, 0.0, 0.5]))
    assert float(computed("mean_per_class_accuracy")["top-1"]) == pytest.approx(0.5)


def test_classes_without_samples_are_left_out_of_the_macro_mean() -> None:
    per_class = computed("per_class_accuracy", torch.tensor([0, 0, 2, 0]))
    assert math.isnan(float(per_class["top-1"][1]))
    assert float(computed("mean_per_class_accuracy", torch.tensor([0, 0, 2, 0]))["top-1"]) == pytest.approx(
        (2 / 3 + 1.0) / 2
    )


def test_imagenet_real_counts_any_label_and_skips_unlabelled_samples() -> None:
    real = torch.tensor([[1, 0], [0, -1], [2, -1], [-1, -1]])  # sample 3 has no ReaL label
    result = computed("imagenet_real_accuracy", real)
    # top-1 predictions 0, 1, 2: sample 0 hit (0 in {1, 0}), sample 1 miss, sample 2 hit -> 2 / 3
    assert float(result["top-1"]) == pytest.approx(2 / 3)
    assert float(result["top-2"]) == pytest.approx(2 / 3)  # sample 1: top-2 [1, 2] still misses label 0


def test_topk_larger_than_the_class_count_is_refused() -> None:
    assert usable_topk(3) == (1,) and usable_topk(10) == (1, 5)
    with pytest.raises(ValueError, match="exceeds num_classes=3"):
        ClassificationMetric(metric_type="mean_accuracy", num_classes=3, topk=(1, 5))
    with pytest.raises(ValueError, match="metric_type='top1'"):
        ClassificationMetric(metric_type="top1", num_classes=3)  # type: ignore[arg-type]
