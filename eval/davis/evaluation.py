"""DAVIS-2017 semi-supervised evaluation of a results folder: per-object J / F statistics, global J&F, CSVs.

Protocol (DAVIS-2017 semi-supervised, restated):

* the objects of a sequence are the indices 1..K with K the largest index of its first annotation (void 255
  is set to background first); object k's mask is `label == k`;
* only frames 1 .. T-2 are scored (the given first frame and the last frame are left out); the results
  folder must hold `<seq>/<frame>.png` for each of them, at the annotation's resolution;
* a result index above K is an error; objects that the results never mention score as empty masks;
* void pixels are not ignored (they count as background in the annotation);
* global J-Mean etc. average over all objects of all sequences (not over sequences);
  J&F-Mean = (J-Mean + F-Mean) / 2.

CSV files (the official names and columns, values printed with %.3f):
`global_results-<split>.csv` (J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay) and
`per-sequence_results-<split>.csv` (Sequence, J-Mean, F-Mean; one row `<seq>_<k>` per object).
"""

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from eval.davis.layout import VOID_LABEL, annotation_paths, read_label_map, read_sequence_names
from eval.davis.metrics import boundary_f_measure, region_jaccard, sequence_statistics

logger = logging.getLogger(__name__)

GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
PER_SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")


@dataclass(frozen=True)
class ObjectScores:
    """Scores of one object (`name` = `<seq>_<k>`) over its evaluated frames."""

    name: str
    j_frames: np.ndarray  # float64 [T - 2]
    f_frames: np.ndarray  # float64 [T - 2]

    @property
    def j_statistics(self) -> tuple[float, float, float]:
        """(J-Mean, J-Recall, J-Decay) of this object."""
        return sequence_statistics(self.j_frames)

    @property
    def f_statistics(self) -> tuple[float, float, float]:
        """(F-Mean, F-Recall, F-Decay) of this object."""
        return sequence_statistics(self.f_frames)


@dataclass(frozen=True)
class DavisScores:
    """All objects of an evaluation, in sequence-list order then object index."""

    objects: list[ObjectScores]

    def global_results(self) -> dict[str, float]:
        """The seven global numbers, keyed by `GLOBAL_COLUMNS`, each a mean over objects."""
        if not self.objects:
            raise ValueError("no objects were evaluated: every sequence's first annotation holds only background")
        j_stats = np.array([obj.j_statistics for obj in self.objects])  # [n_objects, 3]
        f_stats = np.array([obj.f_statistics for obj in self.objects])  # [n_objects, 3]
        j_mean, j_recall, j_decay = j_stats.mean(axis=0)
        f_mean, f_recall, f_decay = f_stats.mean(axis=0)
        values = ((j_mean + f_mean) / 2, j_mean, j_recall, j_decay, f_mean, f_recall, f_decay)
        return {column: float(value) for column, value in zip(GLOBAL_COLUMNS, values, strict=True)}


def _label_masks(labels: np.ndarray, n_objects: int) -> np.ndarray:
    """uint8 [T, H, W] index maps -> bool [n_objects, T, H, W], object k+1 in slot k."""
    object_ids = np.arange(1, n_objects + 1, dtype=np.int64)
    return labels[None].astype(np.int64) == object_ids[:, None, None, None]


def evaluate_sequence(
    sequence: str, annotations: np.ndarray, results: np.ndarray, *, first_annotation: np.ndarray
) -> list[ObjectScores]:
    """Score one sequence.

    annotations, results: uint8 [T - 2, H, W] index maps of the evaluated frames (1 .. T-2);
    first_annotation: uint8 [H, W], the given frame 0 (it fixes the number of objects K).
    """
    if annotations.shape != results.shape:
        raise ValueError(
            f"sequence {sequence!r}: results have shape {results.shape} but annotations {annotations.shape}; "
            "results must be written at the annotation's resolution, one PNG per frame"
        )
    annotations = np.where(annotations == VOID_LABEL, 0, annotations)
    n_objects = int(np.where(first_annotation == VOID_LABEL, 0, first_annotation).max())
    n_predicted = int(results.max()) if results.size else 0
    if n_predicted > n_objects:
        raise ValueError(
            f"sequence {sequence!r}: results hold object index {n_predicted} but the first annotation has only "
            f"{n_objects} objects; result PNGs must use indices 0..{n_objects}"
        )
    annotation_masks = _label_masks(annotations, n_objects)
    result_masks = _label_masks(results, n_objects)
    return [
        ObjectScores(
            name=f"{sequence}_{k + 1}",
            j_frames=region_jaccard(annotation_masks[k], result_masks[k]),
            f_frames=boundary_f_measure(annotation_masks[k], result_masks[k]),
        )
        for k in range(n_objects)
    ]


def evaluate_results(
    davis_root: str | Path,
    results_dir: str | Path,
    *,
    split: str = "val",
    year: str = "2017",
    resolution: str = "480p",
    sequences: Sequence[str] | None = None,
) -> DavisScores:
    """Score a results folder (`results_dir/<seq>/<frame>.png`) against the DAVIS annotations.

    `sequences` restricts the evaluation to these names (default: every sequence of the split's list).
    """
    names = read_sequence_names(davis_root, split=split, year=year) if sequences is None else list(sequences)
    results_dir = Path(results_dir)
    objects: list[ObjectScores] = []
    for index, sequence in enumerate(names, start=1):
        start = time.perf_counter()
        paths = annotation_paths(davis_root, sequence, resolution=resolution)
        if len(paths) < 3:
            raise ValueError(
                f"sequence {sequence!r} has {len(paths)} annotated frames; the semi-supervised protocol scores "
                "frames 1..T-2 and needs at least 3"
            )
        evaluated = paths[1:-1]
        missing = [results_dir / sequence / path.name for path in evaluated]
        missing = [path for path in missing if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"results for sequence {sequence!r} lack {len(missing)} of {len(evaluated)} frames, first "
                f"{missing[0]}; write one PNG per frame 1..T-2 under {results_dir / sequence}"
            )
        annotations = np.stack([read_label_map(path) for path in evaluated])
        result_maps = [read_label_map(results_dir / sequence / path.name) for path in evaluated]
        for path, result_map in zip(evaluated, result_maps, strict=True):
            if result_map.shape != annotations.shape[1:]:
                raise ValueError(
                    f"result {results_dir / sequence / path.name} is {result_map.shape[0]}x{result_map.shape[1]} "
                    f"but its annotation is {annotations.shape[1]}x{annotations.shape[2]}; results must be written "
                    "at the annotation's resolution"
                )
        results = np.stack(result_maps)
        sequence_objects = evaluate_sequence(sequence, annotations, results, first_annotation=read_label_map(paths[0]))
        objects.extend(sequence_objects)
        logger.info(
            "J&F [%d/%d] %s: %d objects, J %s, F %s (%.1f s)",
            index,
            len(names),
            sequence,
            len(sequence_objects),
            " ".join(f"{obj.j_statistics[0]:.3f}" for obj in sequence_objects),
            " ".join(f"{obj.f_statistics[0]:.3f}" for obj in sequence_objects),
            time.perf_counter() - start,
        )
    return DavisScores(objects=objects)


def _format(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"


def write_results_csvs(scores: DavisScores, directory: str | Path, *, split: str = "val") -> tuple[Path, Path]:
    """Write `global_results-<split>.csv` and `per-sequence_results-<split>.csv` into `directory`.

    Existing files are overwritten. Returns the two paths (global, per-sequence).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    global_values = scores.global_results()
    global_path = directory / f"global_results-{split}.csv"
    global_path.write_text(
        ",".join(GLOBAL_COLUMNS) + "\n" + ",".join(_format(global_values[c]) for c in GLOBAL_COLUMNS) + "\n"
    )
    per_sequence_path = directory / f"per-sequence_results-{split}.csv"
    rows = [f"{obj.name},{_format(obj.j_statistics[0])},{_format(obj.f_statistics[0])}" for obj in scores.objects]
    per_sequence_path.write_text(",".join(PER_SEQUENCE_COLUMNS) + "\n" + "".join(row + "\n" for row in rows))
    logger.info("wrote %s and %s", global_path, per_sequence_path)
    return global_path, per_sequence_path
