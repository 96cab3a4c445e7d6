"""tools/extract_features.py runs with a random backbone on the built-in photo and writes features and a figure."""

import importlib.util
import pathlib

import torch

TOOL = pathlib.Path(__file__).resolve().parents[2] / "tools" / "extract_features.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("extract_features_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extract_features_random_init(tmp_path, caplog):
    tool = load_tool()
    caplog.set_level("INFO")
    features = tool.main(["--arch", "vit_tiny", "--patch-size", "16", "--opts", "student.depth=1",
                          "--output-dir", str(tmp_path), "--image-size", "64", "--device", "cpu"])  # fmt: skip
    assert set(features) == {"astronaut"}
    saved = torch.load(tmp_path / "features.pt", weights_only=True)
    assert saved["astronaut"]["cls"].shape == (192,) and saved["astronaut"]["patch"].shape == (4, 4, 192)
    torch.testing.assert_close(saved["astronaut"]["patch"], features["astronaut"]["patch"])
    assert (tmp_path / "astronaut_pca.png").stat().st_size > 1000
    assert "RANDOM" in caplog.text


def test_pca_rgb_range():
    tool = load_tool()
    rgb = tool.pca_rgb(torch.randn(5, 6, 32))
    assert rgb.shape == (5, 6, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert (rgb.reshape(-1, 3).max(0) == 1).all() and (rgb.reshape(-1, 3).min(0) == 0).all()
