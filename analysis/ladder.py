"""Does an answer transfer across a ladder of widths and data sizes? The statistics of a ladder study,
pure functions of the runs' numbers (no torch):

    interaction_tests  does a comparison's effect change with width? with data? (OLS of each seed's
                       paired difference on the rungs' log2 width and log2 data fraction)
    compute_multiplier the compute the baseline arm needs, on its loss-compute fit over the ladder, to
                       reach another arm's loss, divided by the compute that arm used (Marin's
                       "effective compute multiplier"): above 1, the arm is worth more compute
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import statsmodels.api as sm

from analysis.stats import holm


@dataclass(frozen=True)
class Interaction:
    comparison: str
    factor: str  # "width" or "data"
    slope: float  # change of the effect per doubling of the factor
    ci_low: float
    ci_high: float
    p: float  # unadjusted
    p_holm: float


def interaction_tests(differences: dict[tuple[str, str], dict[tuple[int, int], float]],
                      rungs: dict[int, dict[str, float]], alpha: float) -> list[Interaction]:
    """For each comparison: its seeds' paired differences at every rung, regressed on the rungs' factors
    (log2 of each, so a slope is per doubling; a factor with one value on the ladder is left out), OLS;
    a t test of each slope, Holm over every test made. ``differences``: comparison -> (rung, seed) ->
    difference; ``rungs``: rung -> {"width": d_model, "data": train fraction}."""
    factors = [f for f in ("width", "data") if len({r[f] for r in rungs.values()}) > 1]
    found = []
    for comparison, by_point in differences.items():
        points = [(rung, d) for (rung, _), d in by_point.items() if math.isfinite(d)]
        X = sm.add_constant(np.array([[math.log2(rungs[rung][f]) for f in factors] for rung, _ in points]),
                            has_constant="add")
        fit = sm.OLS(np.array([d for _, d in points]), X).fit()
        low_high = fit.conf_int(alpha)
        for j, factor in enumerate(factors, start=1):
            found.append((comparison, factor, float(fit.params[j]), float(low_high[j][0]), float(low_high[j][1]),
                          float(fit.pvalues[j])))
    adjusted = holm([p for *_, p in found])
    return [Interaction(f"{a} vs {b}", factor, slope, low, high, p, q)
            for ((a, b), factor, slope, low, high, p), q in zip(found, adjusted)]


@dataclass(frozen=True)
class Multiplier:
    arm: str
    rung: int
    value: float  # the compute multiplier
    ci_low: float
    ci_high: float
    r_squared: float  # of the baseline's fit: below 0.9 the multiplier is exploratory


def loss_compute_fit(compute: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    """loss = a + b ln(compute), least squares; (a, b, R^2)."""
    X = np.column_stack([np.ones_like(compute), np.log(compute)])
    (a, b), *_ = np.linalg.lstsq(X, loss, rcond=None)
    residual = loss - (a + b * np.log(compute))
    total = np.sum((loss - loss.mean()) ** 2)
    return float(a), float(b), float(1 - np.sum(residual**2) / total) if total > 0 else math.nan


def multiplier_of(a: float, b: float, arm_loss: float, arm_compute: float) -> float:
    """The baseline's compute at the arm's loss (its fit inverted), over the arm's compute."""
    return math.exp((arm_loss - a) / b) / arm_compute if b < 0 else math.nan


def compute_multipliers(losses: dict[tuple[str, int, int], float], compute: dict[int, float], baseline: str,
                        alpha: float, samples: int = 2000, seed: int = 0) -> list[Multiplier]:
    """Each arm's multiplier over ``baseline`` at each rung, with a bootstrap CI over seeds (the seeds
    resampled, the baseline's fit refitted each time). ``losses``: (arm, rung, seed) -> loss;
    ``compute``: rung -> training FLOPs of a run there. Needs two or more rungs of distinct compute."""
    rungs = sorted(compute)
    seeds = sorted({s for _, _, s in losses})
    arms = sorted({a for a, _, _ in losses} - {baseline})
    table = {(arm, rung): np.array([losses.get((arm, rung, s), math.nan) for s in seeds])
             for arm in [baseline, *arms] for rung in rungs}
    flops = np.array([compute[r] for r in rungs], dtype=np.float64)

    def estimate(pick: np.ndarray) -> dict[tuple[str, int], float]:
        base = np.array([np.nanmean(table[baseline, r][pick]) for r in rungs])
        a, b, _ = loss_compute_fit(flops, base)
        return {(arm, r): multiplier_of(a, b, float(np.nanmean(table[arm, r][pick])), compute[r])
                for arm in arms for r in rungs}

    everyone = np.arange(len(seeds))
    observed = estimate(everyone)
    _, _, r_squared = loss_compute_fit(flops, np.array([np.nanmean(table[baseline, r]) for r in rungs]))
    rng = np.random.default_rng(seed)
    replicates = [estimate(rng.integers(0, len(seeds), len(seeds))) for _ in range(samples)]
    out = []
    for arm in arms:
        for r in rungs:
            values = np.array([rep[arm, r] for rep in replicates])
            low, high = np.nanquantile(values, [alpha / 2, 1 - alpha / 2])
            out.append(Multiplier(arm, r, observed[arm, r], float(low), float(high), r_squared))
    return out


# ---------------------------------------------------------------------------------------------
# The ladder's report: what a reader needs across the rungs, from each rung's runs


@dataclass(frozen=True)
class RungResult:
    """One rung's part of the ladder report: its name, its factors, and the judgement of its runs."""

    name: str
    width: int
    data: float  # the training fraction
    compute: float  # training FLOPs of one of its runs (the baseline arm's mean)
    judgement: object  # analysis.findings.Judgement
    beats_bar: dict  # arm -> whether its mean selection loss is below the strongest n-gram's
    bar: str | None  # the strongest n-gram's name (None: the logs have none)


def markdown_ladder(results: list[RungResult], baseline: str, alpha: float) -> str:
    """The ladder's answer: per comparison its verdict at every rung, whether the arms clear the
    strongest n-gram at each rung, the declared interaction tests, and the compute multipliers."""
    comparisons = [(v.arm, v.against) for v in results[0].judgement.verdicts]
    header = "| comparison | " + " | ".join(r.name for r in results) + " | same verdict at every rung |"
    lines = ["## The answer across the ladder", "",
             f"Each cell: the rung's estimate (arm minus the other, {results[0].judgement.metric} at the "
             f"{results[0].judgement.point} point), its CI and its verdict, as the rung's own report gives them "
             f"(uncertainty {results[0].judgement.uncertainty}; Holm within each rung).", "",
             header, "|---|" + "---|" * (len(results) + 1)]
    for i, (a, b) in enumerate(comparisons):
        verdicts = [r.judgement.verdicts[i] for r in results]
        cells = [f"{v.difference:+.4f} [{v.ci_low:+.4f}, {v.ci_high:+.4f}] {v.verdict}" if math.isfinite(v.difference)
                 else v.verdict for v in verdicts]
        same = "yes" if len({v.verdict for v in verdicts}) == 1 else "no"
        lines.append(f"| {a} vs {b} | " + " | ".join(cells) + f" | {same} |")
    lines += ["", "**Against the strongest n-gram on the selection split** (a rung where no arm beats it compares "
                  "models below that bar: its verdicts are not read as statements about the MLP):", ""]
    for r in results:
        beaten = [arm for arm, ok in r.beats_bar.items() if ok]
        lines.append(f"- {r.name}: " + (f"no arm beats {r.bar}" if not beaten else
                                         f"{len(beaten)} of {len(r.beats_bar)} arms beat {r.bar} ({', '.join(beaten)})")
                     if r.bar else f"- {r.name}: no modified Kneser-Ney baseline in these logs")
    differences = {(a, b): {(k, s): r.judgement.values.get((a, s), math.nan) - r.judgement.values.get((b, s), math.nan)
                            for k, r in enumerate(results) for (arm, s) in r.judgement.values if arm == a}
                   for a, b in comparisons}
    factors = {k: {"width": r.width, "data": r.data} for k, r in enumerate(results)}
    tests = interaction_tests(differences, factors, alpha)
    lines += ["", "**Interaction tests** (declared: does each comparison's effect change with width? with data?): each "
                  "seed's paired difference at every rung regressed on log2 width and log2 data fraction (OLS), the "
                  f"slope per doubling, its {100 * (1 - alpha):.0f}% CI, Holm over the {len(tests)} tests:", "",
              "| comparison | factor | slope per doubling | CI | p | p (Holm) | changes with it |", "|---|---|---:|---|---:|---:|---|"]
    for t in tests:
        lines.append(f"| {t.comparison} | {t.factor} | {t.slope:+.4f} | [{t.ci_low:+.4f}, {t.ci_high:+.4f}] | {t.p:.4f} | "
                     f"{t.p_holm:.4f} | {'yes' if t.p_holm < alpha else 'not shown'} |")
    losses = {(arm, k, s): value for k, r in enumerate(results) for (arm, s), value in r.judgement.values.items()}
    compute = {k: r.compute for k, r in enumerate(results)}
    if len({r.width for r in results}) >= 2 and len(set(compute.values())) >= 2:
        multipliers = compute_multipliers(losses, compute, baseline, alpha)
        fit = multipliers[0].r_squared if multipliers else math.nan
        label = "" if fit >= 0.9 else " **Exploratory: the fit is poor (R² below 0.9).**"
        lines += ["", f"**Effective compute multiplier** over {baseline}: the compute {baseline} needs, on its fit "
                      f"loss = a + b ln(training FLOPs) over the rungs' means (R² {fit:.3f}), to reach the arm's loss, "
                      f"divided by the compute the arm used; CI: a bootstrap over seeds, the fit refitted each time.{label}",
                  "", "| arm | " + " | ".join(r.name for r in results) + " |", "|---|" + "---:|" * len(results)]
        for arm in sorted({m.arm for m in multipliers}):
            row = [m for m in multipliers if m.arm == arm]
            lines.append(f"| {arm} | " + " | ".join(f"{m.value:.2f} [{m.ci_low:.2f}, {m.ci_high:.2f}]" for m in row) + " |")
    return "\n".join(lines)
