"""Dense-CRF refinement with MaskCut's settings on a synthetic 480x480 image."""

import numpy as np
import pytest

from eval.maskcut import densecrf_mask, refine_mask

SIZE = 480


@pytest.fixture(scope="module")
def square_image() -> tuple[np.ndarray, np.ndarray]:
    """Black 480x480 image with a white 160x160 square, and the square's mask."""
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    image[160:320, 160:320] = 255
    truth = np.zeros((SIZE, SIZE), dtype=bool)
    truth[160:320, 160:320] = True
    return image, truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


def test_crf_snaps_a_mask_shifted_by_one_patch_back(square_image: tuple[np.ndarray, np.ndarray]) -> None:
    image, truth = square_image
    shifted = np.roll(truth, 16, axis=1)
    assert iou(shifted, truth) == pytest.approx(0.8181818)
    refined = refine_mask(image, shifted)
    np.testing.assert_array_equal(refined, truth)


def test_crf_shrinks_a_dilated_mask_to_the_object(square_image: tuple[np.ndarray, np.ndarray]) -> None:
    image, truth = square_image
    dilated = np.zeros_like(truth)
    dilated[144:336, 144:336] = True
    np.testing.assert_array_equal(densecrf_mask(image, dilated), truth)


def test_iou_filter_discards_a_refinement_that_moved_too_far(square_image: tuple[np.ndarray, np.ndarray]) -> None:
    image, truth = square_image
    inner = np.zeros_like(truth)
    inner[170:310, 170:310] = True  # the CRF grows it to the square: IoU(raw, CRF) = 140² / 160² = 0.766
    np.testing.assert_array_equal(refine_mask(image, inner, min_iou=0.5), truth)
    assert not refine_mask(image, inner, min_iou=0.8).any()


def test_empty_mask_stays_empty_and_bad_inputs_are_rejected(square_image: tuple[np.ndarray, np.ndarray]) -> None:
    image, truth = square_image
    assert not refine_mask(image, np.zeros_like(truth)).any()
    with pytest.raises(ValueError, match="uint8"):
        densecrf_mask(image.astype(np.float32), truth)
    with pytest.raises(ValueError, match="differs from the image size"):
        densecrf_mask(image, truth[:100])
