"""Fixtures of the DAVIS tests (helpers live in davis_synthetic.py)."""

from pathlib import Path
from typing import Callable

import pytest
from davis_synthetic import Video, write_davis_sequence, write_sequence_list


@pytest.fixture
def make_davis_root(tmp_path: Path) -> Callable[[dict[str, Video]], Path]:
    """Factory: {sequence name: (frames, labels)} -> a DAVIS root listing them in ImageSets/2017/val.txt."""

    def make(videos: dict[str, Video]) -> Path:
        root = tmp_path / "DAVIS"
        for name, (frames, labels) in videos.items():
            write_davis_sequence(root, name, frames, labels)
        write_sequence_list(root, list(videos))
        return root

    return make
