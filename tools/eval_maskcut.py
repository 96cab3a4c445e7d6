"""MaskCut unsupervised object discovery with a frozen backbone, evaluated class-agnostically on COCO.

    python tools/eval_maskcut.py --config-file CONFIG.yaml --pretrained-weights teacher_checkpoint.pth \
        --images coco/val2017 --annotations coco/annotations/instances_val2017.json \
        --output-dir out/maskcut [--crf] [--vis 20]

Hub-format weights: `--arch vit_base --patch-size 16 --weights FILE` instead of the config flags.
Writes `<output-dir>/results.json` (COCO detection results, score 1.0, image id then MaskCut order),
`<output-dir>/metrics.json` (class-agnostic AP / AP50 / AP75 for bbox and segm, fractions in [0, 1];
only with --annotations) and `<output-dir>/vis/<image_id>.png` overlays for the first --vis images.
Without --annotations, every image file in --images is processed (sorted, ids 1..n) and
`<output-dir>/images.json` lists the ids.
"""

import argparse
import json
import logging
import os
import pathlib
import sys
import time
from typing import Any, Sequence, get_args

from PIL import Image

from dinov2.data.decoding import decode_image
from dinov2.eval.setup import add_backbone_args, backbone_from_args
from dinov2.logging import setup_logging
from dinov2.run.submit import add_submit_args, run_or_submit
from dinov2.utils.device import default_device
from eval.maskcut import MaskCut, evaluate_class_agnostic, masks_to_coco_results, overlay_masks, sort_results
from eval.maskcut.maskcut import FeatureName

logger = logging.getLogger("tools.eval_maskcut")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("MaskCut evaluation", add_help=add_help)
    add_backbone_args(parser)
    parser.add_argument("--images", required=True, help="folder holding the images (COCO: val2017/)")
    parser.add_argument(
        "--annotations", default=None, help="COCO instances JSON; its images are processed and evaluated"
    )
    parser.add_argument("--output-dir", required=True, help="where results, metrics and overlays go")
    parser.add_argument("--crf", action="store_true", help="dense-CRF refinement of every mask (needs pydensecrf2)")
    parser.add_argument("--vis", type=int, default=0, help="write overlay PNGs for the first N images")
    parser.add_argument("--tau", type=float, default=0.15, help="cosine threshold of the affinity graph")
    parser.add_argument("--n-masks", type=int, default=3, help="NCut iterations (masks per image)")
    parser.add_argument("--fixed-size", type=int, default=480, help="square input side, a multiple of the patch size")
    parser.add_argument(
        "--feature", default="k", choices=list(get_args(FeatureName)), help="last-block features for the graph"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass and batched eigen-solve")
    parser.add_argument(
        "--max-images", type=int, default=None, help="process only the first N images (by id); metrics on those"
    )
    add_submit_args(parser, max_tasks=1)
    return parser


def _image_list(images_dir: pathlib.Path, annotations: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Image records {id, file_name[, width, height]} in ascending id order."""
    if annotations is not None:
        return sorted(annotations["images"], key=lambda record: record["id"])
    files = sorted(path for path in images_dir.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under --images {images_dir}")
    return [{"id": index + 1, "file_name": str(path.relative_to(images_dir))} for index, path in enumerate(files)]


def _open_image(images_dir: pathlib.Path, record: dict[str, Any]) -> Image.Image:
    path = images_dir / record["file_name"]
    if not path.is_file():
        raise FileNotFoundError(f"image {path} (id {record['id']}) listed in --annotations is missing from --images")
    image = decode_image(path)
    expected = (record.get("width"), record.get("height"))
    if None not in expected and image.size != expected:
        raise ValueError(
            f"image {path} is {image.size[0]}x{image.size[1]} but --annotations says {expected[0]}x{expected[1]}"
        )
    record.setdefault("width", image.size[0])
    record.setdefault("height", image.size[1])
    return image


def _discover_objects(
    maskcut: MaskCut,
    images_dir: pathlib.Path,
    records: list[dict[str, Any]],
    *,
    batch_size: int,
    n_vis: int,
    vis_dir: pathlib.Path,
) -> list[dict[str, Any]]:
    """MaskCut over the images in batches; COCO results in record order, overlays for the first n_vis images."""
    results: list[dict[str, Any]] = []
    n_done = 0
    start = time.perf_counter()
    for first in range(0, len(records), batch_size):
        batch_records = records[first : first + batch_size]
        images = [_open_image(images_dir, record) for record in batch_records]
        batch_masks = maskcut(images)
        for record, image, masks in zip(batch_records, images, batch_masks, strict=True):
            image_results = masks_to_coco_results(record["id"], masks)
            results.extend(image_results)
            n_done += 1
            logger.info(
                "[%d/%d] image %s (%s): %d masks, %.2f s/image",
                n_done,
                len(records),
                record["id"],
                record["file_name"],
                len(image_results),
                (time.perf_counter() - start) / n_done,
            )
            if n_done <= n_vis:
                vis_dir.mkdir(exist_ok=True)
                overlay_masks(image, masks).save(vis_dir / f"{record['id']}.png")
    return results


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run MaskCut over the images, write results / metrics / overlays; returns the metrics dict ({} without GT)."""
    output_dir = pathlib.Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    images_dir = pathlib.Path(args.images)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"--images {images_dir} is not a folder")
    annotations = None
    if args.annotations is not None:
        with open(args.annotations) as file:
            annotations = json.load(file)
    records = _image_list(images_dir, annotations)
    if args.max_images is not None:
        records = records[: args.max_images]

    device = default_device()
    model = backbone_from_args(args).to(device)
    maskcut = MaskCut(
        model,
        tau=args.tau,
        n_masks=args.n_masks,
        fixed_size=args.fixed_size,
        feature=args.feature,
        use_crf=args.crf,
        device=device,
    )
    logger.info(
        "MaskCut on %d images, device %s: tau %s, N %d, fixed size %d, feature %s, crf %s",
        len(records),
        device,
        args.tau,
        args.n_masks,
        args.fixed_size,
        args.feature,
        args.crf,
    )
    results = _discover_objects(
        maskcut, images_dir, records, batch_size=args.batch_size, n_vis=args.vis, vis_dir=output_dir / "vis"
    )
    results = sort_results(results)
    with open(output_dir / "results.json", "w") as file:
        json.dump(results, file)
    logger.info("wrote %d results to %s", len(results), output_dir / "results.json")

    if annotations is None:
        with open(output_dir / "images.json", "w") as file:
            json.dump(records, file, indent=1)
        return {}
    image_ids = [record["id"] for record in records]
    metrics: dict[str, Any] = evaluate_class_agnostic(annotations, results, image_ids=image_ids)
    metrics.update(
        n_images=len(records),
        n_results=len(results),
        settings={
            "tau": args.tau,
            "n_masks": args.n_masks,
            "fixed_size": args.fixed_size,
            "feature": args.feature,
            "crf": args.crf,
            "annotations": os.fspath(args.annotations),
            "config_file": args.config_file,
            "pretrained_weights": args.pretrained_weights or args.weights,
            "arch": args.arch,
        },
    )
    with open(output_dir / "metrics.json", "w") as file:
        json.dump(metrics, file, indent=2)
    for iou_type in ("bbox", "segm"):
        values = metrics[iou_type]
        logger.info(
            "%s: AP %.1f  AP50 %.1f  AP75 %.1f",
            iou_type,
            100 * values["AP"],
            100 * values["AP50"],
            100 * values["AP75"],
        )
    return metrics


def cli(argv: Sequence[str] | None = None) -> int:
    run_or_submit(main, get_args_parser().parse_args(argv), name="dinov2:eval_maskcut", echo=print)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
