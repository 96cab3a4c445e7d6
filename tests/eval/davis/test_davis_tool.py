"""tools/eval_davis.py end to end: a tiny ViT checkpoint, a generated DAVIS folder, both CSVs."""

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import pytest
import torch
from davis_synthetic import Video, translating_objects_video
from PIL import Image

from dinov2.eval.setup import build_backbone_for_eval
from eval.davis.layout import read_label_map

TOOL = Path(__file__).resolve().parents[3] / "tools" / "eval_davis.py"
BACKBONE_FLAGS = ["--arch", "vit_tiny", "--patch-size", "16", "--opts", "student.depth=2", "crops.global_crops_size=64"]


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("eval_davis_tool", TOOL)
    assert spec is not None and spec.loader is not None, f"cannot load {TOOL}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def davis_root(make_davis_root: Callable[[dict[str, Video]], Path]) -> Path:
    return make_davis_root(
        {
            "walk": translating_objects_video(
                n_frames=5, height=96, width=160, objects=[(16, 12, 24, 32, 0, 4), (56, 110, 24, 24, -1, -3)]
            ),
            "run": translating_objects_video(
                n_frames=4, height=96, width=160, objects=[(30, 40, 32, 32, 2, 5)], seed=1
            ),
        }
    )


def test_tool_end_to_end_with_tiny_vit(davis_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_backbone_for_eval(
        arch="vit_tiny", patch_size=16, opts=["student.depth=2", "crops.global_crops_size=64"]
    )
    weights = tmp_path / "backbone.pth"
    torch.save(model.state_dict(), weights)
    tool = load_tool()
    output = tmp_path / "out"
    argv = [*BACKBONE_FLAGS, "--pretrained-weights", str(weights), "--davis-root", str(davis_root)]
    results = tool.main(tool.get_args_parser().parse_args([*argv, "--output-dir", str(output), "--short-side", "96"]))

    for sequence, n_frames in (("walk", 5), ("run", 4)):
        written = sorted((output / sequence).glob("*.png"))
        assert [path.name for path in written] == [f"{t:05d}.png" for t in range(n_frames)]
        first = read_label_map(davis_root / "Annotations" / "480p" / sequence / "00000.png")
        np.testing.assert_array_equal(read_label_map(written[0]), first)
        for path in written[1:]:
            with Image.open(path) as image:
                assert image.mode == "P" and image.size == (160, 96)
            assert set(np.unique(read_label_map(path))) <= set(range(int(first.max()) + 1))
    global_lines = (output / "global_results-val.csv").read_text().splitlines()
    assert global_lines[0] == "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
    assert global_lines[1] == ",".join(f"{results[name]:.3f}" for name in global_lines[0].split(","))
    assert [line.split(",")[0] for line in (output / "per-sequence_results-val.csv").read_text().splitlines()] == [
        "Sequence",
        "walk_1",
        "walk_2",
        "run_1",
    ]
    assert 0.0 <= results["J&F-Mean"] <= 1.0

    # --metrics-only on the same folder gives the same numbers without a backbone.
    csv_dir = tmp_path / "rescored"
    rescored = tool.main(
        tool.get_args_parser().parse_args(
            ["--davis-root", str(davis_root), "--metrics-only", str(output), "--output-dir", str(csv_dir)]
        )
    )
    assert rescored == results
    assert (csv_dir / "global_results-val.csv").read_text() == (output / "global_results-val.csv").read_text()


def test_metrics_only_on_ground_truth_scores_one_and_never_writes_into_the_dataset(
    davis_root: Path, tmp_path: Path
) -> None:
    tool = load_tool()
    annotations = davis_root / "Annotations" / "480p"  # already in the results layout
    before = sorted(path.relative_to(davis_root) for path in davis_root.rglob("*"))
    flags = ["--davis-root", str(davis_root), "--metrics-only", str(annotations)]
    with pytest.raises(ValueError, match="lies inside --davis-root .* pass --output-dir"):
        tool.cli(flags)
    with pytest.raises(ValueError, match="lies inside --davis-root"):
        tool.cli([*flags, "--output-dir", str(davis_root / "scores")])
    assert sorted(path.relative_to(davis_root) for path in davis_root.rglob("*")) == before

    args = tool.get_args_parser().parse_args([*flags, "--output-dir", str(tmp_path / "scores")])
    tool.check(args)
    results = tool.main(args)
    assert results["J&F-Mean"] == 1.0 and results["J-Decay"] == 0.0
    assert (tmp_path / "scores" / "global_results-val.csv").is_file()
    assert sorted(path.relative_to(davis_root) for path in davis_root.rglob("*")) == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([*BACKBONE_FLAGS], "--output-dir is required"),
        (["--metrics-only", "/nonexistent/results"], "--metrics-only /nonexistent/results is not a folder"),
        ([*BACKBONE_FLAGS, "--output-dir", "OUT", "--sequences", "walk", "swim"], r"--sequences \['swim'\] are not in"),
        ([*BACKBONE_FLAGS, "--output-dir", "OUT", "--split", "train"], "sequence list .*train.txt does not exist"),
        (["--arch", "vit_tiny", "--weights", "/nonexistent.pth", "--output-dir", "OUT"], "weights /nonexistent.pth"),
    ],
)
def test_inputs_are_checked_before_anything_runs(davis_root: Path, tmp_path: Path, extra, message) -> None:
    tool = load_tool()
    extra = [str(tmp_path / "out") if flag == "OUT" else flag for flag in extra]
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        tool.cli(["--davis-root", str(davis_root), *extra])
    assert not (tmp_path / "out").exists()


def test_a_missing_davis_root_names_the_builder(tmp_path: Path) -> None:
    tool = load_tool()
    with pytest.raises(FileNotFoundError, match="is not a folder.*tools/make_davis_layout.py"):
        tool.cli(["--davis-root", str(tmp_path / "DAVIS"), "--output-dir", str(tmp_path / "out"), *BACKBONE_FLAGS])
