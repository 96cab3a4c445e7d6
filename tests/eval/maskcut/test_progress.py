"""tools/eval_maskcut.py progress: one line per image with that image's own time, NCut progress inside a batch,
and an up-front warning with an estimate and the flag to change when the patch grid makes the solves slow."""

import logging
import pathlib
import re
import time

import pytest
import skimage.data
import torch
from PIL import Image

from dinov2.eval.setup import build_backbone_for_eval
from eval.maskcut import MaskCut
from tools import eval_maskcut

TINY = dict(arch="vit_tiny", patch_size=16, opts=["student.depth=1", "crops.global_crops_size=64"])


@pytest.fixture(scope="module")
def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone_for_eval(**TINY)


def test_each_image_logs_its_own_time_and_batches_show_ncut_progress(tiny_vit, tmp_path, caplog, monkeypatch):
    """Batches of 2 and 1 images that take 10 s and 1 s (a stepped clock): 5, 5 and 1 s per image, where a
    running average would say 5, 5, 3.67."""
    photo = Image.fromarray(skimage.data.chelsea())
    for name in ("a.png", "b.png", "c.png"):
        photo.save(tmp_path / name)
    records = [{"id": index, "file_name": name} for index, name in enumerate(("a.png", "b.png", "c.png"), start=1)]
    maskcut = MaskCut(tiny_vit, n_masks=2, fixed_size=64)
    now = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    batch_costs = iter([10.0, 1.0])

    def timed_maskcut(images):
        masks = maskcut(images)
        now[0] += next(batch_costs)
        return masks

    caplog.set_level(logging.INFO)
    eval_maskcut._discover_objects(timed_maskcut, tmp_path, records, batch_size=2, n_vis=0, vis_dir=tmp_path / "vis")
    lines = [record.getMessage() for record in caplog.records if record.name == "tools.eval_maskcut"]
    image_lines = [line for line in lines if line.startswith("[")]
    assert len(image_lines) == 3
    seconds = [float(re.search(r"masks in ([\d.]+) s", line).group(1)) for line in image_lines]
    assert seconds == [5.0, 5.0, 1.0]
    assert "(1/2 of its batch)" in image_lines[0] and "of its batch" not in image_lines[2]
    assert image_lines[2].startswith("[3/3] image 3 (c.png)") and "elapsed 0:00:11, eta 0:00:00" in image_lines[2]
    assert [line for line in lines if line.startswith("batch ")] == ["batch 1/2: images 1-2", "batch 2/2: images 3-3"]
    ncut_lines = [record.getMessage() for record in caplog.records if record.name == "eval.maskcut.ncut"]
    assert ncut_lines[:2] == [
        "NCut iteration 1/2: 2 eigen-solves of 16 patches in 0.00 s",
        "NCut iteration 2/2: 2 eigen-solves of 16 patches in 0.00 s",
    ]


def test_a_large_patch_grid_warns_up_front_with_an_estimate_and_the_flag(tiny_vit, caplog):
    caplog.set_level(logging.WARNING)
    small = MaskCut(tiny_vit, n_masks=3, fixed_size=512)  # 32 x 32 = 1024 patches: no warning
    assert eval_maskcut.warn_if_slow(small, device=torch.device("cpu"), n_images=4) is None
    assert not caplog.records
    large = MaskCut(tiny_vit, n_masks=3, fixed_size=528)  # 33 x 33 = 1089 patches
    estimate = eval_maskcut.warn_if_slow(large, device=torch.device("cpu"), n_images=4)
    assert estimate is not None and estimate > 0
    (warning,) = [record.getMessage() for record in caplog.records]
    assert warning.startswith("--fixed-size 528 at patch size 16 gives 1089 patches: the eigen-solves take up to about")
    assert f"{estimate:.0f} s per image here" in warning
    assert "Lower --fixed-size to go faster, e.g. --fixed-size 256 (256 patches, ~77x faster)" in warning


def test_check_refuses_bad_inputs_before_anything_runs(tmp_path: pathlib.Path):
    parser = eval_maskcut.get_args_parser()
    base = ["--arch", "vit_tiny", "--images", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    with pytest.raises(FileNotFoundError, match="--annotations .*missing.json is not a file"):
        eval_maskcut.check(parser.parse_args([*base, "--annotations", str(tmp_path / "missing.json")]))
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        eval_maskcut.check(parser.parse_args([*base, "--batch-size", "0"]))
    with pytest.raises(FileNotFoundError, match="--images .* is not a folder"):
        eval_maskcut.cli([*base[:2], "--images", str(tmp_path / "none"), "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
