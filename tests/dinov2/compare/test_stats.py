"""Statistics over seeds against closed forms and scipy."""

import math
import statistics

import numpy as np
import pytest
from scipy import stats as scipy_stats

from dinov2.compare.stats import paired_difference, summarize_seeds, t_quantile


def test_summary_is_the_sample_mean_and_standard_deviation_of_the_finite_values() -> None:
    values = [61.2, 58.4, 66.0, math.nan, None]
    summary = summarize_seeds(values)
    finite = [61.2, 58.4, 66.0]
    assert summary.n == 3 and summary.n_missing == 2
    assert summary.mean == pytest.approx(statistics.mean(finite), abs=1e-12)
    assert summary.std == pytest.approx(statistics.stdev(finite), abs=1e-12)  # n - 1 in the denominator
    assert (summary.minimum, summary.maximum) == (58.4, 66.0)
    single = summarize_seeds([3.0])
    assert single.mean == 3.0 and math.isnan(single.std)
    empty = summarize_seeds([math.nan])
    assert empty.n == 0 and empty.n_missing == 1 and math.isnan(empty.mean)


def test_t_quantiles_match_the_closed_forms_for_one_and_two_degrees_of_freedom() -> None:
    p = 0.975
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)  # Cauchy
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert t_quantile(p, 2) == pytest.approx(4.302652729, rel=1e-8)


def test_paired_interval_of_two_seeds_is_the_closed_form() -> None:
    a, b = [50.0, 55.0], [60.0, 61.0]  # differences 10 and 6
    difference = paired_difference(a, b)
    std = abs(10 - 6) / math.sqrt(2)
    half = math.tan(math.pi * 0.475) * std / math.sqrt(2)
    assert difference.n == 2
    assert difference.mean == pytest.approx(8.0)
    assert difference.std == pytest.approx(std)
    assert (difference.low, difference.high) == (pytest.approx(8 - half), pytest.approx(8 + half))
    assert difference.verdict == "cannot tell"  # 8 +- 25.4 contains 0


def test_paired_interval_equals_scipys_paired_t_test_interval() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(55, 3, size=6)
    b = a + rng.normal(4, 1, size=6)
    ours = paired_difference(list(a), list(b), confidence=0.9)
    reference = scipy_stats.ttest_rel(b, a).confidence_interval(confidence_level=0.9)
    assert ours.low == pytest.approx(reference.low, rel=1e-10)
    assert ours.high == pytest.approx(reference.high, rel=1e-10)
    assert ours.verdict == "B > A"
    assert paired_difference(list(b), list(a)).verdict == "B < A"


def test_a_seed_missing_in_either_arm_is_left_out_of_the_pairs() -> None:
    difference = paired_difference([1.0, math.nan, 3.0, 4.0], [2.0, 5.0, None, 6.0])
    assert difference.n == 2
    assert difference.mean == pytest.approx((1.0 + 2.0) / 2)
    lone = paired_difference([1.0], [2.0])
    assert lone.n == 1 and lone.mean == 1.0 and math.isnan(lone.low) and lone.verdict == "cannot tell"
    tied = paired_difference([50.0, 52.0], [55.0, 57.0])  # equal differences: zero width, no evidence
    assert tied.low == tied.high == 5.0 and tied.verdict == "cannot tell"
    with pytest.raises(ValueError, match="one value per seed"):
        paired_difference([1.0, 2.0], [1.0])
