"""Statistics over seeds: per-arm mean and spread, and the paired A/B difference with a t-interval.

Both arms of a multi-seed comparison are trained with the same seeds (same initialisation seed and data
order), so the natural estimate of "B - A" is paired by seed: d_s = b_s - a_s. Its 95 % interval is the
Student t-interval on the d_s,

    mean(d) +- t_{0.975, n-1} * std(d) / sqrt(n),     std with n - 1 in the denominator,

which assumes the per-seed differences are independent draws from a normal distribution. With 3 seeds,
t_{0.975, 2} = 4.30: the interval is wide, and that is the honest answer for 3 seeds.
"""

import dataclasses
import math
from typing import Sequence

from scipy import stats as scipy_stats

DEFAULT_CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class SeedSummary:
    """Mean and spread of one number over seeds (NaN values, e.g. of diverged runs, are left out and counted)."""

    n: int  # finite values
    n_missing: int  # NaN / missing values (runs that diverged, failed or have no such number)
    mean: float  # NaN when n = 0
    std: float  # sample standard deviation (n - 1); NaN when n < 2
    minimum: float
    maximum: float

    def to_json(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def summarize_seeds(values: Sequence[float | None]) -> SeedSummary:
    """Mean, sample standard deviation, min and max of the finite `values`."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    nan = math.nan
    if n == 0:
        return SeedSummary(n=0, n_missing=len(values), mean=nan, std=nan, minimum=nan, maximum=nan)
    mean = math.fsum(finite) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else nan
    return SeedSummary(n=n, n_missing=len(values) - n, mean=mean, std=std, minimum=min(finite), maximum=max(finite))


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """B - A paired by seed, with a Student t confidence interval on the mean difference."""

    n: int  # seeds where both arms have a finite value
    mean: float
    std: float  # sample standard deviation of the per-seed differences
    low: float  # interval bounds (NaN when n < 2)
    high: float
    confidence: float

    def to_json(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)

    @property
    def verdict(self) -> str:
        """'B > A' / 'B < A' when the interval excludes 0; 'cannot tell' when it contains 0, when n < 2, or when
        the per-seed differences are all equal (zero width: k-NN accuracies are multiples of 1 / n_images, so a
        few seeds can tie exactly, and a zero spread estimated from them is no evidence of a zero spread)."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.std == 0:
            return "cannot tell"
        if self.low > 0:
            return "B > A"
        if self.high < 0:
            return "B < A"
        return "cannot tell"


def t_quantile(probability: float, degrees_of_freedom: int) -> float:
    """Quantile of Student's t distribution (e.g. 0.975, 2 -> 4.303)."""
    return float(scipy_stats.t.ppf(probability, degrees_of_freedom))


def paired_difference(
    values_a: Sequence[float | None], values_b: Sequence[float | None], *, confidence: float = DEFAULT_CONFIDENCE
) -> PairedDifference:
    """`values_b[s] - values_a[s]` over the seeds s where both are finite: mean, std and the t-interval.

    `values_a` and `values_b` are aligned by seed (same length). A seed where either arm has no finite value
    (diverged, failed) is left out of the difference; the per-arm tables still count it.
    """
    if len(values_a) != len(values_b):
        raise ValueError(f"paired values need one value per seed in each arm, got {len(values_a)} and {len(values_b)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    differences = [
        float(b) - float(a)
        for a, b in zip(values_a, values_b, strict=True)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
    ]
    summary = summarize_seeds(differences)
    nan = math.nan
    if summary.n < 2:
        return PairedDifference(n=summary.n, mean=summary.mean, std=nan, low=nan, high=nan, confidence=confidence)
    half_width = t_quantile(0.5 + confidence / 2, summary.n - 1) * summary.std / math.sqrt(summary.n)
    return PairedDifference(
        n=summary.n,
        mean=summary.mean,
        std=summary.std,
        low=summary.mean - half_width,
        high=summary.mean + half_width,
        confidence=confidence,
    )
