"""Did a run diverge or collapse? (The paper's Table 5 outcomes, decided from what the run left behind.)

* `diverged`: the training stopped on a non-finite loss (`NonFiniteLossError`, logged as "non-finite loss
  at iteration N"), or a logged loss term is NaN / infinite;
* `collapsed`: the effective rank of the final teacher's features is at most `collapse_rank`
  (`DEFAULT_COLLAPSE_RANK`; effective rank 1 means every image maps to the same direction);
* `failed`: the training process failed for another reason (the message says why);
* `ok`: none of the above.
"""

import dataclasses
import math
from typing import Literal

from dinov2.compare.runs import RunData, metric_names, metric_series

DEFAULT_COLLAPSE_RANK = 1.5

Status = Literal["ok", "diverged", "collapsed", "failed"]


@dataclasses.dataclass(frozen=True)
class Health:
    status: Status
    reason: str


def non_finite_terms(run: RunData) -> list[tuple[str, int]]:
    """(meter, first iteration) of every logged loss meter (`*loss*`) that is NaN or infinite."""
    found = []
    for name in metric_names(run.records):
        if "loss" not in name:
            continue
        for step, value in zip(*metric_series(run.records, name), strict=True):
            if not math.isfinite(value):
                found.append((name, step))
                break
    return found


def assess_run(
    run: RunData,
    *,
    final_effective_rank: float | None,
    collapse_rank: float = DEFAULT_COLLAPSE_RANK,
    failure: str | None = None,
) -> Health:
    """Classify `run` (see the module docstring). `final_effective_rank`: of the last teacher's features
    (None when there is no teacher to evaluate); `failure`: why the training process failed, if it did."""
    if collapse_rank < 1:
        raise ValueError(f"collapse_rank={collapse_rank} must be >= 1 (the smallest effective rank)")
    if run.log.non_finite_iteration is not None:
        return Health("diverged", f"non-finite loss at iteration {run.log.non_finite_iteration}")
    bad = non_finite_terms(run)
    if bad:
        return Health("diverged", ", ".join(f"{name} non-finite at iteration {step}" for name, step in bad))
    if failure is not None:
        return Health("failed", failure)
    if final_effective_rank is None:
        return Health("failed", "no teacher to evaluate")
    if not math.isfinite(final_effective_rank):
        return Health("diverged", f"teacher features are not finite (effective rank {final_effective_rank})")
    if final_effective_rank <= collapse_rank:
        return Health("collapsed", f"effective rank {final_effective_rank:.3f} <= {collapse_rank} (--collapse-rank)")
    return Health("ok", f"effective rank {final_effective_rank:.2f}")
