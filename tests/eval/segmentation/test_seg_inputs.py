"""tools/eval_segmentation.py checks its inputs before mmengine starts: one clear error per mistake."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from seg_testdata import write_ade20k_like

from tools.eval_segmentation import check, cli, get_args_parser

BACKBONE = ["--arch", "vit_tiny", "--patch-size", "8", "--opts", "student.depth=1"]


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return write_ade20k_like(tmp_path / "ADEChallengeData2016", n_train=2, n_val=1)


def run_cli(data_root: Path, output_dir: Path, *extra: str) -> None:
    cli([*BACKBONE, "--data-root", str(data_root), "--output-dir", str(output_dir), *extra])


def test_a_valid_layout_passes(data_root: Path, tmp_path: Path) -> None:
    check(get_args_parser().parse_args([*BACKBONE, "--data-root", str(data_root), "--output-dir", str(tmp_path)]))


@pytest.mark.parametrize(
    ("break_it", "error", "message"),
    [
        (lambda root: shutil.rmtree(root), FileNotFoundError, r"--data-root .* is not a folder; it must hold images/"),
        (lambda root: shutil.rmtree(root / "annotations" / "validation"), FileNotFoundError,
         r"has no annotations/validation/ folder"),
        (lambda root: next((root / "annotations" / "training").glob("*.png")).unlink(), FileNotFoundError,
         r"1 images in .*images/training have no label map"),
        (lambda root: [Image.new("RGB", Image.open(path).size).save(path)
                       for path in (root / "annotations" / "training").glob("*.png")], ValueError,
         r"PIL mode 'RGB'; label maps must be single-channel"),
        (lambda root: [Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
                       for path in (root / "annotations" / "validation").glob("*.png")], ValueError,
         r"label map of .* is \(8, 8\), its image is"),
    ],
)  # fmt: skip
def test_broken_layouts_fail_before_anything_runs(data_root, tmp_path, break_it, error, message) -> None:
    break_it(data_root)
    with pytest.raises(error, match=message):
        run_cli(data_root, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before the output folder or mmengine's work dir exist


def test_bad_flags_fail_before_anything_runs(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="weights /nonexistent.pth"):
        run_cli(data_root, tmp_path / "out", "--weights", "/nonexistent.pth")
    with pytest.raises(ValueError, match="--iters=0 must be at least 1"):
        run_cli(data_root, tmp_path / "out", "--iters", "0")
    assert not (tmp_path / "out").exists()
