"""DAVIS-2017 semi-supervised video object segmentation: DINO label propagation and the J&F measures."""

from eval.davis.evaluation import DavisScores, ObjectScores, evaluate_results, evaluate_sequence, write_results_csvs
from eval.davis.layout import read_label_map, read_sequence_names, voc_palette, write_label_map
from eval.davis.metrics import boundary_f_measure, boundary_map, region_jaccard, sequence_statistics
from eval.davis.propagation import PropagationConfig, propagate_labels, propagate_sequence, run_label_propagation

__all__ = [
    "DavisScores",
    "ObjectScores",
    "PropagationConfig",
    "boundary_f_measure",
    "boundary_map",
    "evaluate_results",
    "evaluate_sequence",
    "propagate_labels",
    "propagate_sequence",
    "read_label_map",
    "read_sequence_names",
    "region_jaccard",
    "run_label_propagation",
    "sequence_statistics",
    "voc_palette",
    "write_label_map",
    "write_results_csvs",
]
