"""Patch embedding: non-overlapping p x p patches -> D-dimensional tokens through a strided convolution."""

from typing import Callable

from torch import Tensor, nn


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return value if isinstance(value, tuple) else (value, value)


class PatchEmbed(nn.Module):
    """`x` [B, C, H, W] -> tokens [B, (H/p)(W/p), D] in row-major grid order ([B, H/p, W/p, D] unflattened).

    `img_size` only sets `patches_resolution` / `num_patches` (the position-embedding grid); any H and W
    that are multiples of the patch size are accepted.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm_layer: Callable[[int], nn.Module] | None = None,
        flatten_embedding: bool = True,
    ) -> None:
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        self.patches_resolution = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.flatten_embedding = flatten_embedding
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if height % self.patch_size[0] or width % self.patch_size[1]:
            raise ValueError(
                f"input size {height}x{width} is not a multiple of the patch size {self.patch_size}; "
                "resize or crop the images to a multiple of the patch size"
            )
        x = self.proj(x)
        grid_h, grid_w = x.shape[-2:]
        x = self.norm(x.flatten(2).transpose(1, 2))
        if not self.flatten_embedding:
            x = x.reshape(-1, grid_h, grid_w, self.embed_dim)
        return x
