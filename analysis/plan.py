"""How many seeds the next study needs: a closed-form power calculation from a finished pilot or study.

The variance of one comparison's estimate with n seeds is, with the report split's articles fixed,

    Var(n) = sd_paired**2 / n + var_articles

sd_paired: the SD of one seed's paired difference (the two-way model's pooled residual SD times
sqrt(2)); var_articles: the variance the choice of articles adds (a bootstrap over the articles alone,
seeds held; 0 for logs without per-article losses, which understates it). More seeds shrink only the
first term: where var_articles alone is too large, no number of seeds resolves the question (say so).
Normal approximation, at the first Holm step's level alpha / (2m) of the declared family:

    difference of size E detected with power 1 - beta:   E / sqrt(Var(n)) >= z(1 - alpha / 4m) + z(1 - beta)
    equivalence within ±M shown, true difference 0:      M / sqrt(Var(n)) >= z(1 - alpha / 2m) + z(1 - beta / 2)

solved for the smallest whole n (at least 3, the fewest seeds a verdict is tested with).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from analysis.findings import article_losses
from analysis.verdicts import MIN_PAIRS, POWER, bootstrap_differences, common_seeds, two_way_fit


def seeds_needed(sd_paired: float, var_articles: float, needed_z: float, size: float) -> float:
    """The fewest seeds with size / sqrt(sd**2 / n + var_articles) >= needed_z; inf when none do."""
    room = (size / needed_z) ** 2 - var_articles
    if room <= 0:
        return math.inf
    return float(max(MIN_PAIRS, math.ceil(sd_paired**2 / room - 1e-9)))


def z_difference(alpha: float, n_tests: int, power: float = POWER) -> float:
    return float(stats.norm.ppf(1 - alpha / n_tests / 2) + stats.norm.ppf(power))


def z_equivalence(alpha: float, n_tests: int, power: float = POWER) -> float:
    return float(stats.norm.ppf(1 - alpha / n_tests) + stats.norm.ppf(1 - (1 - power) / 2))


@dataclass(frozen=True)
class PlanRow:
    comparison: str
    sd_paired: float
    article_se: float  # sqrt(var_articles); nan without per-article losses
    for_effect: float
    for_margin: float


def article_variance(per_article, a: str, b: str) -> float:
    """The variance the report split's articles add to the a - b estimate: a bootstrap of the articles
    alone (each replicate: every seed, the articles resampled)."""
    seeds = common_seeds(per_article, a, b)
    held = {k: v for k, v in per_article.items() if k[1] in seeds}
    _, replicates = bootstrap_differences(held, a, b, seeds_too=False)
    return float(np.var(replicates, ddof=1))


def plan(group: list, comparisons: list[tuple[str, str]], metric: str, point: str, alpha: float, effect: float,
         margin: float) -> list[PlanRow]:
    """One row per declared comparison (and one pooled), from the finished runs of ``group``."""
    values = {(r.variant, r.seed): r.metric_at(metric, point) for r in group}
    per_article = article_losses(group, metric, point)
    n_tests = 2 * len(comparisons)
    fit, _ = two_way_fit(values)
    pooled_sd = math.sqrt(2 * fit.scale)
    rows = []
    for a, b in comparisons:
        if len(common_seeds(values, a, b)) < MIN_PAIRS:
            continue
        diffs = [values[a, s] - values[b, s] for s in common_seeds(values, a, b)]
        sd = float(np.std(diffs, ddof=1))
        var_articles = article_variance(per_article, a, b) if per_article else 0.0
        rows.append(PlanRow(f"{a} vs {b}", sd, math.sqrt(var_articles) if per_article else math.nan,
                            seeds_needed(sd, var_articles, z_difference(alpha, n_tests), effect),
                            seeds_needed(sd, var_articles, z_equivalence(alpha, n_tests), margin)))
    worst_articles = max((r.article_se for r in rows if math.isfinite(r.article_se)), default=math.nan)
    var_worst = worst_articles**2 if math.isfinite(worst_articles) else 0.0
    rows.append(PlanRow("pooled (the two-way model's SD; the largest article SE)", pooled_sd, worst_articles,
                        seeds_needed(pooled_sd, var_worst, z_difference(alpha, n_tests), effect),
                        seeds_needed(pooled_sd, var_worst, z_equivalence(alpha, n_tests), margin)))
    return rows


def markdown_plan(rows: list[PlanRow], effect: float, margin: float, alpha: float, n_tests: int, seeds: int) -> str:
    def n(value: float) -> str:
        return "no number of seeds (the articles alone are too uncertain)" if math.isinf(value) else f"{value:.0f}"

    lines = [f"Seeds per arm for 80% power at alpha {alpha}/{n_tests} (the first Holm step over both tests of "
             f"{n_tests // 2} comparisons), normal approximation, from the {seeds} seeds run:", "",
             f"| comparison | paired SD over seeds | SE from the articles | seeds to detect {effect} | "
             f"seeds to show equivalence within ±{margin} (true difference 0) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        article = "not recorded" if math.isnan(r.article_se) else f"{r.article_se:.4f}"
        lines.append(f"| {r.comparison} | {r.sd_paired:.4f} | {article} | {n(r.for_effect)} | {n(r.for_margin)} |")
    if any(math.isnan(r.article_se) for r in rows):
        lines += ["", "These logs hold no per-article losses: the plan counts seeds only, and understates what "
                      "a seeds+articles analysis needs."]
    return "\n".join(lines)
