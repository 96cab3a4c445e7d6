"""Turn your own video into a DAVIS-2017 folder that tools/eval_davis.py reads, no download needed.

    python tools/make_davis_layout.py --frames my_clip/ --first-mask my_clip_mask.png --out my_davis
    python tools/make_davis_layout.py --video my_clip.mp4 --first-mask my_clip_mask.png --out my_davis \
        [--masks my_clip_masks/] [--sequence my_clip] [--short-side 480] [--max-frames 50]

Input: the frames (a folder of images, in file-name order, or a video file read with OpenCV) and the object
mask of the first frame, a PNG of the frame's size: a palette or grey PNG whose pixel values are object ids
(0 background, 1..K objects, 255 void; a 0/255 mask is one object), or an RGB PNG where every distinct
non-black colour is one object. `--masks DIR` adds the masks of every frame (same names as the frames, same
encoding, colours numbered as in the first mask) so that eval_davis can score J&F; without it the folder is
for `eval_davis --propagate-only`.

Output (`--out`, added to when it exists; a sequence of the same name is replaced):

    OUT/JPEGImages/<resolution>/<sequence>/00000.jpg ...
    OUT/Annotations/<resolution>/<sequence>/00000.png [...]   palette PNGs of object ids
    OUT/ImageSets/<year>/<split>.txt                          the sequence names, one per line

Frames are resized to `--short-side` (480 as DAVIS's 480p; 0 keeps the size), masks with nearest neighbour.
"""

import argparse
import shutil
import sys
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs without installing

from dinov2.data.decoding import decode_image  # noqa: E402
from eval.davis.layout import VOID_LABEL, write_label_map  # noqa: E402

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Build a DAVIS-2017 folder from a video and its first-frame mask")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--frames", help="folder of frame images, taken in sorted file-name order")
    source.add_argument("--video", help="video file (anything OpenCV reads: mp4, avi, ...)")
    parser.add_argument("--first-mask", required=True, help="PNG mask of the first frame (object ids or colours)")
    parser.add_argument("--masks", default=None, help="folder of every frame's mask, for scoring (optional)")
    parser.add_argument("--out", required=True, help="DAVIS root to write (created, or added to)")
    parser.add_argument("--sequence", default=None, help="sequence name (default: the input's name)")
    parser.add_argument("--split", default="val", help="ImageSets/<year>/<split>.txt gets the sequence name")
    parser.add_argument("--year", default="2017", help="ImageSets/<year>/")
    parser.add_argument("--resolution", default="480p", help="JPEGImages/<resolution>/, Annotations/<resolution>/")
    parser.add_argument("--short-side", type=int, default=480, help="resize frames to this short side; 0: keep")
    parser.add_argument("--max-frames", type=int, default=None, help="keep only the first N frames (after --stride)")
    parser.add_argument("--stride", type=int, default=1, help="keep every N-th frame")
    return parser


def read_frames(*, frames_dir: str | None, video: str | None) -> Iterator[tuple[str, Image.Image]]:
    """(source name, RGB image) per frame, from a folder (sorted names) or a video file."""
    if frames_dir is not None:
        folder = Path(frames_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"--frames {folder} is not a folder")
        paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in FRAME_SUFFIXES)
        if not paths:
            raise FileNotFoundError(f"no frame images ({', '.join(FRAME_SUFFIXES)}) in --frames {folder}")
        for path in paths:
            yield path.stem, decode_image(path)
        return
    assert video is not None
    if not Path(video).is_file():
        raise FileNotFoundError(f"--video {video} is not a file")
    capture = cv2.VideoCapture(video)
    if not capture.isOpened():
        raise ValueError(f"OpenCV cannot open --video {video}")
    index = 0
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            yield f"{index:05d}", Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise ValueError(f"OpenCV read no frame from --video {video}")


def mask_to_object_ids(path: str | Path, colours: list[tuple[int, ...]] | None = None) -> tuple[np.ndarray, list]:
    """A mask PNG -> (uint8 [H, W] object ids, the colour list that numbered an RGB mask).

    Palette / grey PNGs: pixel values are the ids, except that a mask holding only 0 and 255 is one object
    (255 -> 1). RGB(A) PNGs: black is background, every other colour one object, numbered in sorted colour
    order, or in the order of `colours` when given (the first frame's, so that ids agree across frames).
    """
    with Image.open(path) as image:
        if image.mode in ("P", "L"):
            ids = np.array(image, dtype=np.uint8)
            if set(np.unique(ids).tolist()) <= {0, VOID_LABEL} and (ids == VOID_LABEL).any():
                ids = (ids == VOID_LABEL).astype(np.uint8)
            return ids, colours or []
        rgb = np.array(image.convert("RGB"))
    found = [tuple(int(v) for v in colour) for colour in np.unique(rgb.reshape(-1, 3), axis=0) if colour.any()]
    if colours is None:
        colours = found
    unknown = [colour for colour in found if colour not in colours]
    if unknown:
        raise ValueError(f"mask {path} has colours {unknown} that the first-frame mask does not have")
    if len(colours) > 254:
        raise ValueError(f"mask {path} has {len(colours)} colours; at most 254 objects fit a DAVIS label map")
    ids = np.zeros(rgb.shape[:2], dtype=np.uint8)
    for object_id, colour in enumerate(colours, start=1):
        ids[(rgb == np.array(colour, dtype=rgb.dtype)).all(axis=-1)] = object_id
    return ids, colours


def _resized_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    width, height = size
    if short_side <= 0:
        return width, height
    scale = short_side / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def build(args: argparse.Namespace) -> Path:
    """Write the sequence into `args.out`; returns the sequence folder under JPEGImages/."""
    if args.stride < 1 or (args.max_frames is not None and args.max_frames < 3):
        raise ValueError("--stride must be >= 1 and --max-frames >= 3 (DAVIS scores frames 1..T-2)")
    if not Path(args.first_mask).is_file():
        raise FileNotFoundError(f"--first-mask {args.first_mask} is not a file")
    if args.masks is not None and not Path(args.masks).is_dir():
        raise FileNotFoundError(f"--masks {args.masks} is not a folder")
    name = args.sequence or Path(args.frames or args.video).stem
    root = Path(args.out)
    frame_dir = root / "JPEGImages" / args.resolution / name
    mask_dir = root / "Annotations" / args.resolution / name
    for folder in (frame_dir, mask_dir):
        if folder.exists():
            shutil.rmtree(folder)
    frame_dir.mkdir(parents=True)

    first_ids, colours = mask_to_object_ids(args.first_mask)
    if not first_ids.any():
        raise ValueError(f"--first-mask {args.first_mask} holds no object (every pixel is 0)")
    n_written = 0
    for index, (source_name, frame) in enumerate(read_frames(frames_dir=args.frames, video=args.video)):
        if index % args.stride:
            continue
        if args.max_frames is not None and n_written == args.max_frames:
            break
        size = _resized_size(frame.size, args.short_side)
        if n_written == 0 and first_ids.shape != (frame.size[1], frame.size[0]):
            raise ValueError(
                f"--first-mask {args.first_mask} is {first_ids.shape[1]}x{first_ids.shape[0]} but the first frame is "
                f"{frame.size[0]}x{frame.size[1]} (W x H); draw the mask on the frame itself"
            )
        frame.resize(size, Image.Resampling.BICUBIC).save(frame_dir / f"{n_written:05d}.jpg", quality=95)
        ids = first_ids if n_written == 0 else None
        if n_written > 0 and args.masks is not None:
            mask_path = _mask_path(Path(args.masks), source_name)
            ids, _ = mask_to_object_ids(mask_path, colours)
            if ids.shape != (frame.size[1], frame.size[0]):
                raise ValueError(f"mask {mask_path} is {ids.shape[1]}x{ids.shape[0]}, its frame {frame.size}")
        if ids is not None:
            resized = Image.fromarray(ids).resize(size, Image.Resampling.NEAREST)
            write_label_map(mask_dir / f"{n_written:05d}.png", np.array(resized, dtype=np.uint8))
        n_written += 1
    if n_written < 3:
        raise ValueError(f"only {n_written} frames were read; DAVIS sequences need at least 3")

    list_file = root / "ImageSets" / args.year / f"{args.split}.txt"
    list_file.parent.mkdir(parents=True, exist_ok=True)
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()] if list_file.is_file() else []
    if name not in names:
        list_file.write_text("".join(f"{entry}\n" for entry in [*names, name]))
    print(
        f"wrote sequence {name!r}: {n_written} frames at {size[0]}x{size[1]}, "
        f"{int(first_ids.max())} object(s), {len(list(mask_dir.glob('*.png')))} mask(s) -> {root}"
    )
    return frame_dir


def _mask_path(masks_dir: Path, frame_name: str) -> Path:
    path = masks_dir / f"{frame_name}.png"
    if not path.is_file():
        raise FileNotFoundError(f"--masks {masks_dir} has no {path.name} for frame {frame_name}")
    return path


def cli(argv: Sequence[str] | None = None) -> int:
    build(get_args_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
