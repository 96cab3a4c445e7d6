from dinov2.data.datasets.digits import Digits, DigitsSplit
from dinov2.data.datasets.extended import BadImageCounter, BadImageError, ExtendedVisionDataset
from dinov2.data.datasets.image_folder import ImageFolder
from dinov2.data.datasets.image_net import ImageNet, ImageNetSplit
from dinov2.data.datasets.image_net_22k import ImageNet22k

__all__ = [
    "BadImageCounter",
    "BadImageError",
    "Digits",
    "DigitsSplit",
    "ExtendedVisionDataset",
    "ImageFolder",
    "ImageNet",
    "ImageNet22k",
    "ImageNetSplit",
]
