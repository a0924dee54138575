"""Verdicts a reviewer would sign: each declared comparison asks two questions, is there a difference
and is it within ±margin, and its verdict names both answers.

Two tests per comparison (lower is better):

    difference   two-sided test of  a - b = 0
    equivalence  two one-sided tests (TOST, Schuirmann 1987) of  a - b <= -margin  and  a - b >= margin

One multiplicity procedure over the whole family actually tested: Holm over the 2m p-values of the m
declared comparisons (m difference tests and m equivalence tests), so the chance of any false claim,
of a difference or of an equivalence, is at most alpha; a comparison that could not be tested counts
as p = 1 in both. (Holm holds under any dependence between the tests; the two of one comparison are
dependent, and can both be false, when a real difference is smaller than the margin.) The outcomes:

    better / worse                           difference shown, equivalence not shown (beyond the
                                             margin, or not shown to be within it)
    better, within the margin / worse, ...   difference shown and equivalence shown: real but smaller
                                             than the margin
    equivalent                               equivalence shown, no difference shown
    inconclusive                             neither

How the uncertainty is estimated (the study file's ``uncertainty``):

    seeds           the metric modelled as arm + seed (two-way, additive; a seed fixes the data order
                    and the shared initial weights, so it shifts every arm alike), OLS with one pooled
                    error (statsmodels); a comparison is a contrast of two arm effects (t tests)
    seeds+articles  a bootstrap over seeds and the report split's articles at once, both resampled
                    with replacement and independently (crossed, Owen 2007's pigeonhole bootstrap),
                    keeping the pairing (one resampled seed is the same seed in both arms, one
                    resampled article the same article in every run); the statistic is the mean over
                    seeds of the difference of the token-weighted losses. CI: percentiles; p of the
                    difference: twice the smaller tail beyond 0; p of equivalence: the larger share
                    beyond -margin or +margin (the CI and TOST agree by construction). With few seeds
                    the bootstrap's seed part is slightly narrow (by sqrt((n - 1) / n)).

With fewer than MIN_PAIRS seeds shared by the two arms there is no test at all.

Power: the smallest difference the design detects with 80% power with the two-way model's test at
the first Holm step's level alpha / 2m, from the pooled residual SD, and the seeds a difference of one
margin would need (the noncentral t of scipy.stats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from analysis.stats import holm

MIN_PAIRS = 3
MAX_SEEDS = 10_000  # "needs more than this many seeds" is said as infinity
MAX_NONCENTRALITY = 1e4
POWER = 0.8
BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED = 10_000, 0  # a fixed generator: a report regenerates byte for byte
BETTER, WORSE, EQUIVALENT, INCONCLUSIVE, NOT_TESTED = "better", "worse", "equivalent", "inconclusive", "not tested"
WITHIN = ", within the margin"  # after better or worse: a difference shown, and shown to be smaller than the margin
SEEDS, SEEDS_AND_ARTICLES = "seeds", "seeds+articles"
UNCERTAINTIES = (SEEDS, SEEDS_AND_ARTICLES)


@dataclass(frozen=True)
class Verdict:
    arm: str
    against: str
    pairs: int  # seeds both arms have
    difference: float  # arm minus against, from the two-way model (nan when not tested)
    ci_low: float  # the (1 - alpha) confidence interval of the difference, unadjusted
    ci_high: float
    p_difference: float  # Holm-adjusted over the family of 2m tests
    p_equivalence: float  # Holm-adjusted TOST, same family
    verdict: str


@dataclass(frozen=True)
class Estimate:
    """One comparison's estimate with its unadjusted (1 - alpha) CI and unadjusted p-values."""

    difference: float
    ci_low: float
    ci_high: float
    p_difference: float
    p_equivalence: float


@dataclass(frozen=True)
class Power:
    seeds: int
    paired_sd: float  # SD of one seed's paired difference
    detectable: float  # the difference detected with 80% power at alpha / n_tests
    seeds_for_margin: float  # the fewest seeds that detect one margin with 80% power at alpha / n_tests


def two_way_fit(values: dict[tuple[str, int], float]):
    """OLS of value ~ arm + seed, arms and seeds as indicator columns; (fit, arm column index)."""
    import statsmodels.api as sm  # here: a second to import, and a study file's loader imports this module

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


def common_seeds(values: dict[tuple[str, int], object], a: str, b: str) -> list[int]:
    """The seeds both arms ran, in order: the pairs a paired comparison of ``a`` with ``b`` rests on."""
    return sorted({s for (arm, s) in values if arm == a} & {s for (arm, s) in values if arm == b})


def outcome(difference: float, p_difference: float, p_equivalence: float, alpha: float) -> str:
    """The verdict's name from both adjusted tests: nothing shown is hidden by what else was shown."""
    different, within = p_difference < alpha, p_equivalence < alpha
    if different:
        return (BETTER if difference < 0 else WORSE) + (WITHIN if within else "")
    return EQUIVALENT if within else INCONCLUSIVE


def seed_estimates(values: dict[tuple[str, int], float], comparisons: list[tuple[str, str]], margin: float,
                   alpha: float) -> dict[tuple[str, str], Estimate]:
    """Each testable comparison's contrast in the two-way model (``values``: (arm, seed) -> metric)."""
    testable = [(a, b) for a, b in comparisons if len(common_seeds(values, a, b)) >= MIN_PAIRS]
    if not testable:
        return {}
    fit, column = two_way_fit(values)
    estimates = {}
    for a, b in testable:
        contrast = np.zeros(len(fit.params))
        contrast[column[a]], contrast[column[b]] = 1.0, -1.0
        test = fit.t_test(contrast)
        estimate, se = float(np.squeeze(test.effect)), float(np.squeeze(test.sd))
        low, high = np.squeeze(test.conf_int(alpha=alpha))
        p_equiv = tost_p(estimate, se, fit.df_resid, margin) if se > 0 else float(abs(estimate) >= margin)
        estimates[a, b] = Estimate(estimate, float(low), float(high), float(np.squeeze(test.pvalue)), p_equiv)
    return estimates


ArticleLosses = dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]  # (arm, seed) -> (NLL per article, targets per article)


def bootstrap_differences(article_losses: ArticleLosses, a: str, b: str, samples: int = BOOTSTRAP_SAMPLES,
                          seed: int = BOOTSTRAP_SEED, seeds_too: bool = True) -> tuple[float, np.ndarray]:
    """The observed difference of ``a`` and ``b`` (mean over shared seeds of the difference of their
    token-weighted losses) and its bootstrap replicates, seeds and articles resampled together (or the
    articles alone, every seed kept, with ``seeds_too`` False)."""
    seeds = common_seeds(article_losses, a, b)
    nll_difference = np.stack([article_losses[a, s][0] - article_losses[b, s][0] for s in seeds])  # (seeds, articles)
    targets = article_losses[a, seeds[0]][1].astype(np.float64)
    observed = float((nll_difference.sum(axis=1) / targets.sum()).mean())
    rng = np.random.default_rng(seed)
    n_seeds, n_articles = nll_difference.shape
    article_weights = rng.multinomial(n_articles, np.full(n_articles, 1 / n_articles), size=samples)  # (samples, articles)
    seed_weights = (rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=samples) if seeds_too
                    else np.ones((samples, n_seeds)))  # (samples, seeds)
    per_seed = (article_weights @ nll_difference.T) / (article_weights @ targets)[:, None]  # (samples, seeds)
    return observed, (seed_weights * per_seed).sum(axis=1) / n_seeds


def article_estimates(article_losses: ArticleLosses, comparisons: list[tuple[str, str]], margin: float,
                      alpha: float) -> dict[tuple[str, str], Estimate]:
    """Each testable comparison's estimate with its uncertainty over seeds and articles (bootstrap)."""
    estimates = {}
    for a, b in comparisons:
        if len(common_seeds(article_losses, a, b)) < MIN_PAIRS:
            continue
        observed, replicates = bootstrap_differences(article_losses, a, b)
        low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
        n = len(replicates)
        tail = min((replicates <= 0).sum(), (replicates >= 0).sum())
        p_difference = min(1.0, 2 * (tail + 1) / (n + 1))
        p_equivalence = (max((replicates <= -margin).sum(), (replicates >= margin).sum()) + 1) / (n + 1)
        estimates[a, b] = Estimate(observed, float(low), float(high), p_difference, float(p_equivalence))
    return estimates


def judge(estimates: dict[tuple[str, str], Estimate], comparisons: list[tuple[str, str]], pairs: dict[tuple[str, str], int],
          alpha: float) -> list[Verdict]:
    """One verdict per comparison (arm, against), Holm over the family of both tests of every declared
    comparison (2m); ``pairs``: the seeds each comparison shares."""
    m = len(comparisons)
    raw = [estimates[c].p_difference if c in estimates else 1.0 for c in comparisons] + \
          [estimates[c].p_equivalence if c in estimates else 1.0 for c in comparisons]
    adjusted = holm(raw)
    out = []
    for i, (a, b) in enumerate(comparisons):
        if (a, b) not in estimates:
            out.append(Verdict(a, b, pairs[a, b], math.nan, math.nan, math.nan, math.nan, math.nan, NOT_TESTED))
            continue
        e, p_diff, p_equiv = estimates[a, b], adjusted[i], adjusted[m + i]
        out.append(Verdict(a, b, pairs[a, b], e.difference, e.ci_low, e.ci_high, p_diff, p_equiv,
                           outcome(e.difference, p_diff, p_equiv, alpha)))
    return out


def judge_by_seeds(values: dict[tuple[str, int], float], comparisons: list[tuple[str, str]], margin: float,
                   alpha: float) -> list[Verdict]:
    """The verdicts with the seed-only (two-way model) uncertainty."""
    pairs = {(a, b): len(common_seeds(values, a, b)) for a, b in comparisons}
    return judge(seed_estimates(values, comparisons, margin, alpha), comparisons, pairs, alpha)


def judge_by_seeds_and_articles(article_losses: ArticleLosses, comparisons: list[tuple[str, str]], margin: float,
                                alpha: float) -> list[Verdict]:
    """The verdicts with the uncertainty over seeds and the report split's articles (bootstrap)."""
    pairs = {(a, b): len(common_seeds(article_losses, a, b)) for a, b in comparisons}
    return judge(article_estimates(article_losses, comparisons, margin, alpha), comparisons, pairs, alpha)


def contrast_power(difference: float, sd: float, arms: int, seeds: int, level: float) -> float:
    """Power of the two-way model's two-sided test of one contrast, balanced design: the contrast's
    t has (arms - 1)(seeds - 1) degrees of freedom and noncentrality difference / (sd sqrt(2 / seeds))."""
    df = (arms - 1) * (seeds - 1)
    # Capped where the power is 1 to double precision already: scipy's nct returns nan far beyond it.
    noncentrality = min(abs(difference) / (sd * math.sqrt(2 / seeds)), MAX_NONCENTRALITY)
    critical = stats.t.ppf(1 - level / 2, df)
    near, far = stats.nct.sf(critical, df, noncentrality), stats.nct.cdf(-critical, df, noncentrality)
    return float(near + (0.0 if math.isnan(far) else far))  # far: the other tail, which underflows (scipy: nan)


def power(values: dict[tuple[str, int], float], n_tests: int, margin: float, alpha: float) -> Power | None:
    """What the design can detect with the test it uses (the two-way model), from its pooled residual
    SD, at the first Holm step's level alpha / n_tests (2m: both tests of each comparison); None
    without the seeds or residual degrees of freedom."""
    seeds, arms = len({s for _, s in values}), len({a for a, _ in values})
    if seeds < MIN_PAIRS or arms < 2:
        return None
    fit, _ = two_way_fit(values)
    if fit.df_resid < 1:
        return None
    sd, level = math.sqrt(fit.scale), alpha / max(n_tests, 1)
    if sd == 0:
        return Power(seeds, 0.0, 0.0, float(MIN_PAIRS))
    top = 20 * sd * math.sqrt(2 / seeds)  # noncentrality 20: power 1 to many digits
    detectable = optimize.brentq(lambda d: contrast_power(d, sd, arms, seeds, level) - POWER, 0.0, top)
    enough = next((n for n in range(2, MAX_SEEDS) if contrast_power(margin, sd, arms, n, level) >= POWER), math.inf)
    return Power(seeds, math.sqrt(2) * sd, detectable, float(enough))
