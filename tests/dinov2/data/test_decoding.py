"""Every PIL mode decodes to the documented 8-bit RGB: real files written in each mode, compared with numpy."""

import pathlib
import re
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from dinov2.data import decode_image, make_dataset, to_rgb

REPO = Path(__file__).resolve().parents[3]
RNG = np.random.default_rng(0)
SHAPE = (5, 7)  # H, W


def _composite_reference(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight alpha over white, rounded half up, computed in float64."""
    a = alpha[..., None].astype(np.float64) / 255.0
    return np.floor(rgb.astype(np.float64) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


def _gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _decoded(path: Path) -> np.ndarray:
    image = decode_image(str(path))
    assert image.mode == "RGB" and image.size == (SHAPE[1], SHAPE[0])
    decoded_from_bytes = np.asarray(decode_image(path.read_bytes()))
    decoded = np.asarray(image)
    np.testing.assert_array_equal(decoded, decoded_from_bytes)
    return decoded


def test_16_bit_gray_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = RNG.integers(0, 65536, size=SHAPE, dtype=np.uint16)
    values[0, :4] = [0, 255, 256, 65535]
    Image.fromarray(values).save(tmp_path / "gray16.png")
    with Image.open(tmp_path / "gray16.png") as opened:
        assert opened.mode == "I;16"
        # the fault: Pillow's own conversion clips, so every value >= 255 became white
        assert np.asarray(opened.convert("RGB"))[0, :4, 0].tolist() == [0, 255, 255, 255]
    decoded = _decoded(tmp_path / "gray16.png")
    np.testing.assert_array_equal(decoded, _gray3((values // 256).astype(np.uint8)))
    assert decoded[0, :4, 0].tolist() == [0, 0, 1, 255]


def test_16_bit_rgb_and_rgba_png_are_scaled(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 65536, size=(*SHAPE, 3), dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "rgb16.png"), np.ascontiguousarray(rgb[..., ::-1]))
    np.testing.assert_array_equal(_decoded(tmp_path / "rgb16.png"), (rgb // 256).astype(np.uint8))

    rgba = RNG.integers(0, 65536, size=(*SHAPE, 4), dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "rgba16.png"), np.ascontiguousarray(rgba[..., [2, 1, 0, 3]]))
    high = (rgba // 256).astype(np.uint8)
    np.testing.assert_array_equal(_decoded(tmp_path / "rgba16.png"), _composite_reference(high[..., :3], high[..., 3]))


def test_one_bit_gray_and_rgb(tmp_path: Path) -> None:
    bits = RNG.integers(0, 2, size=SHAPE).astype(bool)
    Image.fromarray(bits).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(_decoded(tmp_path / "bits.png"), _gray3(np.where(bits, 255, 0).astype(np.uint8)))

    gray = RNG.integers(0, 256, size=SHAPE, dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(_decoded(tmp_path / "gray.png"), _gray3(gray))

    rgb = RNG.integers(0, 256, size=(*SHAPE, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(_decoded(tmp_path / "rgb.png"), rgb)


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    palette = RNG.integers(0, 256, size=(16, 3), dtype=np.uint8)
    indices = RNG.integers(0, 16, size=SHAPE, dtype=np.uint8)
    image = Image.fromarray(indices, mode="L").convert("P")
    image.putpalette(palette.flatten().tolist())
    image.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(_decoded(tmp_path / "palette.png"), palette[indices])

    palette_alpha = RNG.integers(0, 256, size=16, dtype=np.uint8)
    image.save(tmp_path / "palette_alpha.png", transparency=palette_alpha.tobytes())
    with Image.open(tmp_path / "palette_alpha.png") as opened:
        assert opened.mode == "P" and "transparency" in opened.info
    expected = _composite_reference(palette[indices], palette_alpha[indices])
    np.testing.assert_array_equal(_decoded(tmp_path / "palette_alpha.png"), expected)

    image.save(tmp_path / "palette_one_transparent.png", transparency=3)  # GIF-style single transparent index
    expected = np.where((indices == 3)[..., None], 255, palette[indices]).astype(np.uint8)
    np.testing.assert_array_equal(_decoded(tmp_path / "palette_one_transparent.png"), expected)


def test_alpha_modes_are_composited_over_white(tmp_path: Path) -> None:
    gray_alpha = RNG.integers(0, 256, size=(*SHAPE, 2), dtype=np.uint8)
    gray_alpha[0, 0, 1] = 0  # fully transparent: white whatever the colour
    Image.fromarray(gray_alpha, mode="LA").save(tmp_path / "la.png")
    decoded = _decoded(tmp_path / "la.png")
    np.testing.assert_array_equal(decoded, _composite_reference(_gray3(gray_alpha[..., 0]), gray_alpha[..., 1]))
    assert decoded[0, 0].tolist() == [255, 255, 255]

    rgba = RNG.integers(0, 256, size=(*SHAPE, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(_decoded(tmp_path / "rgba.png"), _composite_reference(rgba[..., :3], rgba[..., 3]))

    rgb = RNG.integers(0, 255, size=(*SHAPE, 3), dtype=np.uint8)
    rgb[1, 1] = (255, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "colour_key.png", transparency=(255, 0, 255))
    expected = np.where(np.all(rgb == (255, 0, 255), axis=2)[..., None], 255, rgb).astype(np.uint8)
    np.testing.assert_array_equal(_decoded(tmp_path / "colour_key.png"), expected)


def test_cmyk_tiff(tmp_path: Path) -> None:
    cmyk = RNG.integers(0, 256, size=(*SHAPE, 4), dtype=np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.tif")
    c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
    expected = np.floor((255.0 - c) * (255.0 - k) / 255.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(_decoded(tmp_path / "cmyk.tif"), expected)


def test_32_bit_integer_tiff_reads_as_16_bit(tmp_path: Path) -> None:
    values = RNG.integers(-1000, 70000, size=SHAPE, dtype=np.int32)
    values[0, :5] = [-5, 0, 300, 65535, 100000]
    Image.fromarray(values, mode="I").save(tmp_path / "int32.tif")
    with Image.open(tmp_path / "int32.tif") as opened:
        assert opened.mode == "I"
    expected = _gray3((np.clip(values, 0, 65535) // 256).astype(np.uint8))
    decoded = _decoded(tmp_path / "int32.tif")
    np.testing.assert_array_equal(decoded, expected)
    assert decoded[0, :5, 0].tolist() == [0, 0, 1, 255, 255]


def test_float_tiff_reads_as_unit_range(tmp_path: Path) -> None:
    values = RNG.uniform(-0.2, 1.2, size=SHAPE).astype(np.float32)
    values[0, :4] = [np.nan, 0.5, -3.0, 7.0]
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    with Image.open(tmp_path / "float.tif") as opened:
        assert opened.mode == "F"
    clean = np.nan_to_num(values.astype(np.float64), nan=0.0)
    expected = _gray3(np.rint(np.clip(clean, 0.0, 1.0) * 255.0).astype(np.uint8))
    decoded = _decoded(tmp_path / "float.tif")
    np.testing.assert_array_equal(decoded, expected)
    assert decoded[0, :4, 0].tolist() == [0, 128, 0, 255]


def test_every_pillow_mode_has_a_mapping() -> None:
    assert len(Image.MODES) >= 20
    for mode in Image.MODES:
        converted = to_rgb(Image.new(mode, (3, 2)))
        assert converted.mode == "RGB" and converted.size == (3, 2), mode
    big_endian = Image.frombytes("I;16B", (2, 1), bytes([1, 2, 255, 0]))  # 258, 65280
    assert np.asarray(to_rgb(big_endian))[0, :, 0].tolist() == [1, 255]


def test_training_dataset_and_segmentation_loader_decode_16_bit(tmp_path: Path) -> None:
    values = RNG.integers(0, 65536, size=SHAPE, dtype=np.uint16)
    (tmp_path / "images").mkdir()
    Image.fromarray(values).save(tmp_path / "images" / "a.png")
    expected = _gray3((values // 256).astype(np.uint8))
    dataset = make_dataset(dataset_str=f"ImageFolder:root={tmp_path / 'images'}")
    image, _ = dataset[0]
    np.testing.assert_array_equal(np.asarray(image), expected)

    from eval.segmentation.models import LoadRGBImageFromFile

    loaded = LoadRGBImageFromFile()({"img_path": str(tmp_path / "images" / "a.png")})
    np.testing.assert_array_equal(loaded["img"], expected[..., ::-1])
    assert loaded["ori_shape"] == SHAPE


def test_davis_frames_decode_16_bit_like_8_bit(tmp_path: Path) -> None:
    from eval.davis.propagation import read_frame

    values = RNG.integers(0, 65536, size=(32, 64, 3), dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "frame16.png"), np.ascontiguousarray(values[..., ::-1]))
    Image.fromarray((values // 256).astype(np.uint8)).save(tmp_path / "frame8.png")
    frame16, size16 = read_frame(tmp_path / "frame16.png", patch_size=8, short_side=32)
    frame8, size8 = read_frame(tmp_path / "frame8.png", patch_size=8, short_side=32)
    assert size16 == size8 == (32, 64)
    assert torch.equal(frame16, frame8)


def test_no_image_is_opened_outside_the_decoder() -> None:
    """Library code, evaluators and tools decode images only through dinov2.data.decoding."""
    allowed = {
        "dinov2/data/decoding.py",
        "eval/davis/layout.py",  # DAVIS label maps: palette indices are the labels, read as such
        # label maps / masks read as indices or colours, and an image opened only for its size:
        "eval/segmentation/layout.py",
        "tools/make_ade20k_layout.py",
        "tools/make_davis_layout.py",
    }
    pattern = re.compile(r"Image\.open\(|\.convert\(\"RGB\"\)|cv2\.imread\(")
    offenders = []
    for folder in ("dinov2", "simdinov2", "eval", "tools", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if relative not in allowed and pattern.search(pathlib.Path(path).read_text()):
                offenders.append(relative)
    assert offenders == [], f"decode images with dinov2.data.decoding.decode_image / to_rgb in {offenders}"
