"""Results folder -> per-object J / F statistics -> the two official CSVs."""

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from davis_synthetic import Video
from PIL import Image

from eval.davis.evaluation import evaluate_results, write_results_csvs
from eval.davis.layout import read_label_map, voc_palette, write_label_map


def blank_video(labels: list[np.ndarray]) -> Video:
    frames = [np.full((*label.shape, 3), 128, dtype=np.uint8) for label in labels]
    return frames, labels


def boxes(n_frames: int, shape: tuple[int, int], objects: list[tuple[int, int, int, int]]) -> list[np.ndarray]:
    """Label maps with object k+1 at rows [r0, r1) cols [c0 + t, c1 + t) in frame t."""
    labels = []
    for t in range(n_frames):
        label = np.zeros(shape, dtype=np.uint8)
        for index, (r0, r1, c0, c1) in enumerate(objects, start=1):
            label[r0:r1, c0 + t : c1 + t] = index
        labels.append(label)
    return labels


@pytest.fixture
def two_sequences(make_davis_root: Callable[[dict[str, Video]], Path]) -> Path:
    return make_davis_root(
        {
            "cars": blank_video(boxes(10, (48, 80), [(5, 20, 5, 20), (25, 40, 30, 50)])),
            "dog": blank_video(boxes(8, (40, 64), [(10, 30, 10, 30)])),
        }
    )


def copy_annotations(root: Path, results: Path) -> None:
    for sequence_dir in sorted((root / "Annotations" / "480p").iterdir()):
        for path in sorted(sequence_dir.glob("*.png")):
            write_label_map(results / sequence_dir.name / path.name, read_label_map(path))


def test_palette_png_round_trip(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [3, 4, 255]], dtype=np.uint8)
    write_label_map(tmp_path / "a.png", labels)
    with Image.open(tmp_path / "a.png") as image:
        assert image.mode == "P"
        assert image.getpalette()[:15] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128]
    np.testing.assert_array_equal(read_label_map(tmp_path / "a.png"), labels)
    assert len(voc_palette()) == 768


def test_results_equal_to_ground_truth(two_sequences: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    copy_annotations(two_sequences, results)
    scores = evaluate_results(two_sequences, results)
    assert [obj.name for obj in scores.objects] == ["cars_1", "cars_2", "dog_1"]
    assert all(obj.j_frames.shape == (8,) for obj in scores.objects[:2])  # frames 1..T-2 of 10
    assert scores.objects[2].j_frames.shape == (6,)
    global_path, per_sequence_path = write_results_csvs(scores, results)
    assert global_path.name == "global_results-val.csv"
    assert global_path.read_text() == (
        "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n1.000,1.000,1.000,0.000,1.000,1.000,0.000\n"
    )
    assert per_sequence_path.name == "per-sequence_results-val.csv"
    assert per_sequence_path.read_text() == (
        "Sequence,J-Mean,F-Mean\ncars_1,1.000,1.000\ncars_2,1.000,1.000\ndog_1,1.000,1.000\n"
    )


def test_global_means_are_over_objects_and_first_last_frames_are_skipped(two_sequences: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    copy_annotations(two_sequences, results)
    # "dog" predicted empty on frames 1..T-2: its only object scores 0, while both "cars" objects score 1.
    for path in sorted((results / "dog").glob("*.png"))[1:-1]:
        write_label_map(path, np.zeros((40, 64), dtype=np.uint8))
    # Garbage in the first and last frames of "cars" must not count.
    for path in (results / "cars" / "00000.png", results / "cars" / "00009.png"):
        write_label_map(path, np.full((48, 80), 2, dtype=np.uint8))
    scores = evaluate_results(two_sequences, results)
    global_results = scores.global_results()
    assert global_results["J-Mean"] == pytest.approx(2 / 3)  # a per-sequence mean would give 1/2
    assert global_results["F-Mean"] == pytest.approx(2 / 3)
    assert global_results["J&F-Mean"] == pytest.approx(2 / 3)
    assert global_results["J-Recall"] == pytest.approx(2 / 3)
    _, per_sequence_path = write_results_csvs(scores, results)
    assert per_sequence_path.read_text().splitlines()[3] == "dog_1,0.000,0.000"


def test_missing_object_is_zero_padded_and_decay(two_sequences: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    copy_annotations(two_sequences, results)
    # cars object 2 never predicted; object 1 correct only in the second half of the scored frames.
    for t, path in enumerate(sorted((results / "cars").glob("*.png"))):
        label = read_label_map(path)
        label[label == 2] = 0
        if 1 <= t <= 4:
            label[label == 1] = 0
        write_label_map(path, label)
    scores = evaluate_results(two_sequences, results, sequences=["cars"])
    object_1, object_2 = scores.objects
    np.testing.assert_array_equal(object_2.j_frames, np.zeros(8))
    np.testing.assert_array_equal(object_1.j_frames, [0, 0, 0, 0, 1, 1, 1, 1])
    # 8 scored frames: bins [0..2], [2..4], [4..6], [6..7] -> decay = mean(0,0,0) - mean(1,1) = -1
    assert object_1.j_statistics == (0.5, 0.5, -1.0)


def test_void_counts_as_background(make_davis_root: Callable[[dict[str, Video]], Path], tmp_path: Path) -> None:
    labels = boxes(4, (30, 40), [(5, 15, 5, 15)])
    for label in labels:
        label[20:30, 0:10] = 255
    root = make_davis_root({"void": blank_video(labels)})
    results = tmp_path / "results"
    for t in (1, 2):
        prediction = labels[t].copy()
        prediction[prediction == 255] = 1  # predicting the object on void pixels is a false positive
        write_label_map(results / "void" / f"{t:05d}.png", prediction)
    (j_frames,) = [obj.j_frames for obj in evaluate_results(root, results).objects]
    np.testing.assert_allclose(j_frames, [100 / 200, 100 / 200])


def test_errors_name_the_problem(two_sequences: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    copy_annotations(two_sequences, results)
    (results / "dog" / "00003.png").unlink()
    with pytest.raises(FileNotFoundError, match="00003.png"):
        evaluate_results(two_sequences, results)
    write_label_map(results / "dog" / "00003.png", np.full((40, 64), 2, dtype=np.uint8))
    with pytest.raises(ValueError, match="object index 2 but the first annotation has only 1"):
        evaluate_results(two_sequences, results, sequences=["dog"])
    write_label_map(results / "dog" / "00003.png", np.zeros((20, 64), dtype=np.uint8))
    with pytest.raises(ValueError, match="annotation's resolution"):
        evaluate_results(two_sequences, results, sequences=["dog"])
    with pytest.raises(FileNotFoundError, match="--split"):
        evaluate_results(two_sequences, results, split="test-dev")


def test_csvs_are_recomputed_not_read_back(two_sequences: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    copy_annotations(two_sequences, results)
    write_results_csvs(evaluate_results(two_sequences, results), results)
    for path in sorted((results / "dog").glob("*.png"))[1:-1]:
        write_label_map(path, np.zeros((40, 64), dtype=np.uint8))
    global_path, _ = write_results_csvs(evaluate_results(two_sequences, results), results)
    assert global_path.read_text().splitlines()[1].startswith("0.667,0.667,")
