"""Write the ImageNet-1k `extra` metadata files that `ImageNet:split=...:root=...:extra=...` reads.

Usage:
    python tools/prepare_imagenet.py --root /data/imagenet --extra /data/imagenet-extra [--splits TRAIN VAL]

`root` holds train/<wnid>/*.JPEG, val/<wnid>/*.JPEG (validation images sorted into class folders),
optionally test/*.JPEG, and labels.txt (CSV `wnid,class name`). For each split this writes
entries-<SPLIT>.npy and, except for TEST, class-ids-<SPLIT>.npy and class-names-<SPLIT>.npy.
"""

import argparse
import logging
import sys

from dinov2.data.datasets import ImageNet, ImageNetSplit


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="ImageNet directory with train/, val/, labels.txt")
    parser.add_argument("--extra", required=True, help="output directory of the metadata files")
    parser.add_argument(
        "--splits",
        nargs="+",
        default=["TRAIN", "VAL"],
        choices=[split.name for split in ImageNetSplit],
        help="splits to index (default: TRAIN VAL)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for split_name in args.splits:
        dataset = ImageNet(split=ImageNetSplit[split_name], root=args.root, extra=args.extra)
        dataset.dump_extra()
        print(f"{split_name}: {len(dataset)} images indexed into {args.extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
