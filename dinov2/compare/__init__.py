"""A/B comparison of two training recipes (DINOv2 vs SimDINOv2): launch, collect, evaluate, report.

`tools/compare.py` is the command line; the pieces live here so that they can be tested and reused:

* `runs`: read a finished run directory (config, `training_metrics.json`, log, teacher exports) and list
  the config keys in which two runs differ;
* `launch`: train the arms (same seed, data order, backbone and batch; overrides applied to both) as
  subprocesses of `tools/train.py`, or as SLURM jobs;
* `features`: k-NN accuracy, effective rank and coding rate of a teacher's features;
* `health`: which runs diverged (non-finite loss) or collapsed (effective rank near 1);
* `plots` / `report`: the PNG figures and `report.md`.
"""
