"""DINOv2 data pipeline: datasets, multi-crop augmentation, iBOT masking, collation, samplers, loaders."""

from dinov2.data.adapters import DatasetWithEnumeratedTargets
from dinov2.data.augmentations import DataAugmentationDINO
from dinov2.data.collate import collate_data_and_cast
from dinov2.data.datasets import BadImageCounter, BadImageError
from dinov2.data.decoding import decode_image, to_rgb
from dinov2.data.loaders import SamplerType, make_data_loader, make_dataset, parse_dataset_str
from dinov2.data.masking import MaskingGenerator, default_max_num_patches
from dinov2.data.transforms import make_classification_eval_transform, make_classification_train_transform

__all__ = [
    "BadImageCounter",
    "BadImageError",
    "DataAugmentationDINO",
    "DatasetWithEnumeratedTargets",
    "MaskingGenerator",
    "SamplerType",
    "collate_data_and_cast",
    "default_max_num_patches",
    "make_classification_eval_transform",
    "make_classification_train_transform",
    "make_data_loader",
    "make_dataset",
    "decode_image",
    "parse_dataset_str",
    "to_rgb",
]
