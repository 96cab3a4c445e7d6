r"""Last-layer CLS self-attention maps (the SimDINO paper's Figure 5) for any checkpoint, as PNG overlays.

Examples:
    python tools/visualize_attention.py --config-file RUN/config.yaml \
        --pretrained-weights RUN/eval/training_199/teacher_checkpoint.pth --output-dir attn/
    python tools/visualize_attention.py --arch dinov2_vits14 --weights dinov2_vits14_pretrain.pth \
        --images photo1.jpg photo2.jpg --output-dir attn/
Without --images it uses real photos that scikit-image ships (astronaut, chelsea, coffee). The map is the
mean over heads of the CLS token's attention to the patches (registers excluded), upsampled to the image.
Writes `<name>_attention.png` per image (image | overlay) and `attention_grid.png` (all overlays).
"""

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dinov2.data.decoding import decode_image, to_rgb  # noqa: E402
from dinov2.eval.attention_maps import (  # noqa: E402
    attention_overlays,
    save_attention_figure,
    save_image_and_attention,
)
from dinov2.eval.setup import add_backbone_args, backbone_from_args  # noqa: E402
from dinov2.logging import setup_logging  # noqa: E402
from dinov2.utils.device import default_device  # noqa: E402

logger = logging.getLogger("tools.visualize_attention")
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee")


def load_images(paths: list[str]) -> list[tuple[str, Image.Image]]:
    """`(name, RGB image)` of each file, or of scikit-image's bundled photos when `paths` is empty."""
    if paths:
        return [(Path(path).stem, decode_image(path)) for path in paths]
    from skimage import data

    return [(name, to_rgb(Image.fromarray(getattr(data, name)()))) for name in SKIMAGE_PHOTOS]


def default_title(weights: str | None, config_file: str | None = None) -> str:
    """The figure title naming what is shown: a training run's teacher export
    `<run>/eval/training_199/teacher_checkpoint.pth` -> `<run> (training_199 teacher)` (the path is resolved, so
    a relative one names the run too); any other file -> `<folder>/<file>`; no weights -> `random init`, with
    the config's folder when one is given."""
    if not weights:
        return f"random init ({Path(config_file).resolve().parent.name})" if config_file else "random init"
    path = Path(weights).resolve()
    if path.parent.parent.name == "eval" and path.parent.name.startswith("training_"):
        return f"{path.parents[2].name} ({path.parent.name} teacher)"
    return f"{path.parent.name}/{path.name}"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_args(parser)
    parser.add_argument("--images", nargs="*", default=[], help="image files (default: scikit-image photos)")
    parser.add_argument("--image-size", type=int, default=224, help="shorter side in pixels before patching")
    parser.add_argument("--output-dir", required=True, help="where the PNGs are written")
    parser.add_argument(
        "--title",
        default=None,
        help="figure title (default: the run and checkpoint, e.g. 'myrun (training_199 teacher)')",
    )
    return parser


def main(args: argparse.Namespace) -> list[Path]:
    """Write `<name>_attention.png` per image and `attention_grid.png`; returns the written paths."""
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = default_device()
    model = backbone_from_args(args).to(device)
    images = load_images(args.images)
    overlays = attention_overlays(model, [image for _, image in images], size=args.image_size, device=device)
    title = args.title or default_title(args.pretrained_weights or args.weights, args.config_file)
    written = []
    for (name, _), (shown, heat) in zip(images, overlays, strict=True):
        path = output_dir / f"{name}_attention.png"
        save_image_and_attention(shown, heat, str(path), title=f"{title}: {name}")
        written.append(path)
        logger.info("wrote %s", path)
    grid_path = output_dir / "attention_grid.png"
    save_attention_figure([("CLS attention", overlays)], [name for name, _ in images], str(grid_path), title=title)
    written.append(grid_path)
    logger.info("wrote %s", grid_path)
    return written


if __name__ == "__main__":
    setup_logging()
    with torch.inference_mode():
        for written_path in main(get_args_parser().parse_args()):
            print(written_path)
