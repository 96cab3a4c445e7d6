"""Patch-level MaskCut on synthetic features with known objects (golden checks, docs/maskcut.md)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from eval.maskcut import (
    affinity_graph,
    choose_foreground,
    emit_image_masks,
    ncut_patch_masks,
    second_smallest_eigenvectors,
    seed_component,
)

GRID = (30, 30)


def block_features(blocks: list[tuple[slice, slice]], *, seed: int = 0, dim: int = 64) -> torch.Tensor:
    """[1, 900, dim] features: a random background vector, one random vector per block, noise 0.05."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randn(len(blocks) + 1, dim, generator=generator)
    grid = codes[0].expand(*GRID, dim).clone()
    for index, (rows, cols) in enumerate(blocks):
        grid[rows, cols] = codes[index + 1]
    grid += 0.05 * torch.randn(grid.shape, generator=generator)
    return grid.reshape(1, -1, dim)


def block_mask(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(GRID, dtype=bool)
    mask[rows, cols] = True
    return mask


BLOCK_A = (slice(10, 20), slice(12, 22))
BLOCK_B = (slice(22, 28), slice(2, 8))


def test_one_salient_block_gives_exactly_one_mask() -> None:
    masks = ncut_patch_masks(block_features([BLOCK_A]), GRID, tau=0.2, n_masks=3)[0]
    assert masks.shape == (3, *GRID)
    np.testing.assert_array_equal(masks[0], block_mask(*BLOCK_A))
    assert not masks[1].any(), "iteration 1 repeats the block (IoU > 0.5 with iteration 0) and must be dropped"
    np.testing.assert_array_equal(masks[2], block_mask(*BLOCK_A))  # recomputed after the drop, IoU 0 with zeros
    emitted = emit_image_masks(masks, patch_size=16)
    assert emitted.shape == (3, 480, 480)
    assert [int(mask.any()) for mask in emitted] == [1, 0, 0]
    expected = np.zeros((480, 480), dtype=bool)
    expected[160:320, 192:352] = True
    np.testing.assert_array_equal(emitted[0], expected)


def test_two_salient_blocks_give_two_masks_in_place() -> None:
    masks = ncut_patch_masks(block_features([BLOCK_A, BLOCK_B]), GRID, tau=0.2, n_masks=3)[0]
    np.testing.assert_array_equal(masks[0], block_mask(*BLOCK_A))
    np.testing.assert_array_equal(masks[1], block_mask(*BLOCK_B))
    emitted = emit_image_masks(masks, patch_size=16)
    assert [int(mask.sum()) for mask in emitted] == [100 * 256, 36 * 256, 0]
    assert not np.any(emitted.sum(axis=0) > 1), "emitted masks must be pairwise disjoint"


def test_batched_images_are_independent() -> None:
    features = torch.cat([block_features([BLOCK_A], seed=1), block_features([BLOCK_B], seed=2)])
    masks = ncut_patch_masks(features, GRID, tau=0.2, n_masks=2)
    np.testing.assert_array_equal(masks[0, 0], block_mask(*BLOCK_A))
    np.testing.assert_array_equal(masks[1, 0], block_mask(*BLOCK_B))


def test_eigenvector_matches_scipy_generalized_eigh() -> None:
    features = block_features([BLOCK_A, BLOCK_B], seed=3)
    affinity = affinity_graph(features, tau=0.2)
    ours = second_smallest_eigenvectors(affinity)[0].numpy()
    a = affinity[0].numpy()
    degree = np.diag(a.sum(axis=1))
    _, reference = scipy.linalg.eigh(degree - a, degree, subset_by_index=[1, 2])
    reference = reference[:, 0]
    sign = np.sign(ours @ reference)
    np.testing.assert_allclose(sign * ours, reference, atol=1e-10)


def test_affinity_is_binary_with_eps_and_painted_patches_are_isolated() -> None:
    features = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.0, 0.0]]])
    affinity = affinity_graph(features, tau=0.5, eps=1e-5)[0]
    expected = torch.full((4, 4), 1e-5, dtype=torch.float64)
    expected[:2, :2] = 1.0
    expected[2, 2] = 1.0
    torch.testing.assert_close(affinity, expected)


def test_foreground_side_does_not_depend_on_the_eigenvector_sign() -> None:
    features = block_features([BLOCK_A], seed=4)
    eigenvector = second_smallest_eigenvectors(affinity_graph(features, tau=0.2))[0].numpy().reshape(GRID)
    expected = block_mask(*BLOCK_A)
    for signed in (eigenvector, -eigenvector):
        foreground, seed = choose_foreground(signed)
        np.testing.assert_array_equal(foreground, expected)
        assert expected[seed]
    # One sign puts the block on the "v > mean" side (kept), the other on the background side (swapped by
    # the corner rule, seed = argmax(-v)); both branches must pick the same seed patch.
    assert choose_foreground(eigenvector)[1] == choose_foreground(-eigenvector)[1]


def test_corner_rule_never_returns_a_frame_touching_three_corners() -> None:
    # Larger |v| on a frame touching all four corners: without the corner rule the frame (containing
    # argmax |v|) would be foreground.
    eigenvector = np.full(GRID, -0.01)
    eigenvector[:3, :] = eigenvector[-3:, :] = 0.05
    eigenvector[:, :3] = eigenvector[:, -3:] = 0.05
    eigenvector[15, 15] = -0.02
    foreground, seed = choose_foreground(eigenvector)
    assert not foreground[0, 0] and not foreground[-1, -1]
    assert seed == (15, 15), "after the swap the seed is argmax(-v)"
    assert foreground[seed]


def test_seed_component_keeps_the_component_with_the_seed_not_the_largest() -> None:
    foreground = np.zeros((8, 8), dtype=bool)
    foreground[0:2, 0:2] = True  # small component holding the seed
    foreground[4:8, 4:8] = True  # larger component
    foreground[2, 2] = True  # diagonal neighbour only: not 4-connected to the small one
    component = seed_component(foreground, (0, 0))
    expected = np.zeros((8, 8), dtype=bool)
    expected[0:2, 0:2] = True
    np.testing.assert_array_equal(component, expected)
    with pytest.raises(ValueError, match="outside the foreground"):
        seed_component(foreground, (3, 0))


def test_small_second_object_is_dropped_by_the_area_rule() -> None:
    # A 3x3 object (9 patches = 1.0% of 900) is found at iteration 1 but dropped (area ratio <= 0.01).
    tiny = (slice(24, 27), slice(24, 27))
    masks = ncut_patch_masks(block_features([BLOCK_A, tiny], seed=5), GRID, tau=0.2, n_masks=2)[0]
    np.testing.assert_array_equal(masks[0], block_mask(*BLOCK_A))
    assert not masks[1].any()
    kept = ncut_patch_masks(block_features([BLOCK_A, tiny], seed=5), GRID, tau=0.2, n_masks=2, min_area_ratio=0.005)[0]
    np.testing.assert_array_equal(kept[1], block_mask(*tiny))


def test_rejects_a_grid_that_does_not_match_the_features() -> None:
    with pytest.raises(ValueError, match="grid_size"):
        ncut_patch_masks(torch.zeros(1, 900, 8), (20, 20))
