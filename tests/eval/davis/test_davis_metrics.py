"""J / F / statistics against golden values (docs/davis.md, "Metric golden values").

The golden numbers were computed from an independent restatement of the DAVIS-2017 definitions (not from
this code); the square cases sit in a 480x854 frame, where the boundary tolerance is 8 px.
"""

import numpy as np
import pytest

from eval.davis.metrics import (
    boundary_f_measure,
    boundary_map,
    boundary_tolerance_pixels,
    decay_bin_edges,
    disk,
    region_jaccard,
    sequence_statistics,
)


def square(shift: int = 0, shape: tuple[int, int] = (480, 854)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[100:200, 100 + shift : 200 + shift] = True
    return mask


@pytest.mark.parametrize(
    ("shift", "expected_j", "expected_f"),
    [(1, 0.98020, 1.0), (8, 0.85185, 1.0), (9, 0.83486, 0.54000), (10, 0.81818, 0.53500), (20, 0.66667, 0.48500)],
)
def test_shifted_square_golden(shift: int, expected_j: float, expected_f: float) -> None:
    annotation, segmentation = square(), square(shift)
    assert region_jaccard(annotation, segmentation) == pytest.approx(expected_j, abs=5e-6)
    assert boundary_f_measure(annotation, segmentation) == pytest.approx(expected_f, abs=5e-6)


def test_identical_masks_score_one() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((3, 37, 53)) > 0.6  # odd sizes exercise the border rules of the boundary map
    np.testing.assert_array_equal(region_jaccard(masks, masks.copy()), np.ones(3))
    np.testing.assert_array_equal(boundary_f_measure(masks, masks.copy()), np.ones(3))


def test_empty_cases() -> None:
    empty, full = np.zeros((40, 60), dtype=bool), square(shape=(300, 300))
    empty_big = np.zeros_like(full)
    assert region_jaccard(empty, empty) == 1.0 and boundary_f_measure(empty, empty) == 1.0
    assert region_jaccard(full, empty_big) == 0.0 and boundary_f_measure(full, empty_big) == 0.0
    assert region_jaccard(empty_big, full) == 0.0 and boundary_f_measure(empty_big, full) == 0.0


def test_boundary_map_counts_and_border_rules() -> None:
    assert boundary_map(square()).sum() == 400
    single = np.zeros((9, 9), dtype=bool)
    single[4, 4] = True
    assert boundary_map(single).sum() == 4
    assert boundary_map(np.ones((20, 30), dtype=bool)).sum() == 0
    # Last row: east test only; last column: south test only; bottom-right corner never.
    corner = np.zeros((5, 5), dtype=bool)
    corner[3:, 3:] = True
    expected = np.zeros((5, 5), dtype=bool)
    expected[2, 2:4] = True  # above the block: its south / south-east neighbours differ
    expected[3, 2] = expected[4, 2] = True  # left of the block: east neighbour differs
    expected[2, 4] = True  # last column, south neighbour differs
    np.testing.assert_array_equal(boundary_map(corner), expected)


def test_disk_and_tolerance() -> None:
    assert disk(8).shape == (17, 17) and disk(8).sum() == 197
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert boundary_tolerance_pixels(480, 854) == 8
    assert boundary_tolerance_pixels(480, 910) == 9
    assert boundary_tolerance_pixels(480, 1152) == 10
    assert boundary_tolerance_pixels(480, 854, bound_th=3) == 3


def test_void_pixels_are_ignored_when_given() -> None:
    annotation = np.zeros((200, 200), dtype=bool)
    annotation[100:150, 100:150] = True
    segmentation = np.zeros_like(annotation)
    segmentation[50:150, 100:150] = True
    void = np.zeros_like(annotation)
    void[50:100, 100:150] = True
    assert region_jaccard(annotation, segmentation, void) == 1.0
    assert boundary_f_measure(annotation, segmentation, void) == 1.0
    assert region_jaccard(annotation, segmentation) == 0.5


def test_statistics_golden() -> None:
    assert sequence_statistics(np.ones(48)) == (1.0, 1.0, 0.0)
    mean, recall, decay = sequence_statistics(np.linspace(1, 0, 48))
    assert mean == pytest.approx(0.5) and recall == pytest.approx(0.5)
    assert decay == pytest.approx(0.74468, abs=5e-6)
    assert decay_bin_edges(48).tolist() == [0, 12, 24, 35, 47]
    assert decay_bin_edges(10).tolist() == [0, 2, 5, 7, 9]


def test_recall_is_strictly_above_half() -> None:
    _, recall, _ = sequence_statistics(np.array([0.5, 0.5, 0.51, 1.0]))
    assert recall == 0.5


def brute_force_f(annotation: np.ndarray, segmentation: np.ndarray, radius: int) -> float:
    """F from pairwise distances between boundary pixels (a match lies within Euclidean distance `radius`)."""
    ann_points = np.argwhere(boundary_map(annotation))
    seg_points = np.argwhere(boundary_map(segmentation))
    squared = ((seg_points[:, None, :] - ann_points[None, :, :]) ** 2).sum(-1)  # [n_seg, n_ann]
    precision = float((squared <= radius**2).any(axis=1).mean())
    recall = float((squared <= radius**2).any(axis=0).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("bound_th", [0.008, 3])
def test_boundary_f_matches_pairwise_distances_on_random_masks(bound_th: float) -> None:
    rng = np.random.default_rng(1)
    for _ in range(4):
        # blobs: coarse random grid upsampled, then cropped to odd sizes so the masks touch the border
        annotation = np.kron(rng.random((8, 10)) > 0.5, np.ones((5, 6), dtype=bool))[:37, :53]
        segmentation = np.kron(rng.random((8, 10)) > 0.5, np.ones((5, 6), dtype=bool))[:37, :53]
        segmentation |= np.roll(annotation, 2, axis=1)
        radius = boundary_tolerance_pixels(37, 53, bound_th=bound_th)
        expected = brute_force_f(annotation, segmentation, radius)
        assert boundary_f_measure(annotation, segmentation, bound_th=bound_th) == pytest.approx(expected, abs=1e-12)
