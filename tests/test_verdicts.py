"""Verdicts: the two-way model and TOST against worked examples, Holm over declared comparisons,
power, and no test below three pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.weightstats import ttost_paired

from analysis.verdicts import BETTER, EQUIVALENT, INCONCLUSIVE, NOT_TESTED, WORSE, judge, power

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
    [v] = judge(design(b=d), [("b", "base")], margin=0.02, alpha=0.05)
    assert v.difference == pytest.approx(0.01) and v.p_equivalence == pytest.approx(7.2564e-05, rel=1e-4)
    reference, _, _ = ttost_paired(np.add(BASE, d), np.array(BASE), -0.02, 0.02)
    assert v.p_equivalence == pytest.approx(float(reference), rel=1e-9)
    assert v.verdict == EQUIVALENT and v.ci_low < 0.01 < v.ci_high


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
    assert 0 < alone.p_difference < 0.5 and a.p_difference == pytest.approx(2 * alone.p_difference, rel=1e-12)
    assert a.p_equivalence == pytest.approx(min(1.0, 2 * alone.p_equivalence), rel=1e-12)


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
    statement = power(observed, n_comparisons=1, margin=0.02, alpha=0.05)
    assert statement.seeds == seeds and statement.detectable > 0
    rejected = 0
    for _ in range(400):
        study = {(arm, s): rng.normal(statement.detectable if arm == "b" else 0, statement.paired_sd / math.sqrt(2))
                 for arm in ("base", "b", "c") for s in range(seeds)}
        rejected += judge(study, [("b", "base")], 0.02, 0.05)[0].verdict == WORSE
    assert rejected / 400 == pytest.approx(0.8, abs=0.06)
    more = power(observed, 1, margin=statement.detectable, alpha=0.05)
    assert more.seeds_for_margin == seeds  # the margin it detects at these seeds needs exactly these seeds


def test_power_with_almost_no_noise_is_a_tiny_detectable_difference_not_a_crash():
    values = {(arm, s): shift + 1e-9 * ((s * 7 + len(arm)) % 3) for arm, shift in (("base", 1.0), ("b", 1.5), ("c", 2.0))
              for s in range(4)}
    p = power(values, n_comparisons=2, margin=0.02, alpha=0.05)
    assert 0 < p.detectable < 1e-6 and p.seeds_for_margin == 2
