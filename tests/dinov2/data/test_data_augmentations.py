"""Multi-crop augmentation: crop counts, sizes, value ranges, and agreement of the batched ops with torchvision."""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from dinov2.data import DataAugmentationDINO, make_classification_eval_transform, make_classification_train_transform
from dinov2.data.augmentations import image_to_uint8_tensor
from dinov2.data.transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    BatchedPhotometricAugmentation,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    import skimage.data

    return Image.fromarray(skimage.data.chelsea()).resize((90, 60), Image.BICUBIC)


def _value_bounds() -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def test_crop_counts_sizes_and_value_ranges(photo: Image.Image) -> None:
    torch.manual_seed(0)
    augmentation = DataAugmentationDINO((0.32, 1.0), (0.05, 0.32), 3, global_crops_size=32, local_crops_size=16)
    low, high = _value_bounds()
    for _ in range(5):
        out = augmentation(photo)
        assert set(out) == {"global_crops", "global_crops_teacher", "local_crops", "offsets"}
        assert len(out["global_crops"]) == 2 and len(out["local_crops"]) == 3
        assert out["global_crops_teacher"] is out["global_crops"]
        assert out["offsets"] == ()
        for crop in out["global_crops"]:
            assert crop.shape == (3, 32, 32) and crop.dtype == torch.float32
            assert bool(((crop >= low - 1e-5) & (crop <= high + 1e-5)).all())
        for crop in out["local_crops"]:
            assert crop.shape == (3, 16, 16) and crop.dtype == torch.float32
            assert bool(((crop >= low - 1e-5) & (crop <= high + 1e-5)).all())
        # The two global crops are different random views.
        assert not torch.equal(out["global_crops"][0], out["global_crops"][1])


def test_accepts_uint8_tensor_and_grayscale_pil(photo: Image.Image) -> None:
    augmentation = DataAugmentationDINO((0.32, 1.0), (0.05, 0.32), 0, global_crops_size=24, local_crops_size=8)
    out = augmentation(torch.from_numpy(np.array(photo)).permute(2, 0, 1).contiguous())
    assert out["global_crops"][0].shape == (3, 24, 24) and out["local_crops"] == []
    assert augmentation(photo.convert("L"))["global_crops"][1].shape == (3, 24, 24)
    with pytest.raises(ValueError, match="uint8 tensor of shape"):
        augmentation(torch.zeros(3, 8, 8))


def test_blur_probability_arguments_and_defaults() -> None:
    default = DataAugmentationDINO((0.32, 1.0), (0.05, 0.32), 4)
    assert default.global_blur_probs.tolist() == pytest.approx([0.0, 0.9])  # official effective values
    assert default.local_blur_probs.tolist() == pytest.approx([0.5] * 4)
    assert default.global_solarize_probs.tolist() == pytest.approx([0.0, 0.2])
    fixed = DataAugmentationDINO(
        (0.32, 1.0), (0.05, 0.32), 2, global_crops_1_blur_prob=1.0, global_crops_2_blur_prob=0.1
    )
    assert fixed.global_blur_probs.tolist() == pytest.approx([1.0, 0.1])
    with pytest.raises(ValueError, match="crops.local_crops_blur_prob"):
        DataAugmentationDINO((0.32, 1.0), (0.05, 0.32), 2, local_crops_blur_prob=1.5)


def test_blur_is_applied_with_the_given_probability() -> None:
    torch.manual_seed(0)
    photometric = BatchedPhotometricAugmentation(color_jitter_prob=0.0, grayscale_prob=0.0)
    checker = (torch.arange(8).view(1, 8) + torch.arange(8).view(8, 1)) % 2
    images = checker.float().expand(600, 3, 8, 8).clone()
    probs = torch.cat([torch.zeros(100), torch.ones(100), torch.full((400,), 0.5)])
    out = photometric(images, blur_probs=probs, solarize_probs=torch.zeros(600))
    normalised_checker = TF.normalize(checker.float().expand(3, 8, 8), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    blurred = ~torch.isclose(out, normalised_checker, atol=1e-2).flatten(1).all(dim=1)
    assert not blurred[:100].any()
    # sigma >= 0.1 always changes a checkerboard noticeably only above ~0.3; count strong blurs at sigma >= 0.5.
    assert blurred[100:200].float().mean() > 0.75
    half = blurred[200:].float().mean() / blurred[100:200].float().mean()
    assert 0.4 < half < 0.6


def test_solarize_only_where_requested() -> None:
    torch.manual_seed(0)
    photometric = BatchedPhotometricAugmentation(color_jitter_prob=0.0, grayscale_prob=0.0)
    images = torch.full((2, 3, 4, 4), 0.9)
    out = photometric(images, blur_probs=torch.zeros(2), solarize_probs=torch.tensor([0.0, 1.0]))
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    torch.testing.assert_close(out[0], ((0.9 - mean) / std).expand(3, 4, 4))
    torch.testing.assert_close(out[1], ((0.1 - mean) / std).expand(3, 4, 4))


@pytest.mark.parametrize("factor", [0.6, 1.3])
def test_color_ops_match_torchvision(factor: float) -> None:
    torch.manual_seed(1)
    images = torch.rand(3, 3, 12, 10)
    factors = torch.full((3,), factor)
    for ours, theirs in (
        (adjust_brightness, TF.adjust_brightness),
        (adjust_contrast, TF.adjust_contrast),
        (adjust_saturation, TF.adjust_saturation),
    ):
        expected = torch.stack([theirs(image, factor) for image in images])
        torch.testing.assert_close(ours(images.clone(), factors), expected, atol=1e-4, rtol=0)
    shift = factor - 1.0
    expected_hue = torch.stack([TF.adjust_hue(image, shift / 4) for image in images])
    torch.testing.assert_close(adjust_hue(images, factors.sub(1.0).div(4)), expected_hue, atol=1e-4, rtol=0)


def test_per_image_parameters_and_separable_blur_match_torchvision() -> None:
    torch.manual_seed(2)
    images = torch.rand(3, 3, 16, 20)
    sigmas = torch.tensor([0.1, 0.8, 2.0])
    expected = torch.stack(
        [TF.gaussian_blur(image, kernel_size=9, sigma=float(s)) for image, s in zip(images, sigmas, strict=True)]
    )
    torch.testing.assert_close(gaussian_blur(images, sigmas, 9), expected, atol=1e-4, rtol=0)
    hues = torch.tensor([-0.1, 0.0, 0.07])
    expected_hue = torch.stack([TF.adjust_hue(image, float(h)) for image, h in zip(images, hues, strict=True)])
    torch.testing.assert_close(adjust_hue(images, hues), expected_hue, atol=1e-4, rtol=0)


def test_uint8_resize_matches_pil_bicubic(photo: Image.Image) -> None:
    """Our crop resize (antialiased bicubic on uint8) is PIL's crop + bicubic resize up to rounding, both directions."""
    pixels = image_to_uint8_tensor(photo)
    for size in (20, 150):
        ours = torch.nn.functional.interpolate(
            pixels[:, :, 5:55, 10:80], size=(size, size), mode="bicubic", antialias=True, align_corners=False
        )[0]
        pil = torch.from_numpy(np.array(photo.crop((10, 5, 80, 55)).resize((size, size), Image.BICUBIC)))
        difference = (ours.permute(1, 2, 0).int() - pil.int()).abs()
        assert difference.float().mean() < 0.6 and int(difference.max()) <= 3


def test_classification_transforms(photo: Image.Image) -> None:
    eval_out = make_classification_eval_transform(resize_size=40, crop_size=32)(photo)
    assert eval_out.shape == (3, 32, 32)
    train_out = make_classification_train_transform(crop_size=24)(photo)
    assert train_out.shape == (3, 24, 24)
    low, high = _value_bounds()
    assert bool(((eval_out >= low - 1e-5) & (eval_out <= high + 1e-5)).all())


def test_color_jitter_draws_one_factor_per_image() -> None:
    torch.manual_seed(3)
    photometric = BatchedPhotometricAugmentation(
        contrast=0.0, saturation=0.0, hue=0.0, color_jitter_prob=1.0, grayscale_prob=0.0
    )
    images = torch.full((64, 3, 4, 4), 0.5)
    images[:, 1] = 0.25
    out = photometric(images.clone(), blur_probs=torch.zeros(64), solarize_probs=torch.zeros(64))
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    factors = (out * std + mean) / images  # brightness only: one factor per image, same for every pixel
    per_image = factors.flatten(1)
    torch.testing.assert_close(per_image, per_image[:, :1].expand_as(per_image), atol=1e-4, rtol=0)
    assert float(per_image.min()) >= 0.6 - 1e-4 and float(per_image.max()) <= 1.4 + 1e-4
    assert float(per_image[:, 0].std()) > 0.15  # U(0.6, 1.4) has std 0.23
