"""Verdicts: the two-way model and TOST against worked examples, one Holm over both tests of every
declared comparison, outcomes that name both answers, the bootstrap over seeds and articles, power,
and no test below three pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.weightstats import ttost_paired

from analysis.stats import holm
from analysis.verdicts import BETTER, EQUIVALENT, INCONCLUSIVE, NOT_TESTED, WITHIN, WORSE, judge_by_seeds, \
    judge_by_seeds_and_articles, power, seed_estimates

judge = judge_by_seeds

BASE = [5.0, 5.1, 4.9, 5.05, 4.95]  # five seeds of the baseline arm


def design(**shifts: list[float]) -> dict[tuple[str, int], float]:
    """(arm, seed) -> value: the baseline per seed plus each arm's per-seed shift."""
    values = {("base", s): v for s, v in enumerate(BASE)}
    for arm, shift in shifts.items():
        values.update({(arm, s): BASE[s] + d for s, d in enumerate(shift)})
    return values


def test_tost_by_hand_and_against_statsmodels_paired_tost():
    # differences 0.010 +- 0.0015811 (SD) over 5 seeds: se 0.00070711; against +0.02, t = -14.1421 on
    # 4 df, p = 7.2564e-05 (the larger one-sided p); with two arms the two-way model is the paired t
    d = [0.01, 0.012, 0.008, 0.011, 0.009]
    raw = seed_estimates(design(b=d), [("b", "base")], margin=0.02, alpha=0.05)["b", "base"]
    assert raw.difference == pytest.approx(0.01) and raw.p_equivalence == pytest.approx(7.2564e-05, rel=1e-4)
    reference, _, _ = ttost_paired(np.add(BASE, d), np.array(BASE), -0.02, 0.02)
    assert raw.p_equivalence == pytest.approx(float(reference), rel=1e-9)
    assert raw.ci_low < 0.01 < raw.ci_high


def test_a_difference_that_is_significant_and_within_the_margin_is_not_called_plain_equivalent():
    # +0.010 with SD 0.0016 over 5 seeds: clearly not zero (t = 14) and clearly inside ±0.02
    [v] = judge(design(b=[0.01, 0.012, 0.008, 0.011, 0.009]), [("b", "base")], margin=0.02, alpha=0.05)
    assert v.p_difference < 0.05 and v.p_equivalence < 0.05
    assert v.verdict == WORSE + WITHIN == "worse, within the margin"
    [v] = judge(design(b=[-0.01, -0.012, -0.008, -0.011, -0.009]), [("b", "base")], margin=0.02, alpha=0.05)
    assert v.verdict == BETTER + WITHIN
    # inside the margin but not shown different: plain equivalent
    [v] = judge(design(b=[0.004, -0.003, 0.002, -0.004, 0.001]), [("b", "base")], margin=0.02, alpha=0.05)
    assert v.verdict == EQUIVALENT


def test_one_holm_runs_over_both_tests_of_every_comparison():
    values = design(a=[0.01, 0.012, 0.008, 0.011, 0.009], b=[-0.02, -0.01, -0.03, -0.015, -0.025])
    comparisons = [("a", "base"), ("b", "base")]
    raw = seed_estimates(values, comparisons, 0.02, 0.05)
    family = holm([raw[c].p_difference for c in comparisons] + [raw[c].p_equivalence for c in comparisons])
    verdicts = judge(values, comparisons, 0.02, 0.05)
    assert [v.p_difference for v in verdicts] == pytest.approx(family[:2], rel=1e-12)
    assert [v.p_equivalence for v in verdicts] == pytest.approx(family[2:], rel=1e-12)
    # not two separate corrections: the family has 4 tests
    assert verdicts[0].p_equivalence != pytest.approx(holm([raw[c].p_equivalence for c in comparisons])[0], rel=1e-6)


def test_better_worse_and_inconclusive():
    noise = [0.004, -0.003, 0.002, -0.004, 0.001]
    verdicts = judge(design(good=[-0.1 + n for n in noise], bad=[0.1 + n for n in noise],
                            unsure=[0.03, -0.05, 0.08, -0.02, 0.01]),
                     [("good", "base"), ("bad", "base"), ("unsure", "base")], margin=0.02, alpha=0.05)
    assert [v.verdict for v in verdicts] == [BETTER, WORSE, INCONCLUSIVE]


def test_holm_runs_over_the_declared_comparisons_only():
    shifts = dict(a=[-0.02, -0.01, -0.03, -0.015, -0.025], b=[0.5, 0.6, 0.4, 0.55, 0.45])
    alone = judge(design(**shifts), [("a", "base")], 0.02, 0.05)[0]
    both = judge(design(**shifts), [("a", "base"), ("b", "base")], 0.02, 0.05)[0]
    assert both.p_difference >= alone.p_difference  # one more declared comparison: a stricter correction
    assert both.difference == pytest.approx(alone.difference, abs=1e-12)  # the same contrast


def test_holm_counts_a_declared_comparison_that_could_not_be_tested():
    # A study in progress: "late" has no runs yet. Its comparison stays in the family as p = 1, so
    # "a" is corrected as one of two (2p), not as the only comparison (p).
    values = design(a=[-0.02, -0.01, -0.03, -0.015, -0.025])
    alone = judge(values, [("a", "base")], 0.02, 0.05)[0]
    a, late = judge(values, [("a", "base"), ("late", "base")], 0.02, 0.05)
    assert late.verdict == NOT_TESTED and late.pairs == 0
    raw = seed_estimates(values, [("a", "base")], 0.02, 0.05)["a", "base"]
    family = holm([raw.p_difference, 1.0, raw.p_equivalence, 1.0])  # late's two tests count as p = 1
    assert 0 < alone.p_difference < 0.5 and a.p_difference == pytest.approx(family[0], rel=1e-12)
    assert a.p_equivalence == pytest.approx(family[2], rel=1e-12) and a.p_difference > alone.p_difference


def test_fewer_than_three_pairs_are_not_tested():
    values = {k: v for k, v in design(b=[0.1] * 5).items() if k[1] < 2}
    [v] = judge(values, [("b", "base")], 0.02, 0.05)
    assert v.verdict == NOT_TESTED and v.pairs == 2 and math.isnan(v.p_difference)
    assert power(values, 1, 0.02, 0.05) is None


def test_the_power_statement_is_the_power_of_the_test_used():
    # Simulate the design at the difference the statement says is detected with 80% power: the
    # verdict's own difference test must then reject in about 80% of studies.
    rng = np.random.default_rng(0)
    sd, seeds = 0.015, 5
    observed = {(arm, s): rng.normal(0, sd) for arm in ("base", "b", "c") for s in range(seeds)}
    statement = power(observed, n_tests=2, margin=0.02, alpha=0.05)
    assert statement.seeds == seeds and statement.detectable > 0
    rejected = 0
    for _ in range(400):
        study = {(arm, s): rng.normal(statement.detectable if arm == "b" else 0, statement.paired_sd / math.sqrt(2))
                 for arm in ("base", "b", "c") for s in range(seeds)}
        rejected += judge(study, [("b", "base")], 0.02, 0.05)[0].verdict.startswith(WORSE)
    assert rejected / 400 == pytest.approx(0.8, abs=0.06)
    more = power(observed, 2, margin=statement.detectable + 1e-9, alpha=0.05)  # just past the 80% point
    assert more.seeds_for_margin == seeds  # the margin it detects at these seeds needs exactly these seeds


def test_power_with_almost_no_noise_is_a_tiny_detectable_difference_not_a_crash():
    values = {(arm, s): shift + 1e-9 * ((s * 7 + len(arm)) % 3) for arm, shift in (("base", 1.0), ("b", 1.5), ("c", 2.0))
              for s in range(4)}
    p = power(values, n_tests=4, margin=0.02, alpha=0.05)
    assert 0 < p.detectable < 1e-6 and p.seeds_for_margin == 2


# ---------------------------------------------------------------------------------------------
# Uncertainty over seeds and the report split's articles


def article_study(effect_on: np.ndarray, seeds: int = 6, articles: int = 20, seed: int = 0):
    """(arm, seed) -> (NLL per article, targets per article): arm b is 0.2 nats worse than base on the
    articles where ``effect_on`` is True and the same elsewhere; seeds shift both arms alike, plus a
    little per-seed noise in the difference."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(200, 2000, articles)
    article_loss = rng.normal(6.5, 0.5, articles)
    out = {}
    for s in range(seeds):
        shift, noise = rng.normal(0, 0.05), rng.normal(0, 0.003)
        out["base", s] = ((article_loss + shift) * targets, targets)
        out["b", s] = ((article_loss + shift + 0.2 * effect_on + noise) * targets, targets)
    return out


def seed_values(per_article) -> dict:
    return {k: float(nll.sum() / tokens.sum()) for k, (nll, tokens) in per_article.items()}


def test_arms_that_differ_on_half_the_articles_get_a_wider_ci_over_seeds_and_articles():
    half = np.arange(20) % 2 == 0
    per_article = article_study(half)
    [by_seeds] = judge(seed_values(per_article), [("b", "base")], 0.02, 0.05)
    [by_both] = judge_by_seeds_and_articles(per_article, [("b", "base")], 0.02, 0.05)
    assert by_both.difference == pytest.approx(by_seeds.difference, abs=1e-12)  # the same estimate
    assert (by_both.ci_high - by_both.ci_low) > 5 * (by_seeds.ci_high - by_seeds.ci_low)
    # where every article moves alike, the articles add nothing: the two widths are alike
    everywhere = article_study(np.ones(20, dtype=bool))
    [s_only] = judge(seed_values(everywhere), [("b", "base")], 0.02, 0.05)
    [both] = judge_by_seeds_and_articles(everywhere, [("b", "base")], 0.02, 0.05)
    assert (both.ci_high - both.ci_low) < 2 * (s_only.ci_high - s_only.ci_low)


def test_the_bootstrap_keeps_the_pairing_and_its_tests_agree_with_its_ci():
    per_article = article_study(np.arange(20) < 15)  # +0.15 on average, mostly everywhere
    [v] = judge_by_seeds_and_articles(per_article, [("b", "base")], 0.02, 0.05)
    assert v.verdict == WORSE and v.ci_low > 0.02  # CI beyond the margin: worse, not within it
    # the seeds' shared shift cancels in each pair: scaling it up changes nothing
    shifted = {k: (nll + (3.0 if k[1] == 2 else 0.0) * tokens, tokens) for k, (nll, tokens) in per_article.items()}
    [w] = judge_by_seeds_and_articles(shifted, [("b", "base")], 0.02, 0.05)
    assert (w.difference, w.ci_low, w.ci_high) == pytest.approx((v.difference, v.ci_low, v.ci_high), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# The power planner (study.py --plan)


def test_the_plan_gives_the_seeds_of_the_closed_form_calculation():
    from analysis.plan import seeds_needed, z_difference, z_equivalence

    # 5 comparisons, 10 tests: z(1 - 0.05/20) + z(0.8) = 2.8070 + 0.8416 = 3.6486, so detecting 0.01 with a
    # paired SD of 0.013 needs 0.013^2 3.6486^2 / 0.01^2 = 22.5 -> 23 seeds; equivalence within ±0.01:
    # z(1 - 0.05/10) + z(0.9) = 2.5758 + 1.2816 = 3.8574 -> 25.1 -> 26 seeds
    assert z_difference(0.05, 10) == pytest.approx(3.6486, abs=1e-4)
    assert seeds_needed(0.013, 0.0, z_difference(0.05, 10), 0.01) == 23
    assert seeds_needed(0.013, 0.0, z_equivalence(0.05, 10), 0.01) == 26
    # the articles add variance that no seed removes: SE 0.002 -> room (0.01 / 3.6486)^2 - 0.002^2 =
    # 3.512e-6, 1.69e-4 / 3.512e-6 = 48.1 -> 49 seeds; SE 0.004 is more than 0.01 allows: none
    assert seeds_needed(0.013, 0.002**2, z_difference(0.05, 10), 0.01) == 49
    assert math.isinf(seeds_needed(0.013, 0.004**2, z_difference(0.05, 10), 0.01))
    assert seeds_needed(0.001, 0.0, z_difference(0.05, 10), 0.01) == 3  # never fewer than a verdict needs


def test_leaving_out_the_one_seed_a_verdict_rests_on_changes_it():
    from analysis.findings import seeds_that_change

    # b is clearly worse on seeds 0-3 and hugely better on seed 4 (an outlier): with every seed the verdict is
    # inconclusive, without seed 4 it is "worse"; a steadily better arm holds without any one seed
    for shifts, verdict, expected in (([0.05, 0.06, 0.055, 0.05, -0.5], INCONCLUSIVE, [4]),
                                      ([-0.1, -0.11, -0.09, -0.1, -0.105], BETTER, [])):
        values = design(b=shifts)
        verdicts = judge(values, [("b", "base")], 0.02, 0.05)
        assert [v.verdict for v in verdicts] == [verdict]
        assert seeds_that_change(verdicts, "seeds", values, None, [("b", "base")], 0.02, 0.05) == {("b", "base"): expected}
