"""COCO results format and class-agnostic COCO evaluation (pycocotools) for MaskCut masks.

MaskCut has no confidence: every mask gets score 1.0 (CutLER's answer in its issue #18). With equal scores
pycocotools ranks detections by a stable sort, per image in ascending image id and within an image in
list order, so AP depends on the order of the results list: `masks_to_coco_results` keeps the MaskCut
iteration order and callers must append images in ascending id order (`sort_results` enforces it).

Ground truth is collapsed to one class (every `category_id` set to 1, `categories = [{id: 1, name: fg}]`,
`iscrowd` kept), which equals CutLER's class-agnostic annotation file and COCOeval with `useCats = 0`.
"""

import contextlib
import copy
import io
import json
import logging
import os
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

logger = logging.getLogger(__name__)

FOREGROUND_CATEGORY_ID = 1
METRIC_NAMES = ("AP", "AP50", "AP75")  # COCOeval.stats[0], [1], [2]


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed RLE of a bool mask [H, W] with `counts` as an ASCII string (JSON-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def masks_to_coco_results(image_id: int, masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO detection results for the masks of one image; masks bool [N, H, W] -> list in mask order.

    Each entry: `image_id`, `category_id` 1, `segmentation` (compressed RLE), `bbox` [x, y, w, h] of the
    mask and `score` 1.0. Empty masks produce no entry.
    """
    results = []
    for mask in masks:
        if not mask.any():
            continue
        rle = mask_to_rle(mask)
        bbox = mask_utils.toBbox(rle).tolist()
        results.append(
            {
                "image_id": int(image_id),
                "category_id": FOREGROUND_CATEGORY_ID,
                "segmentation": rle,
                "bbox": [float(value) for value in bbox],
                "score": 1.0,
            }
        )
    return results


def sort_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results in ascending image id, keeping the list order within an image (stable sort)."""
    return sorted(results, key=lambda result: result["image_id"])


def class_agnostic_dataset(dataset: dict[str, Any]) -> dict[str, Any]:
    """Copy of a COCO annotation dict with every annotation in the single category `{id: 1, name: fg}`."""
    collapsed = copy.deepcopy(dataset)
    collapsed["categories"] = [{"id": FOREGROUND_CATEGORY_ID, "name": "fg", "supercategory": "fg"}]
    for annotation in collapsed.get("annotations", []):
        annotation["category_id"] = FOREGROUND_CATEGORY_ID
    collapsed.setdefault("annotations", [])
    return collapsed


def _quiet(function: Any, *args: Any) -> Any:
    """Call a pycocotools function, sending what it prints to the debug log instead of stdout."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        value = function(*args)
    if buffer.getvalue().strip():
        logger.debug("pycocotools: %s", buffer.getvalue().strip())
    return value


def load_coco(dataset: dict[str, Any] | str | os.PathLike) -> COCO:
    """A pycocotools COCO index over an annotation dict or a JSON file path (no collapsing)."""
    if not isinstance(dataset, dict):
        with open(dataset) as file:
            dataset = json.load(file)
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise ValueError(
                f"COCO annotation file lacks the {key!r} list; pass a COCO instances JSON to --annotations"
            )
    coco = COCO()
    coco.dataset = dataset
    _quiet(coco.createIndex)
    return coco


def evaluate_class_agnostic(
    ground_truth: dict[str, Any] | str | os.PathLike,
    results: list[dict[str, Any]],
    *,
    image_ids: Sequence[int] | None = None,
) -> dict[str, dict[str, float]]:
    """Class-agnostic COCO AP / AP50 / AP75 (fractions in [0, 1]) for `bbox` and `segm`.

    Returns `{"bbox": {"AP": ..., "AP50": ..., "AP75": ...}, "segm": {...}}`. `image_ids` restricts the
    evaluation to those images (default: every image of the annotation file; images without results count
    as misses). Results are evaluated in the given order (see the module docstring). `segm` evaluation
    drops the boxes so that areas are mask areas (as detectron2 does). An empty result list scores 0
    everywhere (pycocotools' `loadRes` cannot load an empty list). Without any ground-truth object
    pycocotools reports -1 (undefined).
    """
    if not isinstance(ground_truth, dict):
        with open(ground_truth) as file:
            ground_truth = json.load(file)
    gt_coco = load_coco(class_agnostic_dataset(ground_truth))
    evaluated_ids = set(gt_coco.getImgIds()) if image_ids is None else set(image_ids)
    not_in_file = sorted(evaluated_ids - set(gt_coco.getImgIds()))
    if not_in_file:
        raise ValueError(f"image_ids {not_in_file[:10]} are not in the annotation file")
    unknown = sorted({result["image_id"] for result in results} - evaluated_ids)
    if unknown:
        raise ValueError(f"results name image ids {unknown[:10]} outside the evaluated images of the annotation file")
    if not results:
        logger.warning("no MaskCut masks at all: every COCO metric is 0")
        return {iou_type: dict.fromkeys(METRIC_NAMES, 0.0) for iou_type in ("bbox", "segm")}
    metrics: dict[str, dict[str, float]] = {}
    for iou_type in ("bbox", "segm"):
        detections = copy.deepcopy(results)
        for detection in detections:
            detection["category_id"] = FOREGROUND_CATEGORY_ID
            if iou_type == "segm":
                detection.pop("bbox", None)
        dt_coco = _quiet(gt_coco.loadRes, detections)
        evaluator = COCOeval(gt_coco, dt_coco, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        _quiet(evaluator.evaluate)
        _quiet(evaluator.accumulate)
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            evaluator.summarize()
        logger.info("COCO %s (class-agnostic):\n%s", iou_type, summary.getvalue().rstrip())
        metrics[iou_type] = {name: float(evaluator.stats[index]) for index, name in enumerate(METRIC_NAMES)}
    return metrics
