"""tools/make_davis_layout.py and tools/make_ade20k_layout.py: their folders are accepted by the evaluators'
readers, and the smoke examples of docs/davis.md, docs/segmentation.md and docs/maskcut.md run as written (no
download)."""

import json
import pathlib
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from eval.davis.layout import annotation_paths, frame_paths, read_label_map, read_sequence_names
from eval.segmentation.layout import check_ade20k_layout
from tools import eval_davis, make_ade20k_layout, make_davis_layout

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY_ARCH = ["--arch", "vit_tiny", "--patch-size", "16", "--opts", "student.depth=1", "crops.global_crops_size=64"]


def smoke_script(doc: str, root: pathlib.Path) -> str:
    """The bash block of `doc` that starts with `SMOKE=`, writing under `root` and run with this Python."""
    blocks = re.findall(r"```bash\n(SMOKE=.*?)```", (REPO / "docs" / doc).read_text(), flags=re.S)
    assert len(blocks) == 1, f"docs/{doc} must have one smoke example"
    script = re.sub(r"^SMOKE=.*$", f"SMOKE={root}", blocks[0], count=1, flags=re.M)
    return script.replace(".venv/bin/python", sys.executable)


def run_bash(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def moving_square(n_frames: int = 6) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    background = rng.integers(60, 190, (64, 96, 3), dtype=np.uint8)
    frames, masks = [], []
    for t in range(n_frames):
        frame, mask = background.copy(), np.zeros((64, 96), np.uint8)
        frame[16:40, 8 + 6 * t : 32 + 6 * t] = (220, 40, 40)
        mask[16:40, 8 + 6 * t : 32 + 6 * t] = 1
        frames.append(frame)
        masks.append(mask)
    return frames, masks


def test_davis_smoke_example_of_the_docs_runs(tmp_path):
    result = run_bash(smoke_script("davis.md", tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    csv = (tmp_path / "out" / "global_results-val.csv").read_text().splitlines()
    assert csv[0].startswith("J&F-Mean") and len(csv) == 2
    assert len(list((tmp_path / "out" / "square").glob("*.png"))) == 8


def test_maskcut_smoke_example_of_the_docs_runs(tmp_path):
    result = run_bash(smoke_script("maskcut.md", tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(path.name for path in (tmp_path / "out" / "vis").iterdir()) == ["1.png", "2.png", "3.png"]
    assert {result["image_id"] for result in json.loads((tmp_path / "out" / "results.json").read_text())} == {1, 2, 3}


def test_davis_from_frames_and_masks_is_read_and_scored(tmp_path):
    frames, masks = moving_square()
    for folder in ("frames", "masks"):
        (tmp_path / folder).mkdir()
    for t, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
        Image.fromarray(frame).save(tmp_path / "frames" / f"f{t:03d}.png")
        Image.fromarray(mask * 255).save(tmp_path / "masks" / f"f{t:03d}.png")  # a 0/255 mask is one object
    root = tmp_path / "DAVIS"
    make_davis_layout.cli(["--frames", str(tmp_path / "frames"), "--first-mask", str(tmp_path / "masks" / "f000.png"),
                           "--masks", str(tmp_path / "masks"), "--out", str(root), "--short-side", "0"])  # fmt: skip
    assert read_sequence_names(root) == ["frames"]
    assert [path.name for path in frame_paths(root, "frames")] == [f"{t:05d}.jpg" for t in range(6)]
    written = [read_label_map(path) for path in annotation_paths(root, "frames")]
    for mask, label_map in zip(masks, written, strict=True):
        np.testing.assert_array_equal(label_map, mask)
    # the ground truth scored as a result: J&F 1 (reader, scorer and the no-write rule of eval_davis)
    args = eval_davis.get_args_parser().parse_args(
        ["--davis-root", str(root), "--metrics-only", str(root / "Annotations" / "480p"),
         "--output-dir", str(tmp_path / "scores")]
    )  # fmt: skip
    eval_davis.check(args)
    assert eval_davis.main(args)["J&F-Mean"] == 1.0


def test_davis_from_a_video_with_a_colour_first_mask_needs_propagate_only(tmp_path):
    frames, masks = moving_square(n_frames=5)
    double = np.ones((2, 2, 1), np.uint8)  # the video is 192x128; the builder halves it to 96x64
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (192, 128))
    for frame in frames:
        writer.write(cv2.cvtColor(np.kron(frame, double), cv2.COLOR_RGB2BGR))
    writer.release()
    colour_mask = np.zeros((64, 96, 3), np.uint8)
    colour_mask[masks[0] == 1] = (0, 200, 0)
    colour_mask[50:60, 70:90] = (200, 0, 200)  # a second object
    colour_mask = np.kron(colour_mask, double)
    Image.fromarray(colour_mask).save(tmp_path / "first.png")
    root = tmp_path / "DAVIS"
    make_davis_layout.cli(["--video", str(video), "--first-mask", str(tmp_path / "first.png"), "--out", str(root),
                           "--short-side", "64"])  # fmt: skip
    frames_written = frame_paths(root, "clip")
    assert len(frames_written) == 5
    with Image.open(frames_written[0]) as image:
        assert image.size == (96, 64)
    first = read_label_map(annotation_paths(root, "clip")[0])
    assert first.shape == (64, 96) and sorted(np.unique(first).tolist()) == [0, 1, 2]
    out = tmp_path / "out"
    flags = ["--davis-root", str(root), "--output-dir", str(out), *TINY_ARCH, "--short-side", "64"]
    with pytest.raises(ValueError, match="has 1 annotated frame.*--propagate-only"):
        eval_davis.cli(flags)
    assert eval_davis.main(eval_davis.get_args_parser().parse_args([*flags, "--propagate-only"])) == {}
    assert len(list((out / "clip").glob("*.png"))) == 5 and not (out / "global_results-val.csv").exists()


def test_davis_builder_refuses_a_mask_of_another_size(tmp_path):
    frames, _ = moving_square(n_frames=3)
    (tmp_path / "frames").mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / "frames" / f"{t}.png")
    Image.fromarray(np.ones((10, 10), np.uint8)).save(tmp_path / "mask.png")
    with pytest.raises(ValueError, match="draw the mask on the frame itself"):
        make_davis_layout.cli(["--frames", str(tmp_path / "frames"), "--first-mask", str(tmp_path / "mask.png"),
                               "--out", str(tmp_path / "DAVIS")])  # fmt: skip


def test_ade20k_smoke_example_of_the_docs_builds_a_layout_mmseg_reads(tmp_path):
    script = smoke_script("segmentation.md", tmp_path)
    builder_only = script[: script.index(f"{sys.executable} tools/eval_segmentation.py")]  # the tool: test_seg_tool
    result = run_bash(builder_only)
    assert result.returncode == 0, result.stderr[-3000:]
    assert check_ade20k_layout(tmp_path / "ADE") == {"training": 9, "validation": 3}
    dataset = mmseg_validation_dataset(tmp_path / "ADE")
    assert len(dataset) == 3
    sample = dataset[0]
    labels = sample["data_samples"].gt_sem_seg.data.numpy()
    # reduce_zero_label: class k is predicted as k - 1; background 11 -> 10, ink (digit + 1) -> the digit
    assert set(np.unique(labels).tolist()) <= set(range(11)) and 10 in labels


def mmseg_validation_dataset(data_root: pathlib.Path):
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS

    from eval.segmentation.configs import ade20k_config
    from eval.segmentation.run import register_modules

    cfg = ade20k_config(protocol="linear", data_root=str(data_root), work_dir=str(data_root / "work"),
                        backbone={}, embed_dim=192, crop_size=64, iters=2, batch_size_per_gpu=1, num_workers=0,
                        seed=0, log_interval=1, launcher="none")  # fmt: skip
    register_modules()
    with DefaultScope.overwrite_default_scope("mmseg"):
        return DATASETS.build(cfg.test_dataloader.dataset)


def test_ade20k_builder_zero_based_labels_and_refusals(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 24, 3), 40 * i, np.uint8)).save(tmp_path / "images" / f"im{i}.png")
        labels = np.full((16, 24), i, np.uint8)
        labels[0] = 255  # ignored
        Image.fromarray(labels).save(tmp_path / "labels" / f"im{i}.png")
    argv = ["--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels")]
    with pytest.raises(ValueError, match=r"values \[255\] outside 0 \(other\) and 1..150; see --zero-based"):
        make_ade20k_layout.cli([*argv, "--out", str(tmp_path / "bad")])
    out = tmp_path / "ADE"
    make_ade20k_layout.cli([*argv, "--out", str(out), "--zero-based"])
    assert check_ade20k_layout(out) == {"training": 3, "validation": 1}
    for path in (out / "annotations").rglob("*.png"):
        values = np.array(Image.open(path))
        i = int(path.stem[2:])
        assert (values[0] == 0).all() and (values[1:] == i + 1).all()
    with pytest.raises(FileExistsError, match="not empty"):
        make_ade20k_layout.cli([*argv, "--out", str(out), "--zero-based"])
    (tmp_path / "labels" / "im3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 images have no label map.*im3.png"):
        make_ade20k_layout.cli([*argv, "--out", str(tmp_path / "other"), "--zero-based"])
