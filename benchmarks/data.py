"""Images/s per worker of the full multi-crop pipeline (decode + 2 global + N local crops), ours vs official-style.

    python benchmarks/data.py                     # 2 x 224 + 10 x 96, 4 rounds of 16 images each
    python benchmarks/data.py --rounds 8 --local-crops-number 8
    python benchmarks/data.py --default-allocator   # without the worker malloc tuning, for comparison

Input: real photos bundled with scikit-image (astronaut, chelsea, coffee, rocket, camera, coins,
immunohistochemistry, hubble_deep_field), JPEG-encoded in memory, so each sample pays a JPEG decode as a
dataset read does. Both pipelines run in this single process with one thread (a DataLoader worker).

Reference: written the way the official DataAugmentationDINO works: PIL image, torchvision v1 transforms,
one crop at a time (RandomResizedCrop bicubic + flip, RandomApply(ColorJitter) p=0.8, RandomGrayscale
p=0.2, GaussianBlur(9, 0.1-2.0) applied with the effective probabilities 0.0 / 0.9 / 0.5, RandomSolarize
p=0.2 on the second global crop, ToTensor + Normalize).
Ours: dinov2.data.DataAugmentationDINO with the same parameters and probabilities (the default blur
probabilities equal the reference's effective ones).
Both run in one process set up like a make_data_loader worker (one thread, glibc malloc thresholds
raised by tune_allocator_for_data_workers). Rounds alternate reference / ours so that machine noise hits
both alike; the median round gives images/s and the ratio ours / reference (target >= 1.5).
"""

import argparse
import io
import statistics
import time
from typing import Any, Callable

import torch
from PIL import Image
from torchvision import transforms

from dinov2.data import DataAugmentationDINO, decode_image, to_rgb
from dinov2.data.loaders import tune_allocator_for_data_workers

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "immunohistochemistry", "hubble_deep_field")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_photos() -> list[bytes]:
    import skimage.data

    encoded = []
    for name in PHOTOS:
        image = to_rgb(Image.fromarray(getattr(skimage.data, name)()))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


def make_reference_pipeline(*, local_crops_number: int, global_size: int, local_size: int) -> Callable[[Any], Any]:
    """One-crop-at-a-time PIL + torchvision v1 pipeline with the official parameters."""
    bicubic = transforms.InterpolationMode.BICUBIC

    def blur(probability: float) -> transforms.RandomApply:
        return transforms.RandomApply([transforms.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=probability)

    def geometric(size: int, scale: tuple[float, float]) -> transforms.Compose:
        return transforms.Compose(
            [
                transforms.RandomResizedCrop(size, scale=scale, interpolation=bicubic),
                transforms.RandomHorizontalFlip(p=0.5),
            ]
        )

    color = transforms.Compose(
        [
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
        ]
    )
    normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    global_geometric = geometric(global_size, (0.32, 1.0))
    local_geometric = geometric(local_size, (0.05, 0.32))
    global_1 = transforms.Compose([color, blur(0.0), normalize])
    global_2 = transforms.Compose([color, blur(0.9), transforms.RandomSolarize(128, p=0.2), normalize])
    local = transforms.Compose([color, blur(0.5), normalize])

    def pipeline(image: Image.Image) -> dict[str, Any]:
        crops = [global_1(global_geometric(image)), global_2(global_geometric(image))]
        return {
            "global_crops": crops,
            "global_crops_teacher": crops,
            "local_crops": [local(local_geometric(image)) for _ in range(local_crops_number)],
            "offsets": (),
        }

    return pipeline


def time_round(pipeline: Callable[[Any], Any], photos: list[bytes], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        for data in photos:
            pipeline(decode_image(data))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds per pipeline (alternated)")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the photos per round")
    parser.add_argument("--local-crops-number", type=int, default=10)
    parser.add_argument("--global-crops-size", type=int, default=224)
    parser.add_argument("--local-crops-size", type=int, default=96)
    parser.add_argument(
        "--default-allocator", action="store_true", help="keep glibc's default malloc thresholds (not like workers)"
    )
    args = parser.parse_args()

    torch.set_num_threads(1)
    # As make_data_loader does in every worker; both pipelines run in this process, so both benefit.
    tuned = False if args.default_allocator else tune_allocator_for_data_workers()
    photos = load_photos()
    sizes = {"global_size": args.global_crops_size, "local_size": args.local_crops_size}
    pipelines = {
        "reference": make_reference_pipeline(local_crops_number=args.local_crops_number, **sizes),
        "ours": DataAugmentationDINO(
            (0.32, 1.0),
            (0.05, 0.32),
            args.local_crops_number,
            args.global_crops_size,
            args.local_crops_size,
        ),
    }
    n_images = args.repeats * len(photos)
    for pipeline in pipelines.values():
        time_round(pipeline, photos, 1)
    seconds: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(args.rounds):
        for name, pipeline in pipelines.items():
            seconds[name].append(time_round(pipeline, photos, args.repeats))
    rate = {name: n_images / statistics.median(values) for name, values in seconds.items()}
    print(
        f"multi-crop pipeline 2x{args.global_crops_size} + {args.local_crops_number}x{args.local_crops_size}, "
        f"{n_images} images per round, {args.rounds} rounds, 1 thread, malloc tuned for workers: {tuned}"
    )
    for name in pipelines:
        print(f"  {name:9s} {rate[name]:7.1f} images/s per worker")
    print(f"  ratio ours / reference: {rate['ours'] / rate['reference']:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
