"""COCO results format and class-agnostic evaluation against generated annotations."""

import copy
import json
import pathlib
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from eval.maskcut import (
    class_agnostic_dataset,
    evaluate_class_agnostic,
    load_coco,
    mask_to_rle,
    masks_to_coco_results,
    sort_results,
)


def square(top: int, left: int, side: int = 40, size: int = 100) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def annotation(ann_id: int, image_id: int, mask: np.ndarray, category_id: int = 1) -> dict[str, Any]:
    rle = mask_to_rle(mask)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": rle,
        "area": float(mask_utils.area(rle)),
        "bbox": mask_utils.toBbox(rle).tolist(),
        "iscrowd": 0,
    }


def toy_dataset(objects: list[tuple[int, np.ndarray, int]]) -> dict[str, Any]:
    """Images 1 and 2 (100x100); objects = (image_id, mask, category_id)."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 100},
            {"id": 2, "file_name": "b.png", "width": 100, "height": 100},
        ],
        "annotations": [annotation(i + 1, image_id, mask, cat) for i, (image_id, mask, cat) in enumerate(objects)],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }


def test_results_format_round_trips_and_keeps_mask_order() -> None:
    masks = np.stack([square(30, 30), np.zeros((100, 100), dtype=bool), square(0, 50, side=10)])
    results = masks_to_coco_results(5, masks)
    assert len(results) == 2, "the empty mask gives no result"
    json.dumps(results)  # counts must be strings
    assert results[0]["bbox"] == [30.0, 30.0, 40.0, 40.0]
    assert results[1]["bbox"] == [50.0, 0.0, 10.0, 10.0]
    assert all(r["score"] == 1.0 and r["category_id"] == 1 and r["image_id"] == 5 for r in results)
    np.testing.assert_array_equal(mask_utils.decode(results[0]["segmentation"]).astype(bool), masks[0])
    shuffled = [{"image_id": 3, "k": 0}, {"image_id": 1, "k": 1}, {"image_id": 3, "k": 2}, {"image_id": 1, "k": 3}]
    assert [r["k"] for r in sort_results(shuffled)] == [1, 3, 0, 2]


def test_identical_mask_scores_one() -> None:
    gt = toy_dataset([(1, square(30, 30), 3)])
    metrics = evaluate_class_agnostic(gt, masks_to_coco_results(1, square(30, 30)[None]), image_ids=[1])
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type] == {"AP": pytest.approx(1.0), "AP50": pytest.approx(1.0), "AP75": pytest.approx(1.0)}


def test_mask_shifted_by_8_pixels_gives_the_spec_ap(tmp_path: pathlib.Path) -> None:
    gt = toy_dataset([(1, square(30, 30), 3)])
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(gt))
    results = masks_to_coco_results(1, square(30, 38)[None])  # IoU 32/48 = 0.667
    metrics = evaluate_class_agnostic(gt_file, results, image_ids=[1])
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(0.4)
        assert metrics[iou_type]["AP50"] == pytest.approx(1.0)
        assert metrics[iou_type]["AP75"] == pytest.approx(0.0)


def test_collapsing_categories_equals_use_cats_zero() -> None:
    gt = toy_dataset([(1, square(10, 10, side=30), 3), (1, square(55, 55, side=30), 7), (2, square(20, 40), 7)])
    results = sort_results(
        masks_to_coco_results(2, square(20, 44)[None])
        + masks_to_coco_results(1, np.stack([square(10, 10, side=30), square(58, 55, side=30)]))
    )
    ours = evaluate_class_agnostic(gt, results)
    assert ours["segm"]["AP50"] == pytest.approx(1.0)
    # useCats = 0 pools only detections whose category exists in the file: label them with one of its ids.
    original = load_coco(copy.deepcopy(gt))
    detections = [{**copy.deepcopy(result), "category_id": 3} for result in results]
    evaluator = COCOeval(original, original.loadRes(detections), "bbox")
    evaluator.params.useCats = 0
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert [ours["bbox"][name] for name in ("AP", "AP50", "AP75")] == pytest.approx(list(evaluator.stats[:3]))
    assert [c["id"] for c in class_agnostic_dataset(gt)["categories"]] == [1]


def test_equal_scores_make_ap_depend_on_result_order() -> None:
    gt = toy_dataset([(1, square(30, 30), 3)])
    true_positive, false_positive = square(30, 30), square(0, 0, side=20)
    tp_first = evaluate_class_agnostic(
        gt, masks_to_coco_results(1, np.stack([true_positive, false_positive])), image_ids=[1]
    )
    fp_first = evaluate_class_agnostic(
        gt, masks_to_coco_results(1, np.stack([false_positive, true_positive])), image_ids=[1]
    )
    assert tp_first["segm"]["AP"] == pytest.approx(1.0)
    assert fp_first["segm"]["AP"] == pytest.approx(0.5)


def test_empty_results_score_zero_and_bad_ids_raise() -> None:
    gt = toy_dataset([(1, square(30, 30), 3)])
    metrics = evaluate_class_agnostic(gt, [])
    assert metrics == {t: {"AP": 0.0, "AP50": 0.0, "AP75": 0.0} for t in ("bbox", "segm")}
    with pytest.raises(ValueError, match=r"image ids \[9\]"):
        evaluate_class_agnostic(gt, masks_to_coco_results(9, square(30, 30)[None]))
    with pytest.raises(ValueError, match=r"image_ids \[4\]"):
        evaluate_class_agnostic(gt, [], image_ids=[1, 4])
    with pytest.raises(ValueError, match="'categories'"):
        load_coco({"images": [], "annotations": []})
    assert isinstance(load_coco(gt), COCO)
