"""iBOT masks and the training batch produced by collate_data_and_cast."""

import math
import random
from functools import partial

import numpy as np
import pytest
import torch

from dinov2.data import MaskingGenerator, collate_data_and_cast, default_max_num_patches


def _reference_mask(generator: MaskingGenerator, n: int) -> np.ndarray:
    """Cell-by-cell transcription of the official algorithm, same random calls."""
    mask = np.zeros((generator.height, generator.width), dtype=int)
    count = 0
    while count < n:
        budget = min(n - count, generator.max_num_patches)
        delta = 0
        for _ in range(10):
            area = random.uniform(generator.min_num_patches, budget)
            aspect = math.exp(random.uniform(*generator.log_aspect_ratio))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < generator.width and h < generator.height:
                top = random.randint(0, generator.height - h)
                left = random.randint(0, generator.width - w)
                already = mask[top : top + h, left : left + w].sum()
                if 0 < h * w - already <= budget:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask.astype(bool)


def test_default_max_num_patches_uses_the_intended_value() -> None:
    assert default_max_num_patches(224, 16) == 98
    assert default_max_num_patches(224, 14) == 128
    assert default_max_num_patches(518, 14) == 684  # official precedence gives 666


def test_masks_respect_bounds_and_match_the_reference_algorithm() -> None:
    generator = MaskingGenerator(input_size=(8, 8), max_num_patches=12)
    assert generator.get_shape() == (8, 8)
    assert not generator(0).any()
    for seed in range(40):
        n = seed % 30 + 1
        random.seed(seed)
        mask = generator(n)
        assert mask.dtype == bool and mask.shape == (8, 8)
        assert mask.sum() <= n
        if n >= generator.min_num_patches:
            assert mask.sum() > 0
        random.seed(seed)
        np.testing.assert_array_equal(mask, _reference_mask(generator, n))


def test_each_block_stays_within_the_budget() -> None:
    generator = MaskingGenerator(input_size=(10, 10), min_num_patches=4, max_num_patches=9)
    random.seed(3)
    for _ in range(200):
        mask = np.zeros((10, 10), dtype=bool)
        added = generator._add_block(mask, 9)
        assert added == mask.sum() and 0 <= added <= 9
        if added:
            rows, cols = np.nonzero(mask)
            height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
            assert height * width == added  # one rectangle


def _fake_samples(batch_size: int, n_local: int, size: int = 16, local_size: int = 8) -> list:
    samples = []
    for b in range(batch_size):
        global_crops = [torch.full((3, size, size), float(10 * b + c)) for c in range(2)]
        local_crops = [torch.full((3, local_size, local_size), float(100 + 10 * b + c)) for c in range(n_local)]
        samples.append(({"global_crops": global_crops, "local_crops": local_crops}, ()))
    return samples


@pytest.mark.parametrize("batch_size", [3, 4])
def test_collate_keys_shapes_and_mask_statistics(batch_size: int) -> None:
    random.seed(0)
    grid = 8
    n_tokens = grid * grid
    generator = MaskingGenerator(input_size=(grid, grid), max_num_patches=default_max_num_patches(32, 4))
    collate = partial(
        collate_data_and_cast,
        mask_ratio_tuple=(0.1, 0.5),
        mask_probability=0.5,
        dtype=torch.float16,
        n_tokens=n_tokens,
        mask_generator=generator,
    )
    n_full = 0
    for _ in range(10):
        batch = collate(_fake_samples(batch_size, n_local=3))
        assert set(batch) == {
            "collated_global_crops",
            "collated_local_crops",
            "collated_masks",
            "mask_indices_list",
            "masks_weight",
            "upperbound",
            "n_masked_patches",
        }
        globals_, locals_ = batch["collated_global_crops"], batch["collated_local_crops"]
        assert globals_.shape == (2 * batch_size, 3, 16, 16) and globals_.dtype == torch.float16
        assert locals_.shape == (3 * batch_size, 3, 8, 8) and locals_.dtype == torch.float16
        # Crop-major order: all first global crops, then all second ones.
        expected_global = [10 * b + c for c in range(2) for b in range(batch_size)]
        assert globals_[:, 0, 0, 0].tolist() == expected_global
        expected_local = [100 + 10 * b + c for c in range(3) for b in range(batch_size)]
        assert locals_[:, 0, 0, 0].tolist() == expected_local

        masks = batch["collated_masks"]
        assert masks.shape == (2 * batch_size, n_tokens) and masks.dtype == torch.bool
        n_masked_crops = int(2 * batch_size * 0.5)
        # A mask may fall short of its target (even stay empty) when no block fits, never exceed it.
        assert int((masks.sum(dim=1) > 0).sum()) <= n_masked_crops
        n_full += int((masks.sum(dim=1) > 0).sum()) == n_masked_crops
        indices = batch["mask_indices_list"]
        assert indices.dtype == torch.int64
        assert torch.equal(masks.flatten()[indices], torch.ones(len(indices), dtype=torch.bool))
        assert torch.equal(indices, torch.nonzero(masks.flatten()).flatten())
        weights = batch["masks_weight"]
        assert weights.dtype == torch.float32 and weights.shape == indices.shape
        n_nonempty = int((masks.sum(dim=1) > 0).sum())
        assert float(weights.sum()) == pytest.approx(n_nonempty, abs=1e-5)
        row_counts = masks.sum(dim=1)
        torch.testing.assert_close(weights, (1.0 / row_counts.clamp(min=1).float()).repeat_interleave(row_counts))
        n_masked = int(masks.sum())
        assert batch["n_masked_patches"].dtype == torch.long and batch["n_masked_patches"].tolist() == [n_masked]
        assert isinstance(batch["upperbound"], int) and batch["upperbound"] >= n_masked
        edges = torch.linspace(0.1, 0.5, n_masked_crops + 1)
        assert batch["upperbound"] == sum(int(n_tokens * edges[i + 1]) for i in range(n_masked_crops))
        assert masks.sum(dim=1).max() <= int(n_tokens * 0.5)
    assert n_full >= 8


def test_collate_masks_are_stratified_and_shuffled() -> None:
    random.seed(1)
    generator = MaskingGenerator(input_size=(14, 14), max_num_patches=98)
    counts = np.zeros((200, 16), dtype=int)
    for trial in range(200):
        batch = collate_data_and_cast(
            _fake_samples(8, n_local=0, size=4),
            mask_ratio_tuple=(0.1, 0.5),
            mask_probability=0.5,
            dtype=torch.float32,
            n_tokens=196,
            mask_generator=generator,
        )
        assert batch["collated_local_crops"].numel() == 0
        counts[trial] = batch["collated_masks"].sum(dim=1).numpy()
    # 16 crops, 8 masked with targets in the 8 strata of [0.1, 0.5]: the largest mask is near the top stratum.
    assert (counts[:, :].max(axis=1) >= int(196 * 0.45) - 10).mean() > 0.9
    # Masks land on every crop position over the trials (the list is shuffled).
    assert ((counts > 0).mean(axis=0) > 0.3).all()
