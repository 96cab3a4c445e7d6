"""DINOv2 multi-crop augmentation: 2 global crops + N local crops per image.

Parameters are the official DINOv2 ones: RandomResizedCrop (ratio 3/4-4/3, bicubic) and a
horizontal flip, then per crop ColorJitter(0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale p=0.2, Gaussian
blur (kernel 9, sigma 0.1-2.0) with a per-crop probability, solarisation p=0.2 on the second global crop
only, and ImageNet normalisation.

Blur probabilities are the *effective* ones. The official code passes `1 - p` to RandomApply, so its
nominal 1.0 / 0.1 / 0.5 (global 1 / global 2 / local) really applies 0.0 / 0.9 / 0.5: these are our
defaults (config keys `crops.global_crops_{1,2}_blur_prob`, `crops.local_crops_blur_prob`), and the
SimDINO recipes set the intended 1.0 / 0.1 / 0.5.

Implementation (see benchmarks/data.py for the speed-up): the image is converted once to a uint8
tensor; each crop is cut as a view and resized with torch's antialiased bicubic interpolation on uint8
(PIL's filter, a = -0.5, several times faster than PIL on large regions) and flipped; then all crops of
one size form one float batch for colour jitter (in place, crop by crop), grayscale, blur (separable
9-tap passes instead of a 9x9 kernel), solarisation and normalisation (BatchedPhotometricAugmentation). This is the same
random augmentation as the official one-crop-at-a-time PIL pipeline (same operations, parameter ranges
and probabilities); pixel values differ only by 8-bit rounding, because intermediate results stay in
float instead of being rounded to 8 bits after every step.
"""

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms import RandomResizedCrop

from dinov2.data.decoding import to_rgb
from dinov2.data.transforms import BatchedPhotometricAugmentation

logger = logging.getLogger(__name__)

_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def image_to_uint8_tensor(image: Image.Image | Tensor) -> Tensor:
    """PIL image (any mode, through `to_rgb`) or uint8 tensor [3, H, W] -> uint8 [1, 3, H, W] (tensors not copied)."""
    if isinstance(image, Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"expected a uint8 tensor of shape [3, H, W], got dtype {image.dtype} and shape {tuple(image.shape)}"
            )
        return image.unsqueeze(0)
    if image.mode != "RGB":
        image = to_rgb(image)
    array = np.array(image)
    # [H, W, 3] memory viewed as [1, 3, H, W] (channels-last strides), the layout of the fast uint8 resize.
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


class DataAugmentationDINO:
    """Multi-crop augmentation; call on a PIL image (or uint8 [3, H, W] tensor).

    Returns a dict: `global_crops` [2 x float [3, S, S]], `global_crops_teacher` (the same list),
    `local_crops` [local_crops_number x float [3, s, s]], `offsets` (). S = global_crops_size,
    s = local_crops_size.
    """

    def __init__(
        self,
        global_crops_scale: tuple[float, float],
        local_crops_scale: tuple[float, float],
        local_crops_number: int,
        global_crops_size: int = 224,
        local_crops_size: int = 96,
        *,
        global_crops_1_blur_prob: float = 0.0,
        global_crops_2_blur_prob: float = 0.9,
        local_crops_blur_prob: float = 0.5,
        global_crops_2_solarize_prob: float = 0.2,
    ) -> None:
        for key, value in (
            ("crops.global_crops_1_blur_prob", global_crops_1_blur_prob),
            ("crops.global_crops_2_blur_prob", global_crops_2_blur_prob),
            ("crops.local_crops_blur_prob", local_crops_blur_prob),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key}={value} is not a probability in [0, 1]; fix {key}")
        if local_crops_number < 0:
            raise ValueError(f"crops.local_crops_number={local_crops_number} must be >= 0")
        self.global_crops_scale = tuple(global_crops_scale)
        self.local_crops_scale = tuple(local_crops_scale)
        self.local_crops_number = local_crops_number
        self.global_crops_size = global_crops_size
        self.local_crops_size = local_crops_size
        self.global_blur_probs = torch.tensor([global_crops_1_blur_prob, global_crops_2_blur_prob])
        self.global_solarize_probs = torch.tensor([0.0, global_crops_2_solarize_prob])
        self.local_blur_probs = torch.full((local_crops_number,), local_crops_blur_prob)
        self.local_solarize_probs = torch.zeros(local_crops_number)
        self.photometric = BatchedPhotometricAugmentation()
        logger.info(
            "OPTIONS -- DataAugmentationDINO: global crops %d px scale %s, %d local crops %d px scale %s, "
            "blur probabilities global1 %.2f global2 %.2f local %.2f",
            global_crops_size,
            self.global_crops_scale,
            local_crops_number,
            local_crops_size,
            self.local_crops_scale,
            global_crops_1_blur_prob,
            global_crops_2_blur_prob,
            local_crops_blur_prob,
        )

    def _augmented_crops(
        self,
        image: Tensor,
        *,
        size: int,
        scale: tuple[float, float],
        blur_probs: Tensor,
        solarize_probs: Tensor,
    ) -> Tensor:
        """len(blur_probs) augmented crops of a uint8 [1, 3, H, W] image -> normalised float [n, 3, size, size]."""
        crops = []
        for _ in range(len(blur_probs)):
            top, left, height, width = RandomResizedCrop.get_params(image, list(scale), list(_CROP_RATIO))
            region = image[:, :, top : top + height, left : left + width]
            crop = F.interpolate(region, size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
            if torch.rand(1).item() < 0.5:
                crop = crop.flip(-1)
            crops.append(crop)
        batch = torch.stack(crops).to(torch.float32).div_(255.0)
        return self.photometric(batch, blur_probs=blur_probs, solarize_probs=solarize_probs)

    def __call__(self, image: Image.Image | Tensor) -> dict[str, Any]:
        pixels = image_to_uint8_tensor(image)
        global_crops = self._augmented_crops(
            pixels,
            size=self.global_crops_size,
            scale=self.global_crops_scale,
            blur_probs=self.global_blur_probs,
            solarize_probs=self.global_solarize_probs,
        )
        global_list = list(global_crops.unbind(0))
        local_list: list[Tensor] = []
        if self.local_crops_number > 0:
            local_crops = self._augmented_crops(
                pixels,
                size=self.local_crops_size,
                scale=self.local_crops_scale,
                blur_probs=self.local_blur_probs,
                solarize_probs=self.local_solarize_probs,
            )
            local_list = list(local_crops.unbind(0))
        return {
            "global_crops": global_list,
            "global_crops_teacher": global_list,
            "local_crops": local_list,
            "offsets": (),
        }
