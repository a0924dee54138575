"""n-gram baselines against hand-computed values, and the selection/report halves of a split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from baselines import Grams, KneserNey, baseline_losses, grams, unigram_nll_sum
from conftest import WIKITEXT_DIR, needs_shared_data
from data_utils import DataError, SplitText, article_half, load_split_text

# Two training sequences over a vocabulary of 4 (id 3 never seen). Bigrams: (0,1) twice, (1,0), (0,2):
# counts of counts n1 = 2, n2 = 1, so D = 2 / (2 + 2) = 0.5. Continuation counts N1+(. w) = 1, 1, 1, 0
# (n1 = 3, n2 = 0: D' = 1), over 3 bigram types: p_cont(w) = (max(N1+ - 1, 0) + 1 * 3 / 4) / 3 = 0.25.
TRAIN = (np.array([[0, 1, 0, 1], [0, 2, 0, 0]]), np.array([4, 2]))
V = 4


def test_kneser_ney_bigram_by_hand():
    model = KneserNey(*TRAIN, V, order=2)
    probs = model.prob(Grams((np.array([0, 0, 0, 0, 1, 1, 3]),), np.array([1, 2, 0, 3, 0, 2, 1])))
    expected = [
        (2 - 0.5 + 0.5 * 2 * 0.25) / 3,  # p(1|0): c(0 .) = 3, N1+(0 .) = 2
        (1 - 0.5 + 0.5 * 2 * 0.25) / 3,  # p(2|0)
        (0.5 * 2 * 0.25) / 3,  # p(0|0): unseen pair, the discounted mass times p_cont
        (0.5 * 2 * 0.25) / 3,  # p(3|0): unseen token
        (1 - 0.5 + 0.5 * 1 * 0.25) / 1,  # p(0|1) = 0.625
        (0.5 * 1 * 0.25) / 1,  # p(2|1)
        0.25,  # p(1|3): a context never seen falls through to p_cont
    ]
    np.testing.assert_allclose(probs, expected, rtol=1e-12)
    # a sequence scores its targets only: [0, 1, 2] -> p(1|0) p(2|1)
    assert model.nll_sum(np.array([[0, 1, 2, 3]]), np.array([3])) == pytest.approx(-math.log(expected[0] * expected[5]))


def test_unigram_add_k_by_hand():
    counts = np.bincount(grams(*TRAIN, 1).targets, minlength=V).astype(float)  # targets 1, 0, 1 and 2
    assert counts.tolist() == [1, 2, 1, 0]
    assert unigram_nll_sum(counts, 1.0, np.array([1, 3])) == pytest.approx(-math.log(3 / 8) - math.log(1 / 8))


@pytest.mark.parametrize("order", [2, 3])
def test_every_kneser_ney_distribution_sums_to_one(order):
    rng = np.random.default_rng(0)
    model = KneserNey(rng.integers(0, 9, (40, 7)), rng.integers(1, 8, 40), 9, order)
    for context in [(0, 1), (4, 4), (8, 2), (5, 5)]:
        g = Grams(tuple(np.full(9, c) for c in context[2 - order + 1:]), np.arange(9))
        assert model.prob(g).sum() == pytest.approx(1.0, abs=1e-12) and (model.prob(g) > 0).all()
        if order == 3:
            assert model.p_mid(np.full(9, context[1]), np.arange(9)).sum() == pytest.approx(1.0, abs=1e-12)


def test_baselines_score_each_role_and_choose_k_on_selection_only():
    rng = np.random.default_rng(1)
    train = (rng.integers(0, 20, (50, 8)), np.full(50, 8))
    val, test = (rng.integers(0, 20, (10, 8)), np.full(10, 8), 300), (rng.integers(0, 20, (10, 8)), np.full(10, 8), 280)
    out = baseline_losses(train, {"val": val, "test": test}, 20, "val").losses
    assert set(out) == {"unigram", "bigram_kn", "trigram_kn"} and out["unigram"]["add_k"] in (0.01, 0.1, 0.3, 1, 3, 10)
    for name in ("bigram_kn", "trigram_kn"):
        assert out[name]["test"]["bpb"] == pytest.approx(out[name]["test"]["loss"] * 70 / (math.log(2) * 280))


ARTICLES = [" = First = \n", " \n", " one . \n", " = = Section = = \n", " more one . \n",
            " = Second = \n", " two . \n", " = Third = \n", " three . \n"]


def test_article_halves_are_deterministic_disjoint_and_cover_the_split():
    text = SplitText("toy", [r if r.strip() else "" for r in ARTICLES], "toy.txt", "sha")
    a, b = article_half(text, "A"), article_half(text, "B")
    assert a.rows == text.rows[:5] + text.rows[7:] and b.rows == text.rows[5:7]  # articles 0, 2 | 1
    assert a.articles == "even-numbered 2 of 3 articles" and a.name == "toy:A"
    assert article_half(text, "A") == a and a.sha256 != b.sha256
    with pytest.raises(DataError, match="article title"):
        article_half(SplitText("flat", [" no titles \n"], "f", "s"), "A")


@needs_shared_data
def test_wikitext_validation_halves():
    full = load_split_text("validation", WIKITEXT_DIR)
    a, b = (load_split_text(f"validation:{h}", WIKITEXT_DIR) for h in "AB")
    assert len(a.rows) + len(b.rows) == len(full.rows) and a.articles == "even-numbered 30 of 60 articles"
    assert sorted(a.rows + b.rows) == sorted(full.rows) and a.sha256 != b.sha256
