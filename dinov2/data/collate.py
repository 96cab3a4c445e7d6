"""Batch collation for SSL training: stack the crops and draw the iBOT masks (official DINOv2)."""

import logging
import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)


def collate_data_and_cast(
    samples_list: Sequence[tuple[dict[str, Any], Any]],
    mask_ratio_tuple: tuple[float, float],
    mask_probability: float,
    dtype: torch.dtype,
    n_tokens: int | None = None,
    mask_generator: Callable[[int], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Collate `(DataAugmentationDINO output, target)` pairs into the training batch.

    With B samples, V_g = 2 global and V_l local crops each, N = n_tokens patches per global crop:
    * `collated_global_crops`: [V_g B, 3, S, S] in `dtype`, crop-major (all first crops, then all second).
    * `collated_local_crops`: [V_l B, 3, s, s] in `dtype`, crop-major.
    * `collated_masks`: bool [V_g B, N]. int(V_g B * mask_probability) crops get a mask whose target size is
      int(N * U(r_i, r_{i+1})) with r = linspace(r_min, r_max, n_masked_crops + 1) (stratified ratios);
      the others are empty; the masks are shuffled over crops with `random.shuffle`.
    * `mask_indices_list`: int64 [M], positions of the True entries of `collated_masks.flatten()`.
    * `masks_weight`: float32 [M], 1 / (number of masked patches of the entry's crop).
    * `upperbound`: python int, sum of int(N * r_{i+1}), an upper bound of M.
    * `n_masked_patches`: int64 [1] holding M.
    """
    if mask_generator is None or n_tokens is None:
        raise ValueError("collate_data_and_cast needs `mask_generator` and `n_tokens` (patches per global crop)")
    n_global_crops = len(samples_list[0][0]["global_crops"])
    n_local_crops = len(samples_list[0][0]["local_crops"])
    collated_global_crops = torch.stack(
        [sample[0]["global_crops"][i] for i in range(n_global_crops) for sample in samples_list]
    )
    if n_local_crops > 0:
        collated_local_crops = torch.stack(
            [sample[0]["local_crops"][i] for i in range(n_local_crops) for sample in samples_list]
        )
    else:
        collated_local_crops = torch.empty(0)

    n_crops = len(collated_global_crops)
    n_masked_crops = int(n_crops * mask_probability)
    # float32 like the official torch.linspace, so that the int() truncations below agree with it.
    ratio_edges = torch.linspace(mask_ratio_tuple[0], mask_ratio_tuple[1], n_masked_crops + 1)
    upperbound = 0
    masks_list: list[Tensor] = []
    for i in range(n_masked_crops):
        low, high = ratio_edges[i], ratio_edges[i + 1]
        ratio = low + (high - low) * random.random()
        masks_list.append(torch.from_numpy(mask_generator(int(n_tokens * ratio))))
        upperbound += int(n_tokens * high)
    for _ in range(n_masked_crops, n_crops):
        masks_list.append(torch.from_numpy(mask_generator(0)))
    random.shuffle(masks_list)

    collated_masks = torch.stack(masks_list).flatten(1)
    mask_indices_list = collated_masks.flatten().nonzero().flatten()
    per_crop_weight = 1.0 / collated_masks.sum(dim=-1).clamp(min=1).to(torch.float32)
    masks_weight = per_crop_weight.unsqueeze(-1).expand_as(collated_masks)[collated_masks]

    return {
        "collated_global_crops": collated_global_crops.to(dtype),
        "collated_local_crops": collated_local_crops.to(dtype),
        "collated_masks": collated_masks,
        "mask_indices_list": mask_indices_list,
        "masks_weight": masks_weight,
        "upperbound": upperbound,
        "n_masked_patches": torch.full((1,), fill_value=mask_indices_list.shape[0], dtype=torch.long),
    }
