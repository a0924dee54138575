"""Statistics against values computed independently (textbook tables / SciPy, copied here)."""

from __future__ import annotations

import math

import pytest

from stats import holm, paired_t_test, summarize, t_quantile, t_two_sided_p


@pytest.mark.parametrize("t, df, p", [(2.0, 5, 0.10194), (2.776445, 4, 0.05), (1.0, 1, 0.5), (12.706205, 1, 0.05),
                                      (1.959964, 10_000, 0.05004)])
def test_t_tail_matches_tables(t, df, p):
    assert t_two_sided_p(t, df) == pytest.approx(p, abs=2e-5)


@pytest.mark.parametrize("df, q", [(2, 4.302653), (4, 2.776445), (9, 2.262157)])
def test_t_quantile_matches_tables(df, q):
    assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-5)


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
