"""Unreadable files are counted once, never re-read, and replaced by a draw that ignores file names.

Probe of the fault: 20 unreadable files among 200 (10 %), named contiguously, stopped a shuffled stream at
`max_bad_image_fraction=0.2` after 80 draws ("41 of 123 image decodes failed"), because each failure moved on
to the next file in sorted order and counted every bad neighbour again.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinov2.data import BadImageError, make_data_loader, make_dataset
from dinov2.data.datasets import ImageFolder
from dinov2.data.datasets.extended import replacement_index

ROOT = Path(__file__).resolve().parents[3]
N_FILES = 200
LAYOUTS = {"contiguous": set(range(100, 120)), "interleaved": set(range(0, N_FILES, 10))}


def _write_folder(root: Path, bad: set[int]) -> Path:
    """N_FILES 8x8 PNGs whose red value is the file number; the files in `bad` hold no image."""
    root.mkdir(parents=True)
    for i in range(N_FILES):
        path = root / f"img{i:03d}.png"
        if i in bad:
            path.write_bytes(b"not an image")
        else:
            Image.new("RGB", (8, 8), (i, 0, 0)).save(path)
    return root


def _file_number(image: Image.Image) -> int:
    return image.getpixel((0, 0))[0]


def _collate_file_numbers(batch: list) -> list[int]:
    return [number for number, _ in batch]


class CountingImageFolder(ImageFolder):
    """Counts the reads of each file (single process only)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.reads = np.zeros(len(self), dtype=np.int64)

    def get_image_data(self, index: int) -> bytes:
        self.reads[index] += 1
        return super().get_image_data(index)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_bad_file_counted_once_across_workers(tmp_path: Path, layout: str) -> None:
    root = _write_folder(tmp_path / layout, LAYOUTS[layout])
    dataset = make_dataset(dataset_str=f"ImageFolder:root={root}", transform=_file_number, max_bad_image_fraction=0.2)
    loader = make_data_loader(
        dataset=dataset, batch_size=8, num_workers=2, seed=0, sampler_type="infinite",
        collate_fn=_collate_file_numbers,
    )  # fmt: skip
    drawn = []
    for batch in loader:
        drawn.extend(batch)
        if len(drawn) >= 5 * N_FILES:
            break
    # 5 epochs of draws (each bad file drawn ~5 times): the run goes on and each bad file is counted once
    assert dataset.bad_images.totals() == (N_FILES, len(LAYOUTS[layout]))
    assert not set(drawn) & LAYOUTS[layout]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_failed_file_is_not_read_again(tmp_path: Path, layout: str) -> None:
    bad = LAYOUTS[layout]
    dataset = CountingImageFolder(root=str(_write_folder(tmp_path / layout, bad)), max_bad_image_fraction=0.2)
    for _ in range(3):
        for index in range(N_FILES):
            dataset[index]
    assert dataset.reads[sorted(bad)].tolist() == [1] * len(bad)
    assert dataset.bad_images.totals() == (N_FILES, len(bad))


def test_replacement_is_a_seeded_draw_independent_of_names_workers_and_history(tmp_path: Path) -> None:
    bad = LAYOUTS["contiguous"]
    root = _write_folder(tmp_path / "data", bad)
    fresh = ImageFolder(root=str(root), transform=_file_number, max_bad_image_fraction=0.2)
    used = [fresh[index][0] for index in range(N_FILES)]
    for index in bad:
        draws = [replacement_index(index, draw, N_FILES) for draw in range(1, 20)]
        assert used[index] == next(candidate for candidate in draws if candidate not in bad)
    # not the sorted-order neighbour (120) for all of them: the draws are spread over the dataset
    assert len({used[index] for index in bad}) >= 15

    # a process that already knows every bad file (or a resumed one that knows none) returns the same images
    for index in bad:
        fresh.bad_images.mark(index, failed=True)
    assert [fresh[index][0] for index in range(N_FILES)] == used
    loader = make_data_loader(
        dataset=ImageFolder(root=str(root), transform=_file_number, max_bad_image_fraction=0.2),
        batch_size=8, num_workers=2, sampler_type="epoch", shuffle=False, collate_fn=_collate_file_numbers,
    )  # fmt: skip
    assert [number for batch in loader for number in batch] == used


def test_budget_counts_distinct_files(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "data", LAYOUTS["contiguous"])
    strict = ImageFolder(root=str(root), max_bad_image_fraction=0.05)  # budget 10 of 200 files
    reached = []
    with pytest.raises(BadImageError, match=r"11 of the 200 images .* train.max_bad_image_fraction=0.05"):
        for index in range(N_FILES):
            strict[index]
            reached.append(strict.bad_images.totals()[1])
    assert reached[:100] == [0] * 100 and max(reached) <= 10 and len(reached) < 110

    all_bad = tmp_path / "all_bad"
    all_bad.mkdir()
    for i in range(3):
        (all_bad / f"{i}.png").write_bytes(b"no")
    with pytest.raises(BadImageError, match="none of the 3 images"):
        ImageFolder(root=str(all_bad), max_bad_image_fraction=1.0)[0]


def test_training_run_goes_on_at_ten_percent_bad_with_threshold_0_2(tmp_path: Path) -> None:
    from dinov2.train.train import get_args_parser, main

    root = _write_folder(tmp_path / "images", LAYOUTS["contiguous"])
    output_dir = tmp_path / "run"
    args = [
        "--config-file", str(ROOT / "configs" / "tiny" / "dinov2_test.yaml"), "--output-dir", str(output_dir),
        "--no-resume", f"train.dataset_path=ImageFolder:root={root}", "train.max_bad_image_fraction=0.2",
        "train.batch_size_per_gpu=32", "train.OFFICIAL_EPOCH_LENGTH=4", "optim.epochs=1", "optim.warmup_epochs=0",
        "teacher.warmup_teacher_temp_epochs=0", "optim.freeze_last_layer_epochs=0",
    ]  # fmt: skip
    main(get_args_parser().parse_args(args))  # 128 draws; the fault stopped this stream after 80
    records = [json.loads(line) for line in (output_dir / "training_metrics.json").read_text().splitlines()]
    assert records[-1]["iteration"] == 3
    bad_images = records[-1]["last"]["bad_images"]
    assert 0 < bad_images <= 20
