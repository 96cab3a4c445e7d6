"""MaskCut on images with the project's ViT: resize, last-block features, iterated NCut, optional CRF.

Per image (CutLER's MaskCut, see docs/maskcut.md): resize to fixed_size x fixed_size with
LANCZOS (aspect ratio not kept), ImageNet normalisation, last-block key features (or q / v / kqv / the
final patch tokens), `ncut_patch_masks`, nearest upsampling to fixed_size with earlier masks subtracted,
optional dense CRF with the IoU filter, then each mask resized back to the original size (bicubic on a
0/255 image, thresholded at half its maximum).
"""

import logging
from typing import Literal, Sequence, get_args

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor

from dinov2.data.decoding import to_rgb
from dinov2.models.vision_transformer import DinoVisionTransformer
from eval.maskcut.crf import refine_mask
from eval.maskcut.ncut import emit_image_masks, ncut_patch_masks

logger = logging.getLogger(__name__)

FeatureName = Literal["k", "q", "v", "kqv", "patch"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_image(image: Image.Image, fixed_size: int) -> tuple[Tensor, np.ndarray]:
    """Resize an image to fixed_size² (LANCZOS) -> (normalised tensor [3, S, S], uint8 RGB [S, S, 3])."""
    resized = to_rgb(image).resize((fixed_size, fixed_size), Image.Resampling.LANCZOS)
    tensor = TF.normalize(TF.to_tensor(resized), IMAGENET_MEAN, IMAGENET_STD)
    return tensor, np.asarray(resized, dtype=np.uint8).copy()


def extract_patch_features(model: DinoVisionTransformer, images: Tensor, *, feature: FeatureName = "k") -> Tensor:
    """Last-block patch features of a DinoVisionTransformer; images [B, 3, H, W] -> [B, P, D'].

    `k` / `q` / `v`: output of the last block's qkv projection with the heads concatenated (D' = D, no
    LayerNorm); `kqv`: the three concatenated (D' = 3 D); `patch`: `x_norm_patchtokens` (final norm).
    CLS and register tokens are removed.
    """
    if feature not in get_args(FeatureName):
        raise ValueError(f"feature={feature!r} is not one of {list(get_args(FeatureName))}; fix --feature")
    with torch.inference_mode():
        if feature == "patch":
            return model.forward_features(images)["x_norm_patchtokens"]
        query, key, value = model.get_last_block_qkv(images)  # each [B, heads, N, head_dim]
        parts = {"q": [query], "k": [key], "v": [value], "kqv": [key, query, value]}[feature]
        n_prefix = 1 + model.num_register_tokens
        tokens = torch.cat(parts, dim=-1)[:, :, n_prefix:]  # [B, heads, P, parts * head_dim]
        return tokens.transpose(1, 2).flatten(2)


def resize_mask_to_image(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a bool mask to size = (width, height) -> bool [height, width].

    The mask becomes a 0/255 image resized with bicubic filtering and thresholded at half its maximum.
    """
    resized = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BICUBIC))
    return resized > resized.max() / 2.0


class MaskCut:
    """Unsupervised multi-object discovery with a frozen ViT.

    Args:
        model: a DinoVisionTransformer in eval mode, already on `device`.
        tau: cosine threshold of the binary affinity (0.15 as in CutLER's ImageNet/COCO runs; their script
            default is 0.2).
        n_masks: N, the number of NCut iterations (masks per image, some possibly empty).
        fixed_size: side of the square input; a multiple of the model's patch size.
        feature: which last-block features build the graph.
        use_crf: refine every mask with the dense CRF and drop it when IoU(raw, CRF) < 0.5.
        device: where features and eigen-solves are computed.
    """

    def __init__(
        self,
        model: DinoVisionTransformer,
        *,
        tau: float = 0.15,
        n_masks: int = 3,
        fixed_size: int = 480,
        feature: FeatureName = "k",
        use_crf: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        patch_size = int(model.patch_size)
        if fixed_size <= 0 or fixed_size % patch_size != 0:
            lower = max(patch_size, fixed_size // patch_size * patch_size)
            raise ValueError(
                f"fixed_size={fixed_size} is not a positive multiple of the patch size {patch_size}; set --fixed-size "
                f"to e.g. {lower} or {lower + patch_size}"
            )
        if n_masks < 1:
            raise ValueError(f"n_masks={n_masks} must be >= 1; fix --n-masks")
        if not -1.0 <= tau <= 1.0:
            raise ValueError(f"tau={tau} is a cosine threshold and must lie in [-1, 1]; fix --tau")
        if feature not in get_args(FeatureName):
            raise ValueError(f"feature={feature!r} is not one of {list(get_args(FeatureName))}; fix --feature")
        self.model = model
        self.tau = tau
        self.n_masks = n_masks
        self.fixed_size = fixed_size
        self.feature: FeatureName = feature
        self.use_crf = use_crf
        self.device = torch.device(device)
        self.patch_size = patch_size
        self.grid_size = (fixed_size // patch_size, fixed_size // patch_size)

    def __call__(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """Masks for a batch of PIL images -> per image bool [N, H, W] at its original size (N = n_masks).

        Masks are in iteration order; empty ones mark dropped or emptied iterations. Before the CRF they
        are pairwise disjoint.
        """
        if not images:
            return []
        prepared = [preprocess_image(image, self.fixed_size) for image in images]
        batch = torch.stack([tensor for tensor, _ in prepared]).to(self.device)
        features = extract_patch_features(self.model, batch, feature=self.feature)
        patch_masks = ncut_patch_masks(features, self.grid_size, tau=self.tau, n_masks=self.n_masks)
        outputs = []
        for image, (_, resized_rgb), image_patch_masks in zip(images, prepared, patch_masks, strict=True):
            masks = emit_image_masks(image_patch_masks, self.patch_size)
            if self.use_crf:
                masks = np.stack([refine_mask(resized_rgb, mask) for mask in masks])
            outputs.append(np.stack([resize_mask_to_image(mask, image.size) for mask in masks]))
        return outputs
