"""Small-sample statistics for comparing activations across seeds, with no SciPy dependency.

Student's t distribution via the regularized incomplete beta function (continued fraction,
Numerical Recipes 6.4): for t with df degrees of freedom, P(|T| > |t|) = I_x(df/2, 1/2) with
x = df / (df + t^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(q: float, df: int) -> float:
    """The q-quantile (0.5 < q < 1) of Student's t, by bisection on the two-sided tail."""
    target = 2.0 * (1.0 - q)
    lo, hi = 0.0, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > target else (lo, mid)
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); nan for one value
    ci95: float  # half-width of the 95% t confidence interval of the mean; nan for one value


def summarize(values: list[float]) -> Summary:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return Summary(n, mean, math.nan, math.nan)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Summary(n, mean, std, t_quantile(0.975, n - 1) * std / math.sqrt(n))


@dataclass(frozen=True)
class PairedTest:
    n: int
    mean_diff: float
    ci95: float
    t: float
    p: float


def paired_t_test(x: list[float], y: list[float]) -> PairedTest:
    """Paired two-sided t-test of mean(x - y) = 0 (pairs: same seed)."""
    diffs = [a - b for a, b in zip(x, y, strict=True)]
    s = summarize(diffs)
    if s.n < 2:
        return PairedTest(s.n, s.mean, math.nan, math.nan, math.nan)
    if s.std == 0:
        t = 0.0 if s.mean == 0 else math.copysign(math.inf, s.mean)
    else:
        t = s.mean / (s.std / math.sqrt(s.n))
    return PairedTest(s.n, s.mean, s.ci95, t, t_two_sided_p(t, s.n - 1) if not math.isnan(t) else math.nan)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (nan stays nan and is not counted)."""
    ranked = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m, adjusted, running = len(ranked), [math.nan] * len(p_values), 0.0
    for rank, (p, i) in enumerate(ranked):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
