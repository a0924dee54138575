"""Verdicts a reviewer would sign: each declared comparison is better, worse, equivalent within
±margin, or inconclusive, with the design's power said out loud.

The test uses every arm at once: the metric is modelled as arm + seed (two-way, additive; a seed
fixes the data order and the shared initial weights, so it shifts every arm alike), fitted by OLS
with one pooled error (statsmodels). A comparison is a contrast of two arm effects:

    difference   two-sided t-test of  a - b = 0
    equivalence  two one-sided t-tests (TOST, Schuirmann 1987) of  a - b <= -margin  and  a - b >= margin

Both families of p-values are Holm-adjusted over the declared comparisons, all of them: one that
could not be tested counts as p = 1. The verdict, in this order: **equivalent** when TOST rejects
(the difference is smaller than the margin, whichever its sign); **better** / **worse** when the
difference test rejects (lower is better); else **inconclusive**. With fewer than MIN_PAIRS seeds shared by the two arms there is no test at all.

Power: the smallest difference the design detects with 80% power with the test it uses (the
two-way model's contrast, at the first Holm step's alpha / m), from the pooled residual SD, and the
seeds a difference of one margin would need (the noncentral t of scipy.stats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import statsmodels.api as sm
from scipy import optimize, stats

from analysis.stats import holm

MIN_PAIRS = 3
MAX_SEEDS = 10_000  # "needs more than this many seeds" is said as infinity
MAX_NONCENTRALITY = 1e4
POWER = 0.8
BETTER, WORSE, EQUIVALENT, INCONCLUSIVE, NOT_TESTED = "better", "worse", "equivalent", "inconclusive", "not tested"


@dataclass(frozen=True)
class Verdict:
    arm: str
    against: str
    pairs: int  # seeds both arms have
    difference: float  # arm minus against, from the two-way model (nan when not tested)
    ci_low: float  # the (1 - alpha) confidence interval of the difference, unadjusted
    ci_high: float
    p_difference: float  # Holm-adjusted
    p_equivalence: float  # Holm-adjusted TOST
    verdict: str


@dataclass(frozen=True)
class Power:
    seeds: int
    paired_sd: float  # SD of one seed's paired difference
    detectable: float  # the difference detected with 80% power at alpha / m
    seeds_for_margin: float  # the fewest seeds that detect one margin with 80% power at alpha / m


def two_way_fit(values: dict[tuple[str, int], float]):
    """OLS of value ~ arm + seed, arms and seeds as indicator columns; (fit, arm column index)."""
    arms = sorted({arm for arm, _ in values})
    seeds = sorted({seed for _, seed in values})
    keys = [key for key in values if math.isfinite(values[key])]
    X = np.zeros((len(keys), len(arms) + len(seeds) - 1))
    for row, (arm, seed) in enumerate(keys):
        X[row, arms.index(arm)] = 1.0  # one column per arm: no intercept
        if seeds.index(seed) > 0:
            X[row, len(arms) + seeds.index(seed) - 1] = 1.0
    fit = sm.OLS(np.array([values[k] for k in keys]), X).fit()
    return fit, {arm: i for i, arm in enumerate(arms)}


def tost_p(estimate: float, se: float, df: float, margin: float) -> float:
    """The TOST p-value: the larger of the two one-sided tests against -margin and +margin."""
    above_lower = stats.t.sf((estimate + margin) / se, df)
    below_upper = stats.t.cdf((estimate - margin) / se, df)
    return float(max(above_lower, below_upper))


def common_seeds(values: dict[tuple[str, int], float], a: str, b: str) -> list[int]:
    """The seeds both arms ran, in order: the pairs a paired comparison of ``a`` with ``b`` rests on."""
    return sorted({s for (arm, s) in values if arm == a} & {s for (arm, s) in values if arm == b})


def holm_over_declared(comparisons: list[tuple[str, str]],
                       p_values: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    """Holm over the whole declared family: a comparison not tested (no p-value) counts as p = 1, so it
    rejects nothing and leaves the others' correction as strict as the declaration made it."""
    return dict(zip(comparisons, holm([p_values.get(c, 1.0) for c in comparisons])))


def judge(values: dict[tuple[str, int], float], comparisons: list[tuple[str, str]], margin: float,
          alpha: float) -> list[Verdict]:
    """One verdict per comparison (arm, against); ``values``: (arm, seed) -> metric, lower is better."""
    testable = [(a, b) for a, b in comparisons if len(common_seeds(values, a, b)) >= MIN_PAIRS]
    estimates = {}
    if testable:
        fit, column = two_way_fit(values)
        for a, b in testable:
            contrast = np.zeros(len(fit.params))
            contrast[column[a]], contrast[column[b]] = 1.0, -1.0
            test = fit.t_test(contrast)
            estimate, se = float(np.squeeze(test.effect)), float(np.squeeze(test.sd))
            low, high = np.squeeze(test.conf_int(alpha=alpha))
            p_diff = float(np.squeeze(test.pvalue))
            p_equiv = tost_p(estimate, se, fit.df_resid, margin) if se > 0 else float(abs(estimate) < margin)
            estimates[a, b] = (estimate, float(low), float(high), p_diff, p_equiv)
    adjusted_diff = holm_over_declared(comparisons, {c: e[3] for c, e in estimates.items()})
    adjusted_equiv = holm_over_declared(comparisons, {c: e[4] for c, e in estimates.items()})
    out = []
    for a, b in comparisons:
        pairs = len(common_seeds(values, a, b))
        if (a, b) not in estimates:
            out.append(Verdict(a, b, pairs, math.nan, math.nan, math.nan, math.nan, math.nan, NOT_TESTED))
            continue
        estimate, low, high, _, _ = estimates[a, b]
        p_diff, p_equiv = adjusted_diff[a, b], adjusted_equiv[a, b]
        if p_equiv < alpha:
            verdict = EQUIVALENT
        elif p_diff < alpha:
            verdict = BETTER if estimate < 0 else WORSE
        else:
            verdict = INCONCLUSIVE
        out.append(Verdict(a, b, pairs, estimate, low, high, p_diff, p_equiv, verdict))
    return out


def contrast_power(difference: float, sd: float, arms: int, seeds: int, level: float) -> float:
    """Power of the two-way model's two-sided test of one contrast, balanced design: the contrast's
    t has (arms - 1)(seeds - 1) degrees of freedom and noncentrality difference / (sd sqrt(2 / seeds))."""
    df = (arms - 1) * (seeds - 1)
    # Capped where the power is 1 to double precision already: scipy's nct returns nan far beyond it.
    noncentrality = min(abs(difference) / (sd * math.sqrt(2 / seeds)), MAX_NONCENTRALITY)
    critical = stats.t.ppf(1 - level / 2, df)
    near, far = stats.nct.sf(critical, df, noncentrality), stats.nct.cdf(-critical, df, noncentrality)
    return float(near + (0.0 if math.isnan(far) else far))  # far: the other tail, which underflows (scipy: nan)


def power(values: dict[tuple[str, int], float], n_comparisons: int, margin: float, alpha: float) -> Power | None:
    """What the design can detect with the test it uses (the two-way model), from its pooled residual
    SD, at the first Holm step's level alpha / m; None without the seeds or residual degrees of freedom."""
    seeds, arms = len({s for _, s in values}), len({a for a, _ in values})
    if seeds < MIN_PAIRS or arms < 2:
        return None
    fit, _ = two_way_fit(values)
    if fit.df_resid < 1:
        return None
    sd, level = math.sqrt(fit.scale), alpha / max(n_comparisons, 1)
    if sd == 0:
        return Power(seeds, 0.0, 0.0, float(MIN_PAIRS))
    top = 20 * sd * math.sqrt(2 / seeds)  # noncentrality 20: power 1 to many digits
    detectable = optimize.brentq(lambda d: contrast_power(d, sd, arms, seeds, level) - POWER, 0.0, top)
    enough = next((n for n in range(2, MAX_SEEDS) if contrast_power(margin, sd, arms, n, level) >= POWER), math.inf)
    return Power(seeds, math.sqrt(2) * sd, detectable, float(enough))
