"""Small-sample statistics for comparing activations across seeds: t confidence intervals, the
paired t-test (both from scipy.stats) and the Holm-Bonferroni correction."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); nan for one value
    ci95: float  # half-width of the 95% t confidence interval of the mean; nan for one value


def t_half_width(std: float, n: int, level: float = 0.95) -> float:
    """Half-width of the t confidence interval of a mean of n values."""
    return float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)


def summarize(values: list[float]) -> Summary:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return Summary(n, mean, math.nan, math.nan)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Summary(n, mean, std, t_half_width(std, n))


@dataclass(frozen=True)
class PairedTest:
    n: int
    mean_diff: float
    ci95: float
    t: float
    p: float


def paired_t_test(x: list[float], y: list[float]) -> PairedTest:
    """Paired two-sided t-test of mean(x - y) = 0 (pairs: same seed), with the 95% CI of the mean
    difference. Differences without spread, where scipy returns nan, get their limits: t = +-inf and
    p = 0 for a constant non-zero difference, t = 0 and p = 1 for none."""
    diffs = [a - b for a, b in zip(x, y, strict=True)]
    s = summarize(diffs)
    if s.n < 2 or math.isnan(s.std):
        return PairedTest(s.n, s.mean, math.nan, math.nan, math.nan)
    if s.std == 0:
        t = 0.0 if s.mean == 0 else math.copysign(math.inf, s.mean)
        return PairedTest(s.n, s.mean, 0.0, t, 1.0 if s.mean == 0 else 0.0)
    result = stats.ttest_rel(x, y)
    return PairedTest(s.n, s.mean, s.ci95, float(result.statistic), float(result.pvalue))


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (nan stays nan and is not counted)."""
    ranked = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m, adjusted, running = len(ranked), [math.nan] * len(p_values), 0.0
    for rank, (p, i) in enumerate(ranked):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
