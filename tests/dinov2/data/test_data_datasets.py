"""Datasets, dataset strings and bad-input handling."""

import importlib.util
import io
import logging
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2.data import BadImageError, DatasetWithEnumeratedTargets, make_data_loader, make_dataset, parse_dataset_str
from dinov2.data.datasets import Digits, DigitsSplit, ImageFolder, ImageNet, ImageNet22k, ImageNetSplit

REPO = Path(__file__).resolve().parents[3]


def _jpeg_bytes(color: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _to_index_collate(batch: list) -> list:
    return batch


def test_image_folder_classes_and_flat(tmp_path: Path) -> None:
    for class_name, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        for i in range(2):
            _write(tmp_path / "classes" / class_name / f"{i}.jpg", _jpeg_bytes(color))
    (tmp_path / "classes" / "notes.txt").write_text("not an image, ignored")
    dataset = make_dataset(dataset_str=f"ImageFolder:root={tmp_path / 'classes'}")
    assert isinstance(dataset, ImageFolder) and dataset.classes == ["cat", "dog"]
    assert len(dataset) == 4 and dataset.get_targets().tolist() == [0, 0, 1, 1]
    image, target = dataset[2]
    assert image.mode == "RGB" and image.size == (12, 10) and target == 1
    assert image.getpixel((5, 5))[2] > 200

    for i in range(3):
        _write(tmp_path / "flat" / f"img{i}.png", _jpeg_bytes((0, 255, 0)))
    flat = make_dataset(dataset_str=f"ImageFolder:root={tmp_path / 'flat'}", transform=lambda im: im.size)
    assert len(flat) == 3 and not flat.is_labeled
    assert flat[1] == ((12, 10), -1)

    _write(tmp_path / "flat" / "sub" / "x.jpg", _jpeg_bytes((0, 0, 0)))
    with pytest.raises(ValueError, match="both images at the top level"):
        ImageFolder(root=str(tmp_path / "flat"))


def test_corrupt_images_are_skipped_counted_and_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = _jpeg_bytes((200, 100, 50))
    for i in range(8):
        _write(tmp_path / "data" / f"{i}.jpg", good)
    _write(tmp_path / "data" / "3.jpg", good[: len(good) // 2])  # truncated JPEG
    _write(tmp_path / "data" / "5.jpg", b"this is not an image")
    dataset = ImageFolder(root=str(tmp_path / "data"), max_bad_image_fraction=0.3)
    with caplog.at_level(logging.WARNING, logger="dinov2.data.datasets.extended"):
        images = [dataset[i] for i in range(8)]
    assert all(image.size == (12, 10) for image, _ in images)
    assert dataset.bad_images.totals() == (8, 2)  # distinct files read, distinct files failed
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "3.jpg" in warned and "5.jpg" in warned

    # The record is shared with DataLoader workers and read in the main process.
    dataset.bad_images.reset()
    loader = make_data_loader(
        dataset=dataset,
        batch_size=4,
        num_workers=2,
        sampler_type="epoch",
        shuffle=False,
        drop_last=False,
        collate_fn=_to_index_collate,
    )
    assert sum(len(batch) for batch in loader) == 8
    assert dataset.bad_images.totals() == (8, 2)

    strict = ImageFolder(root=str(tmp_path / "data"), max_bad_image_fraction=0.15)
    strict[3]  # one failure: 1 <= 0.15 * 8
    with pytest.raises(BadImageError, match="2 of the 8 images .* train.max_bad_image_fraction=0.15"):
        strict[5]


def _load_tool() -> object:
    spec = importlib.util.spec_from_file_location("prepare_imagenet", REPO / "tools" / "prepare_imagenet.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_imagenet_extra_files_and_samples(tmp_path: Path) -> None:
    root, extra = tmp_path / "imagenet", tmp_path / "extra"
    (root).mkdir()
    (root / "labels.txt").write_text('n01440764,tench\nn01443537,"goldfish, Carassius auratus"\n')
    for wnid, numbers in (("n01440764", (10026, 7)), ("n01443537", (3,))):
        for n in numbers:
            _write(root / "train" / wnid / f"{wnid}_{n}.JPEG", _jpeg_bytes((n % 255, 0, 0)))
    _write(root / "val" / "n01443537" / "ILSVRC2012_val_00000042.JPEG", _jpeg_bytes((1, 2, 3)))
    _write(root / "test" / "ILSVRC2012_test_00000001.JPEG", _jpeg_bytes((1, 2, 3)))
    _write(root / "test" / "ILSVRC2012_test_00000002.JPEG", _jpeg_bytes((1, 2, 3)))

    assert _load_tool().main(["--root", str(root), "--extra", str(extra), "--splits", "TRAIN", "VAL", "TEST"]) == 0
    entries = np.load(extra / "entries-TRAIN.npy")
    assert entries.dtype.names == ("actual_index", "class_index", "class_id", "class_name")
    assert entries.dtype["actual_index"] == np.dtype("<u4") and entries.dtype["class_index"] == np.dtype("<u4")
    # torchvision ImageFolder order: sorted class folders, sorted file names.
    assert entries["actual_index"].tolist() == [10026, 7, 3]
    assert entries["class_index"].tolist() == [0, 0, 1]
    assert np.load(extra / "class-names-TRAIN.npy").tolist() == ["tench", "goldfish, Carassius auratus"]
    assert np.load(extra / "class-ids-VAL.npy").tolist() == ["n01443537"]
    test_entries = np.load(extra / "entries-TEST.npy")
    assert test_entries["actual_index"].tolist() == [1, 2]
    assert test_entries["class_index"].tolist() == [2**32 - 1] * 2

    train = make_dataset(dataset_str=f"ImageNet:split=TRAIN:root={root}:extra={extra}")
    assert isinstance(train, ImageNet) and len(train) == 3
    image, target = train[1]
    assert image.mode == "RGB" and target == 0
    assert train.get_class_id(2) == "n01443537" and train.get_class_name(0) == "tench"
    assert train.find_class_name(1) == "goldfish, Carassius auratus"
    assert train.get_targets().tolist() == [0, 0, 1]
    val = ImageNet(split=ImageNetSplit.VAL, root=str(root), extra=str(extra))
    assert val[0][1] == 0 and val.describe(0).endswith("val/n01443537/ILSVRC2012_val_00000042.JPEG")
    test = ImageNet(split=ImageNetSplit.TEST, root=str(root), extra=str(extra))
    assert test[1][1] is None
    enumerated = DatasetWithEnumeratedTargets(test)
    assert enumerated[1][1] == (1, 1) and len(enumerated) == 2

    with pytest.raises(FileNotFoundError, match="prepare_imagenet.py"):
        ImageNet(split=ImageNetSplit.VAL, root=str(root), extra=str(tmp_path)).get_targets()


def test_imagenet22k_from_tarballs(tmp_path: Path) -> None:
    root, extra = tmp_path / "in22k", tmp_path / "extra22k"
    (root / "blocks").mkdir(parents=True)
    colors = {"n00000001": [(255, 0, 0), (0, 255, 0)], "n00000002": [(0, 0, 255)]}
    for wnid, class_colors in colors.items():
        tar_path = root / f"{wnid}.tar"
        with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i, color in enumerate(class_colors):
                data = _jpeg_bytes(color)
                if wnid == "n00000001" and i == 1:
                    compressor = zlib.compressobj(wbits=31)
                    data = compressor.compress(data) + compressor.flush()  # gzip-wrapped member
                info = tarfile.TarInfo(f"{wnid}_{i}.JPEG")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        with tarfile.open(tar_path) as tar:
            lines = [f"block {member.offset // 512}: {member.name}" for member in tar.getmembers()]
            end_block = (tar.offset + 511) // 512
        lines.append(f"block {end_block}: ** Block of NULs **")
        (root / "blocks" / f"{wnid}.log").write_text("\n".join(lines) + "\n")

    ImageNet22k(root=str(root), extra=str(extra)).dump_extra()
    entries = np.load(extra / "entries.npy")
    assert entries.dtype["start_offset"] == np.dtype("<u8")
    dataset = make_dataset(dataset_str=f"ImageNet22k:root={root}:extra={extra}")
    assert len(dataset) == 3 and dataset.get_targets().tolist() == [0, 0, 1]
    for index, expected in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        image, _ = dataset[index]
        assert np.abs(np.asarray(image)[5, 5].astype(int) - np.array(expected)).max() < 8
    assert dataset.find_class_id(1) == "n00000002"
    assert dataset.bad_images.totals() == (3, 0)


def test_digits_split_sizes_and_determinism() -> None:
    train = make_dataset(dataset_str="Digits:split=TRAIN")
    val = Digits(split=DigitsSplit.VAL)
    assert len(train) == 1400 and len(val) == 397
    image, target = train[0]
    assert image.mode == "RGB" and image.size == (32, 32) and 0 <= target <= 9
    assert np.bincount(val.get_targets(), minlength=10).min() >= 36  # stratified: ~39-40 per class
    again = Digits(split=DigitsSplit.TRAIN)
    assert np.array_equal(again.get_targets(), train.get_targets())
    assert np.array_equal(np.asarray(again[17][0]), np.asarray(train[17][0]))
    pixels = np.asarray(image)
    assert pixels.dtype == np.uint8 and pixels.max() > 200
    with_transform = Digits(split=DigitsSplit.VAL, transform=lambda im: torch.tensor(np.asarray(im)).sum())
    assert isinstance(with_transform[0][0], torch.Tensor)


@pytest.mark.parametrize(
    ("dataset_str", "error", "match"),
    [
        ("CIFAR10:root=/tmp", ValueError, "unknown dataset 'CIFAR10'.*'Digits'"),
        ("ImageFolder:root=/tmp:split=TRAIN", ValueError, "unknown key 'split' for ImageFolder.*allowed keys"),
        ("ImageNet:split=TRAIN", ValueError, r"lacks \['root', 'extra'\]"),
        ("ImageFolder:root", ValueError, "malformed token 'root'"),
        ("Digits:split=TEST", ValueError, r"split='TEST'.*\['TRAIN', 'VAL'\]"),
        ("Digits:split=TRAIN:split=VAL", ValueError, "given twice"),
        ("ImageFolder:root=/nonexistent/dir", FileNotFoundError, "root='/nonexistent/dir'.*not an existing directory"),
    ],
)
def test_dataset_string_errors(dataset_str: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make_dataset(dataset_str=dataset_str)


def test_parse_dataset_str() -> None:
    assert parse_dataset_str("ImageNet:split=VAL:root=/a:extra=/b") == (
        "ImageNet",
        {"split": "VAL", "root": "/a", "extra": "/b"},
    )
    assert os.sep == "/"
