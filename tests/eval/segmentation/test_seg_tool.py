"""tools/eval_segmentation.py end to end: the "+ms" protocol (last four blocks, test-time augmentation)."""

import json
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from PIL import Image
from seg_testdata import save_tiny_checkpoint, write_ade20k_like

from tools.eval_segmentation import get_args_parser, main


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    # One 64x80 validation image: the test-time augmentation alone runs ~100 windows per image.
    data_root = write_ade20k_like(tmp_path_factory.mktemp("ADEChallengeData2016"), n_train=2, n_val=1)
    weights_dir = tmp_path_factory.mktemp("weights")
    backbone = save_tiny_checkpoint(weights_dir / "vit_tiny8_depth4.pth", depth=4)
    output_dir = tmp_path_factory.mktemp("out")
    argv = [
        "--arch", backbone["arch"], "--patch-size", str(backbone["patch_size"]), "--opts", *backbone["opts"],
        "--pretrained-weights", backbone["pretrained_weights"],
        "--data-root", str(data_root), "--output-dir", str(output_dir),
        "--protocol", "ms", "--iters", "3", "--batch-size", "2", "--crop-size", "64",
        "--num-workers", "0", "--num-vis-images", "1", "--log-interval", "2",
    ]  # fmt: skip
    return main(get_args_parser().parse_args(argv)), output_dir


def test_results_json(run: tuple[dict, Path]) -> None:
    results, output_dir = run
    written = json.loads((output_dir / "results.json").read_text())
    assert written == results
    assert set(written["metrics"]) == {"aAcc", "mIoU", "mAcc"}
    assert all(0.0 <= value <= 100.0 for value in written["metrics"].values())
    assert written["protocol"] == "ms" and written["iters"] == 3 and written["crop_size"] == 64
    assert written["backbone"]["n_blocks"] == 4 and written["backbone"]["embed_dim"] == 192


def test_prediction_figure_has_one_row_per_image(run: tuple[dict, Path]) -> None:
    _, output_dir = run
    width, height = Image.open(output_dir / "predictions.png").size
    assert (width, height) == (9 * 80, 3 * 80)  # figsize (9, 3 per row) at 80 dpi, one row


def test_saved_head_and_config(run: tuple[dict, Path]) -> None:
    _, output_dir = run
    head = torch.load(output_dir / "decode_head.pth", map_location="cpu")
    assert head["conv_seg.weight"].shape == (150, 4 * 192, 1, 1)  # last four blocks concatenated
    assert head["bn.weight"].shape == (4 * 192,)
    cfg = Config.fromfile(output_dir / "seg_config.py")
    assert cfg.model.backbone.out_indices == (-4, -3, -2, -1)
    assert cfg.model.test_cfg.crop_size == (64, 64) and cfg.model.test_cfg.stride == (42, 42)
    resizes = cfg.tta_dataloader.dataset.pipeline[1].transforms[0]
    assert [resize.scale[1] for resize in resizes] == [64, 84, 111, 146, 192]  # 64 x (1, 1.32, 1.73, 2.28, 3)
