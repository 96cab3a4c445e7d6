"""Session fixtures of the segmentation tests (helpers in seg_testdata.py)."""

from pathlib import Path

import pytest
from seg_testdata import save_tiny_checkpoint, write_ade20k_like


@pytest.fixture(scope="session")
def ade20k_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ade20k_like(tmp_path_factory.mktemp("ADEChallengeData2016"))


@pytest.fixture(scope="session")
def tiny_backbone_kwargs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`DinoVisionTransformerBackbone` / `build_backbone_for_eval` arguments of a depth-2 ViT-Ti/8 checkpoint."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("weights") / "vit_tiny8_depth2.pth")
