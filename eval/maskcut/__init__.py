"""MaskCut unsupervised object discovery with the project's ViT, and class-agnostic COCO evaluation."""

from eval.maskcut.coco import (
    class_agnostic_dataset,
    evaluate_class_agnostic,
    load_coco,
    mask_to_rle,
    masks_to_coco_results,
    sort_results,
)
from eval.maskcut.crf import densecrf_mask, refine_mask
from eval.maskcut.maskcut import MaskCut, extract_patch_features, preprocess_image, resize_mask_to_image
from eval.maskcut.ncut import (
    affinity_graph,
    choose_foreground,
    emit_image_masks,
    ncut_patch_masks,
    second_smallest_eigenvectors,
    seed_component,
)
from eval.maskcut.visualize import overlay_masks

__all__ = [
    "MaskCut",
    "affinity_graph",
    "choose_foreground",
    "class_agnostic_dataset",
    "densecrf_mask",
    "emit_image_masks",
    "evaluate_class_agnostic",
    "extract_patch_features",
    "load_coco",
    "mask_to_rle",
    "masks_to_coco_results",
    "ncut_patch_masks",
    "overlay_masks",
    "preprocess_image",
    "refine_mask",
    "resize_mask_to_image",
    "second_smallest_eigenvectors",
    "seed_component",
    "sort_results",
]
