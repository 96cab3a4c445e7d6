"""Image transforms: normalisation constants, batched photometric ops, classification transforms.

The batched ops act on float images in [0, 1] shaped [N, 3, H, W] with one random parameter per image,
so that the multi-crop augmentation processes all crops of one size in one call. They reproduce the
torchvision operations of the official pipeline (ColorJitter, RandomGrayscale, GaussianBlur,
RandomSolarize): same parameter ranges, probabilities and formulas (GaussianBlur as two 1-d passes of
the same kernel), computed in float instead of on 8-bit PIL images.
"""

import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import transforms

logger = logging.getLogger(__name__)

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


def gaussian_kernels_1d(sigmas: Tensor, kernel_size: int) -> Tensor:
    """Normalised Gaussian kernels sampled at integer offsets: sigmas [N] -> [N, kernel_size].

    Same samples as torchvision's GaussianBlur, whose 2-d kernel is the outer product of these.
    """
    half = (kernel_size - 1) / 2
    offsets = torch.linspace(-half, half, kernel_size, dtype=sigmas.dtype, device=sigmas.device)
    pdf = torch.exp(-0.5 * (offsets.view(1, -1) / sigmas.view(-1, 1)) ** 2)
    return pdf / pdf.sum(dim=1, keepdim=True)


def gaussian_blur(images: Tensor, sigmas: Tensor, kernel_size: int = 9) -> Tensor:
    """Separable Gaussian blur with reflect padding, one sigma per image: [N, C, H, W], [N] -> [N, C, H, W]."""
    n_images, n_channels, height, width = images.shape
    kernels = gaussian_kernels_1d(sigmas, kernel_size).repeat_interleave(n_channels, dim=0)
    pad = kernel_size // 2
    flat = images.reshape(1, n_images * n_channels, height, width)
    flat = F.pad(flat, (pad, pad, pad, pad), mode="reflect")
    flat = F.conv2d(flat, kernels.view(-1, 1, kernel_size, 1), groups=n_images * n_channels)
    flat = F.conv2d(flat, kernels.view(-1, 1, 1, kernel_size), groups=n_images * n_channels)
    return flat.view(n_images, n_channels, height, width)


def _as_4d_weights(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def grayscale(images: Tensor) -> Tensor:
    """ITU-R 601-2 luma (PIL's convert("L") weights): [N, 3, H, W] -> [N, 1, H, W]."""
    r, g, b = images.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def adjust_brightness(images: Tensor, factors: Tensor) -> Tensor:
    """Blend with black: images [N, 3, H, W] in [0, 1] (modified in place), factors [N] -> [N, 3, H, W]."""
    return images.mul_(_as_4d_weights(factors)).clamp_(0.0, 1.0)


def adjust_contrast(images: Tensor, factors: Tensor) -> Tensor:
    """Blend with the mean luma of each image: [N, 3, H, W] (in place), factors [N] -> [N, 3, H, W]."""
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return images.sub_(mean).mul_(_as_4d_weights(factors)).add_(mean).clamp_(0.0, 1.0)


def adjust_saturation(images: Tensor, factors: Tensor) -> Tensor:
    """Blend with the per-pixel luma: [N, 3, H, W] (in place), factors [N] -> [N, 3, H, W]."""
    gray = grayscale(images)
    return images.sub_(gray).mul_(_as_4d_weights(factors)).add_(gray).clamp_(0.0, 1.0)


def adjust_hue(images: Tensor, shifts: Tensor) -> Tensor:
    """Rotate the HSV hue by `shifts` (fractions of a turn, [N]): [N, 3, H, W] -> new [N, 3, H, W].

    Value (max channel) and saturation (hence the min channel) are unchanged, so only the hue is computed.
    """
    max_c = images.amax(dim=1)
    delta = max_c - images.amin(dim=1)
    inv_delta = torch.where(delta > 0, delta, torch.ones_like(delta)).reciprocal_()
    r, g, b = images.unbind(1)
    hue6 = torch.where(
        max_c == r,
        torch.remainder((g - b).mul_(inv_delta), 6.0),
        torch.where(max_c == g, (b - r).mul_(inv_delta).add_(2.0), (r - g).mul_(inv_delta).add_(4.0)),
    )
    hue6.add_(6.0 * shifts.view(-1, 1, 1))
    # Closed-form HSV -> RGB: channel(n) = V - V S clamp(min(k, 4 - k), 0, 1), k = (n + 6 H) mod 6, V S = delta.
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    k = torch.remainder(hue6.unsqueeze(1) + offsets, 6.0)
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return weight.mul_(delta.unsqueeze(1).neg()).add_(max_c.unsqueeze(1))


class BatchedPhotometricAugmentation:
    """The official per-crop photometric chain on a batch of crops of one size.

    Colour jitter runs crop by crop in place on views of the batch; the other steps run on the batch.

    Per image, in order: ColorJitter(brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with
    probability `color_jitter_prob` (the four ops in a random order per image, as torchvision does),
    grayscale with probability `grayscale_prob`, Gaussian blur (kernel 9, sigma ~ U(0.1, 2.0)) with the
    per-image probability `blur_probs[i]`, solarisation (values >= 128/255 inverted) with probability
    `solarize_probs[i]`, then normalisation. Each op has torchvision's formula (tested against it),
    computed in float with a clamp to [0, 1] after each op where PIL rounds and clamps to 8 bits.
    Randomness comes from torch's global generator, which DataLoader seeds per worker.
    """

    def __init__(
        self,
        *,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        color_jitter_prob: float = 0.8,
        grayscale_prob: float = 0.2,
        blur_kernel_size: int = 9,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_threshold: float = 128 / 255,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.color_jitter_prob = color_jitter_prob
        self.grayscale_prob = grayscale_prob
        self.blur_kernel_size = blur_kernel_size
        self.blur_sigma = blur_sigma
        self.solarize_threshold = solarize_threshold
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def _color_jitter(self, images: Tensor) -> Tensor:
        n_images = images.shape[0]
        applied = torch.rand(n_images) < self.color_jitter_prob
        # One random permutation of (brightness, contrast, saturation, hue) per image.
        order = torch.argsort(torch.rand(n_images, 4), dim=1)
        factors = [
            torch.empty(n_images).uniform_(1 - self.brightness, 1 + self.brightness),
            torch.empty(n_images).uniform_(1 - self.contrast, 1 + self.contrast),
            torch.empty(n_images).uniform_(1 - self.saturation, 1 + self.saturation),
            torch.empty(n_images).uniform_(-self.hue, self.hue),
        ]
        ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        # Image by image on views, in place: cheaper than gathering and scattering sub-batches.
        for i in torch.nonzero(applied).flatten().tolist():
            image = images[i : i + 1]
            for op_index in order[i].tolist():
                image.copy_(ops[op_index](image, factors[op_index][i : i + 1]))
        return images

    def __call__(self, images: Tensor, *, blur_probs: Tensor, solarize_probs: Tensor) -> Tensor:
        """images: float [N, 3, H, W] in [0, 1] (modified in place); blur/solarize_probs: [N].

        Returns the normalised crops [N, 3, H, W].
        """
        n_images = images.shape[0]
        images = self._color_jitter(images)
        to_gray = torch.nonzero(torch.rand(n_images) < self.grayscale_prob).flatten()
        if to_gray.numel() > 0:
            images[to_gray] = grayscale(images[to_gray]).expand(-1, 3, -1, -1)
        to_blur = torch.nonzero(torch.rand(n_images) < blur_probs).flatten()
        if to_blur.numel() > 0:
            sigmas = torch.empty(to_blur.numel()).uniform_(*self.blur_sigma)
            images[to_blur] = gaussian_blur(images[to_blur], sigmas, self.blur_kernel_size)
        to_solarize = torch.nonzero(torch.rand(n_images) < solarize_probs).flatten()
        if to_solarize.numel() > 0:
            crops = images[to_solarize]
            images[to_solarize] = torch.where(crops >= self.solarize_threshold, 1.0 - crops, crops)
        return images.sub_(self.mean).div_(self.std)


class MaybeToTensor(transforms.ToTensor):
    """ToTensor that passes tensors through unchanged (PIL or ndarray -> float [3, H, W] in [0, 1])."""

    def __call__(self, pic: object) -> Tensor:  # type: ignore[override]
        if isinstance(pic, Tensor):
            return pic
        return super().__call__(pic)


def make_normalize_transform(
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD
) -> transforms.Normalize:
    return transforms.Normalize(mean=mean, std=std)


def make_classification_train_transform(
    *,
    crop_size: int = 224,
    interpolation: transforms.InterpolationMode = transforms.InterpolationMode.BICUBIC,
    hflip_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> transforms.Compose:
    """Linear-probe training transform: RandomResizedCrop (scale 0.08-1), flip, to tensor, normalise."""
    steps: list[object] = [transforms.RandomResizedCrop(crop_size, interpolation=interpolation)]
    if hflip_prob > 0.0:
        steps.append(transforms.RandomHorizontalFlip(hflip_prob))
    steps += [MaybeToTensor(), make_normalize_transform(mean=mean, std=std)]
    return transforms.Compose(steps)


def make_classification_eval_transform(
    *,
    resize_size: int = 256,
    crop_size: int = 224,
    interpolation: transforms.InterpolationMode = transforms.InterpolationMode.BICUBIC,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> transforms.Compose:
    """Evaluation transform: resize the shorter side, center crop, to tensor, normalise -> [3, crop, crop]."""
    return transforms.Compose(
        [
            transforms.Resize(resize_size, interpolation=interpolation),
            transforms.CenterCrop(crop_size),
            MaybeToTensor(),
            make_normalize_transform(mean=mean, std=std),
        ]
    )
