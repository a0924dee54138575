"""Statistics against values computed independently (textbook tables, closed forms, by hand)."""

from __future__ import annotations

import math

import pytest

from analysis.stats import holm, paired_t_test, summarize, t_half_width


@pytest.mark.parametrize("n, q", [(3, 4.302653), (5, 2.776445), (10, 2.262157)])
def test_t_interval_uses_the_table_quantile(n, q):
    assert t_half_width(1.0, n) == pytest.approx(q / math.sqrt(n), rel=1e-6)


def test_summary_and_confidence_interval():
    s = summarize([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert s.ci95 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(summarize([5.0]).ci95)


def test_paired_t_test_by_hand():
    x, y = [5.1, 4.9, 5.6, 5.8], [4.8, 4.7, 5.1, 5.5]  # diffs 0.3, 0.2, 0.5, 0.3
    result = paired_t_test(x, y)
    mean, sd = 0.325, math.sqrt(((0.3 - 0.325) ** 2 * 2 + (0.2 - 0.325) ** 2 + (0.5 - 0.325) ** 2) / 3)
    t = mean / (sd / 2)
    assert result.mean_diff == pytest.approx(mean) and result.t == pytest.approx(t)
    # Student's t with 3 degrees of freedom has a closed-form CDF: an independent check.
    cdf = 0.5 + (t / (math.sqrt(3) * (1 + t * t / 3)) + math.atan(t / math.sqrt(3))) / math.pi
    assert result.p == pytest.approx(2 * (1 - cdf), rel=1e-6)


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)


def test_differences_without_spread_get_their_limits():
    assert (paired_t_test([1.0, 2.0], [0.5, 1.5]).t, paired_t_test([1.0, 2.0], [0.5, 1.5]).p) == (math.inf, 0.0)
    assert (paired_t_test([1.0, 2.0], [1.0, 2.0]).t, paired_t_test([1.0, 2.0], [1.0, 2.0]).p) == (0.0, 1.0)
    assert math.isnan(paired_t_test([1.0], [0.0]).p)
