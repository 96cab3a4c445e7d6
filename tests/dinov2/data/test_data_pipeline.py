"""The training data path end to end: Digits -> DataAugmentationDINO -> collate in DataLoader workers."""

from functools import partial

import torch

from dinov2.data import (
    DataAugmentationDINO,
    MaskingGenerator,
    SamplerType,
    collate_data_and_cast,
    default_max_num_patches,
    make_data_loader,
    make_dataset,
)


def test_training_batches_from_workers() -> None:
    global_size, local_size, patch_size, n_local, batch_size = 32, 16, 4, 2, 4
    dataset = make_dataset(
        dataset_str="Digits:split=TRAIN",
        transform=DataAugmentationDINO(
            (0.4, 1.0), (0.1, 0.4), n_local, global_size, local_size, global_crops_1_blur_prob=1.0
        ),
        target_transform=lambda _: (),
    )
    grid = global_size // patch_size
    collate = partial(
        collate_data_and_cast,
        mask_ratio_tuple=(0.1, 0.5),
        mask_probability=0.5,
        dtype=torch.float16,
        n_tokens=grid * grid,
        mask_generator=MaskingGenerator(
            input_size=(grid, grid), max_num_patches=default_max_num_patches(global_size, patch_size)
        ),
    )
    loader = make_data_loader(
        dataset=dataset,
        batch_size=batch_size,
        num_workers=2,
        seed=0,
        sampler_type=SamplerType.SHARDED_INFINITE,
        collate_fn=collate,
    )
    batches = [batch for _, batch in zip(range(3), loader, strict=False)]
    for batch in batches:
        assert batch["collated_global_crops"].shape == (2 * batch_size, 3, global_size, global_size)
        assert batch["collated_local_crops"].shape == (n_local * batch_size, 3, local_size, local_size)
        assert batch["collated_global_crops"].dtype == torch.float16
        assert batch["collated_masks"].shape == (2 * batch_size, grid * grid)
        assert batch["n_masked_patches"].item() == batch["collated_masks"].sum().item()
    # Workers draw different augmentations and masks for different batches.
    assert not torch.equal(batches[0]["collated_global_crops"], batches[1]["collated_global_crops"])


def test_worker_allocator_tuning_applies_on_glibc() -> None:
    from dinov2.data.loaders import tune_allocator_for_data_workers

    # The project's machines run glibc; the call must succeed there (it raises two malloc thresholds).
    assert tune_allocator_for_data_workers(threshold_bytes=32 << 20)
