"""Slide inference of the linear protocol's segmentor (real mmseg EncoderDecoder, crop 512, stride 341).

The input's first two channels hold each pixel's column and row, so every window the backbone receives
tells where it was cut from.
"""

import pytest
import torch
from seg_testdata import save_tiny_checkpoint

from eval.segmentation.configs import ade20k_config
from eval.segmentation.run import build_segmentor

CROP = 512
N_CLASSES = 4


@pytest.fixture(scope="module")
def segmentor(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    # Patch 16 keeps a 512x512 window at 1024 tokens (patch 8 would be 4x the tokens, 16x the attention).
    backbone = save_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "vit_tiny16.pth", patch_size=16)
    cfg = ade20k_config(
        protocol="linear",
        data_root="unused",
        work_dir=str(tmp_path_factory.mktemp("work")),
        backbone=backbone,
        embed_dim=192,
    )
    assert cfg.model.test_cfg == dict(mode="slide", crop_size=(CROP, CROP), stride=(341, 341))
    cfg.model.decode_head.norm_cfg = dict(type="BN")
    cfg.model.decode_head.num_classes = N_CLASSES  # the windows do not depend on it; 150 maps cost seconds
    model = build_segmentor(cfg)
    model.init_weights()
    return model.eval()


def _coordinate_image(height: int, width: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([cols, rows, torch.zeros_like(rows)]).float()[None]


def _windows(
    segmentor: torch.nn.Module, height: int, width: int
) -> tuple[list[tuple[int, int, int, int]], torch.Tensor]:
    """Run slide inference; returns the windows (y1, y2, x1, x2) in call order and the logits."""
    windows = []

    def record(module: torch.nn.Module, args: tuple) -> None:
        crop = args[0]
        y1, x1 = int(crop[0, 1, 0, 0]), int(crop[0, 0, 0, 0])
        windows.append((y1, y1 + crop.shape[2], x1, x1 + crop.shape[3]))

    handle = segmentor.backbone.register_forward_pre_hook(record)
    try:
        with torch.no_grad():
            meta = dict(img_shape=(height, width), ori_shape=(height, width))
            logits = segmentor.slide_inference(_coordinate_image(height, width), [meta])
    finally:
        handle.remove()
    return windows, logits


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (512, 683, [(0, 512, 0, 512), (0, 512, 171, 683)]),
        (512, 768, [(0, 512, 0, 512), (0, 512, 256, 768)]),
        (512, 1365, [(0, 512, x1, x1 + 512) for x1 in (0, 341, 682, 853)]),
        (300, 400, [(0, 300, 0, 400)]),  # smaller than the window: one unpadded window
    ],
)
def test_slide_windows_match_the_spec(segmentor: torch.nn.Module, height: int, width: int, expected: list) -> None:
    windows, logits = _windows(segmentor, height, width)
    assert windows == expected
    assert logits.shape == (1, N_CLASSES, height, width)
    coverage = torch.zeros(height, width, dtype=torch.int64)
    for y1, y2, x1, x2 in windows:
        coverage[y1:y2, x1:x2] += 1
    assert coverage.min() >= 1, "every pixel is predicted by at least one window"


def test_slide_equals_whole_inference_when_the_image_fits_one_window(segmentor: torch.nn.Module) -> None:
    images = torch.randn(1, 3, 300, 400)
    meta = dict(img_shape=(300, 400), ori_shape=(300, 400))
    with torch.no_grad():
        slide = segmentor.slide_inference(images, [dict(meta)])
        whole = segmentor.whole_inference(images, [dict(meta)])
    torch.testing.assert_close(slide, whole)


def test_overlapping_windows_are_averaged(segmentor: torch.nn.Module) -> None:
    """512x683: columns [171, 512) are seen by both windows and get the mean of the two windows' logits."""
    images = torch.randn(1, 3, 512, 683)
    with torch.no_grad():
        slide = segmentor.slide_inference(images, [dict(img_shape=(512, 683), ori_shape=(512, 683))])
        left = segmentor.encode_decode(images[..., :512], [dict(img_shape=(512, 512))])
        right = segmentor.encode_decode(images[..., 171:], [dict(img_shape=(512, 512))])
    torch.testing.assert_close(slide[..., :171], left[..., :171])
    torch.testing.assert_close(slide[..., 171:512], (left[..., 171:] + right[..., :341]) / 2)
    torch.testing.assert_close(slide[..., 512:], right[..., 341:])
