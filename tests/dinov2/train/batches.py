"""Deterministic tiny training batches for the training tests, and the exact split of a batch by images."""

import random

import torch

from dinov2.data.augmentations import DataAugmentationDINO
from dinov2.data.collate import collate_data_and_cast
from dinov2.data.masking import MaskingGenerator


def make_batches(*, n_batches: int, n_images: int, n_local_crops: int = 2, seed: int = 1234) -> list[dict]:
    """`n_batches` collated batches of `n_images` random 32 px images (16 px global, 8 px local crops)."""
    generator_state = torch.get_rng_state(), random.getstate()
    torch.manual_seed(seed)
    random.seed(seed)
    augmentation = DataAugmentationDINO((0.4, 1.0), (0.1, 0.4), n_local_crops, 16, 8)
    mask_generator = MaskingGenerator(4, max_num_patches=8)
    batches = []
    for _ in range(n_batches):
        images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8) for _ in range(n_images)]
        samples = [(augmentation(image), ()) for image in images]
        batches.append(
            collate_data_and_cast(samples, (0.1, 0.5), 0.5, torch.float32, n_tokens=16, mask_generator=mask_generator)
        )
    torch.set_rng_state(generator_state[0])
    random.setstate(generator_state[1])
    return batches


def select_images(batch: dict, indices: list[int], *, n_global_crops: int = 2) -> dict:
    """The sub-batch of the given image indices, exactly as if it had been collated alone (same masks)."""
    n_images = batch["collated_global_crops"].shape[0] // n_global_crops
    index = torch.tensor(indices)
    global_crops = batch["collated_global_crops"].unflatten(0, (n_global_crops, n_images))[:, index].flatten(0, 1)
    local = batch["collated_local_crops"]
    local = local.unflatten(0, (local.shape[0] // n_images, n_images))[:, index].flatten(0, 1)
    masks = batch["collated_masks"].unflatten(0, (n_global_crops, n_images))[:, index].flatten(0, 1)
    mask_indices = masks.flatten().nonzero().flatten()
    per_crop_weight = 1.0 / masks.sum(dim=-1).clamp(min=1).to(torch.float32)
    return {
        "collated_global_crops": global_crops,
        "collated_local_crops": local,
        "collated_masks": masks,
        "mask_indices_list": mask_indices,
        "masks_weight": per_crop_weight.unsqueeze(-1).expand_as(masks)[masks],
        "upperbound": batch["upperbound"],
        "n_masked_patches": torch.full((1,), mask_indices.shape[0], dtype=torch.long),
    }
