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

import torch
from PIL import Image

from dinov2.data.decoding import decode_image
from dinov2.eval.setup import add_backbone_args, backbone_from_args, check_backbone_args
from dinov2.logging import setup_logging
from dinov2.run.submit import add_submit_args, run_or_submit
from dinov2.utils.device import default_device
from eval.maskcut import MaskCut, evaluate_class_agnostic, masks_to_coco_results, overlay_masks, sort_results
from eval.maskcut.maskcut import FeatureName
from eval.maskcut.ncut import estimate_eigensolve_seconds

logger = logging.getLogger("tools.eval_maskcut")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# above this many patches per image the dense eigen-solves dominate (one solve of 1,024 patches takes
# under a second on one CPU core, 3,600 patches about 40 times longer) and the run warns with an estimate
SLOW_PATCH_COUNT = 1024


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
    """MaskCut over the images in batches; COCO results in record order, overlays for the first n_vis images.

    Logs a line per image with its own time: images of one batch share the forward pass and the batched
    eigen-solves, so each is given an equal share of its batch's time (with --batch-size 1, the image's time).
    """
    results: list[dict[str, Any]] = []
    n_done = 0
    n_batches = (len(records) + batch_size - 1) // batch_size
    start = time.perf_counter()
    for batch_index, first in enumerate(range(0, len(records), batch_size)):
        batch_start = time.perf_counter()
        batch_records = records[first : first + batch_size]
        if n_batches > 1:
            logger.info("batch %d/%d: images %d-%d", batch_index + 1, n_batches, first + 1, first + len(batch_records))
        images = [_open_image(images_dir, record) for record in batch_records]
        batch_masks = maskcut(images)
        image_seconds = (time.perf_counter() - batch_start) / len(batch_records)
        for record, image, masks in zip(batch_records, images, batch_masks, strict=True):
            image_results = masks_to_coco_results(record["id"], masks)
            results.extend(image_results)
            n_done += 1
            elapsed = time.perf_counter() - start
            logger.info(
                "[%d/%d] image %s (%s): %d masks in %.2f s%s; elapsed %s, eta %s",
                n_done,
                len(records),
                record["id"],
                record["file_name"],
                len(image_results),
                image_seconds,
                f" (1/{len(batch_records)} of its batch)" if len(batch_records) > 1 else "",
                _clock(elapsed),
                _clock(elapsed / n_done * (len(records) - n_done)),
            )
            if n_done <= n_vis:
                vis_dir.mkdir(exist_ok=True)
                overlay_masks(image, masks).save(vis_dir / f"{record['id']}.png")
    return results


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def warn_if_slow(maskcut: MaskCut, *, device: torch.device, n_images: int) -> float | None:
    """Warn before the run when the patch grid makes the eigen-solves slow; returns the estimate (s per image).

    Above `SLOW_PATCH_COUNT` patches, one solve is timed at that size on `device` and scaled by the cubic cost
    (`eval.maskcut.ncut.estimate_eigensolve_seconds`); None below it.
    """
    n_patches = maskcut.grid_size[0] * maskcut.grid_size[1]
    if n_patches <= SLOW_PATCH_COUNT:
        return None
    per_image = maskcut.n_masks * estimate_eigensolve_seconds(n_patches, device, calibration_size=SLOW_PATCH_COUNT)
    smaller = max(maskcut.patch_size, maskcut.fixed_size // 2 // maskcut.patch_size * maskcut.patch_size)
    speedup = (maskcut.fixed_size / smaller) ** 6
    logger.warning(
        "--fixed-size %d at patch size %d gives %d patches: the eigen-solves take up to about %.0f s per image here "
        "(%d masks x a dense %d x %d solve; ~%s for %d images). Lower --fixed-size to go faster, e.g. "
        "--fixed-size %d (%d patches, ~%.0fx faster); the cost grows with the cube of the patch count.",
        maskcut.fixed_size,
        maskcut.patch_size,
        n_patches,
        per_image,
        maskcut.n_masks,
        n_patches,
        n_patches,
        _clock(per_image * n_images),
        n_images,
        smaller,
        (smaller // maskcut.patch_size) ** 2,
        speedup,
    )
    return per_image


def check(args: argparse.Namespace) -> None:
    """The inputs, checked before anything runs or is submitted: --images, --annotations, the counts and the
    backbone flags. Raises FileNotFoundError / ValueError naming the flag."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {args.max_images}")
    if not pathlib.Path(args.images).is_dir():
        raise FileNotFoundError(f"--images {args.images} is not a folder")
    if args.annotations is not None and not pathlib.Path(args.annotations).is_file():
        raise FileNotFoundError(f"--annotations {args.annotations} is not a file")
    check_backbone_args(args)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run MaskCut over the images, write results / metrics / overlays; returns the metrics dict ({} without GT).

    `args` must have passed `check` (`cli` runs it first).
    """
    output_dir = pathlib.Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(output_dir)
    images_dir = pathlib.Path(args.images)
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
    warn_if_slow(maskcut, device=device, n_images=len(records))
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
    run_or_submit(main, get_args_parser().parse_args(argv), name="dinov2:eval_maskcut", check=check, echo=print)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
