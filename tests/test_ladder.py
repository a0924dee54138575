"""A ladder's statistics: expected best of n trials, interaction tests, compute multipliers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.ladder import compute_multipliers, interaction_tests
from analysis.tuning import expected_best

RUNGS = {0: {"width": 128, "data": 0.5}, 1: {"width": 128, "data": 1.0}, 2: {"width": 256, "data": 0.5},
         3: {"width": 256, "data": 1.0}}


def test_expected_best_of_n_trials_by_hand():
    # losses 1, 2, 3: the lowest of two draws is 1 with probability 1 - (2/3)^2 = 5/9, 2 with (2/3)^2 - (1/3)^2
    # = 3/9, 3 with 1/9: 5/9 + 6/9 + 3/9 = 14/9
    assert expected_best([3.0, 1.0, 2.0], 1) == pytest.approx(2.0)
    assert expected_best([3.0, 1.0, 2.0], 2) == pytest.approx(14 / 9)
    assert expected_best([3.0, 1.0, 2.0], 200) == pytest.approx(1.0, abs=1e-12)  # never below the best seen


def ladder_differences(effect_per_doubling: float, seed: int = 0) -> dict:
    """(rung, seed) -> the paired difference: -0.02 at the narrow rungs, changing by the given amount per
    doubling of width, plus seed noise of SD 0.005."""
    rng = np.random.default_rng(seed)
    return {("gelu", "relu"): {(rung, s): -0.02 + effect_per_doubling * math.log2(f["width"] / 128)
                               + rng.normal(0, 0.005) for rung, f in RUNGS.items() for s in range(6)}}


def test_an_effect_that_grows_with_width_is_detected_and_a_constant_one_is_not():
    growing = interaction_tests(ladder_differences(-0.02), RUNGS, 0.05)
    width = next(t for t in growing if t.factor == "width")
    assert width.p_holm < 0.05 and width.slope == pytest.approx(-0.02, abs=0.005)
    assert next(t for t in growing if t.factor == "data").p_holm > 0.05  # data changes nothing here
    constant = interaction_tests(ladder_differences(0.0), RUNGS, 0.05)
    assert all(t.p_holm > 0.05 for t in constant) and len(constant) == 2  # one test per factor, Holm over both


def test_the_compute_multiplier_inverts_the_baselines_fit():
    # the baseline follows loss = 10 - 0.5 ln C exactly; the arm's loss at each rung is the baseline's at twice
    # its compute, so the baseline needs 2x the compute to match it: multiplier 2
    compute = {0: 1e12, 1: 4e12, 2: 1.6e13}
    losses = {}
    for rung, c in compute.items():
        for s in range(4):
            noise = 0.0 if s % 2 else 1e-4
            losses["relu", rung, s] = 10 - 0.5 * math.log(c) + noise
            losses["gelu", rung, s] = 10 - 0.5 * math.log(2 * c) + noise
    [*multipliers] = compute_multipliers(losses, compute, "relu", 0.05, samples=200)
    assert [m.value for m in multipliers] == pytest.approx([2.0] * 3, rel=1e-3)
    assert all(m.ci_low <= m.value <= m.ci_high for m in multipliers) and multipliers[0].r_squared > 0.99
