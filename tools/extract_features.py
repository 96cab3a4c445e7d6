"""Extract DINOv2 features of images and show the first three PCA components of the patch features.

    python tools/extract_features.py --arch vit_small --patch-size 16 --output-dir out/
    python tools/extract_features.py --arch dinov2_vitl14_reg --weights dinov2_vitl14_reg4_pretrain.pth \
        --output-dir out/ photo1.jpg photo2.jpg

Without image paths, scikit-image's astronaut photo is used. Writes `<output-dir>/features.pt`
(per image: `cls` [D], `patch` [H/p, W/p, D], `registers` [R, D]) and `<output-dir>/<image>_pca.png`.
Without weights the backbone is randomly initialised; the log and the figure title say so.
"""

import argparse
import logging
import pathlib
import sys
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from dinov2.data.decoding import decode_image, to_rgb  # noqa: E402
from dinov2.eval.setup import add_backbone_args, backbone_from_args  # noqa: E402
from dinov2.models.vision_transformer import DinoVisionTransformer  # noqa: E402
from dinov2.utils.device import default_device  # noqa: E402

logger = logging.getLogger("extract_features")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_args(parser)
    parser.add_argument("images", nargs="*", help="image files (default: scikit-image's astronaut photo)")
    parser.add_argument("--output-dir", required=True, help="where features.pt and the PCA figures go")
    parser.add_argument("--image-size", type=int, default=448, help="images are resized to this square size "
                        "(rounded down to a multiple of the patch size)")  # fmt: skip
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return parser


def load_images(paths: Sequence[str]) -> list[tuple[str, Image.Image]]:
    """(name, RGB image) pairs; the astronaut photo of scikit-image when `paths` is empty."""
    if not paths:
        from skimage import data

        return [("astronaut", to_rgb(Image.fromarray(data.astronaut())))]
    return [(pathlib.Path(p).stem, decode_image(p)) for p in paths]


def to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """RGB image -> ImageNet-normalised [3, size, size] float tensor (bicubic resize)."""
    pixels = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (tensor - mean) / std


def pca_rgb(patch: torch.Tensor) -> np.ndarray:
    """First three principal components of patch features [h, w, D], each min-max scaled -> [h, w, 3] in [0, 1]."""
    h, w, dim = patch.shape
    flat = patch.reshape(-1, dim).double()
    flat = flat - flat.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    components = flat @ v[:3].T
    low, high = components.min(dim=0).values, components.max(dim=0).values
    components = (components - low) / (high - low).clamp_min(1e-12)
    return components.reshape(h, w, 3).float().numpy()


@torch.no_grad()
def extract(model: DinoVisionTransformer, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Features of one image batch [1, 3, S, S]: cls [D], patch [S/p, S/p, D], registers [R, D]."""
    out = model.forward_features(batch)
    grid = batch.shape[-1] // model.patch_size
    return {
        "cls": out["x_norm_clstoken"][0].float().cpu(),
        "patch": out["x_norm_patchtokens"][0].reshape(grid, grid, -1).float().cpu(),
        "registers": out["x_norm_regtokens"][0].float().cpu(),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    output_dir = pathlib.Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    is_random = args.pretrained_weights is None and args.weights is None
    device = torch.device(args.device) if args.device else default_device()

    model = backbone_from_args(args).to(device)
    size = args.image_size // model.patch_size * model.patch_size
    weights_note = (
        "RANDOM INIT (no weights given)" if is_random else f"weights {args.pretrained_weights or args.weights}"
    )
    logger.info(f"backbone: D={model.embed_dim}, depth={model.n_blocks}, patch={model.patch_size}, "
          f"registers={model.num_register_tokens}; {weights_note}; device {device}; images {size}x{size}")  # fmt: skip

    features: dict[str, dict[str, torch.Tensor]] = {}
    images = load_images(args.images)
    for index, (name, image) in enumerate(images):
        feats = extract(model, to_tensor(image, size).unsqueeze(0).to(device))
        features[name] = feats
        figure, axes = plt.subplots(1, 2, figsize=(8, 4.3))
        axes[0].imshow(image.resize((size, size), Image.Resampling.BICUBIC))
        axes[0].set_title(name)
        axes[1].imshow(pca_rgb(feats["patch"]), interpolation="nearest")
        axes[1].set_title("patch features, PCA 1-3" + (" (random init)" if is_random else ""))
        for axis in axes:
            axis.axis("off")
        figure.tight_layout()
        figure_path = output_dir / f"{name}_pca.png"
        figure.savefig(figure_path, dpi=100)
        plt.close(figure)
        logger.info(f"[{index + 1}/{len(images)}] {name}: cls {tuple(feats['cls'].shape)}, "
              f"patch {tuple(feats['patch'].shape)} -> {figure_path}")  # fmt: skip
    features_path = output_dir / "features.pt"
    torch.save(features, features_path)
    logger.info(
        f"wrote {features_path} ({len(features)} images){' with a RANDOMLY INITIALISED backbone' if is_random else ''}"
    )
    return features


if __name__ == "__main__":
    main()
