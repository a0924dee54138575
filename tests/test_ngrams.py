"""n-gram models against hand-computed values, and the selection/report halves of a split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from collections import Counter, defaultdict

from ngrams import MODIFIED_KN_ORDERS, Grams, KneserNey, ModifiedKneserNey, ngram_losses, grams, \
    strongest_ngram, unigram_nll_sum
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


def test_ngrams_score_each_role_and_choose_k_on_selection_only():
    rng = np.random.default_rng(1)
    train = (rng.integers(0, 20, (50, 8)), np.full(50, 8))
    val, test = (rng.integers(0, 20, (10, 8)), np.full(10, 8), 300), (rng.integers(0, 20, (10, 8)), np.full(10, 8), 280)
    out = ngram_losses(train, {"val": val, "test": test}, 20, "val").losses
    assert set(out) == {"unigram", "bigram_kn", "trigram_kn", *MODIFIED_KN_ORDERS}
    assert out["unigram"]["add_k"] in (0.01, 0.1, 0.3, 1, 3, 10)
    for name in ("bigram_kn", "trigram_kn", *MODIFIED_KN_ORDERS):
        assert out[name]["test"]["bpb"] == pytest.approx(out[name]["test"]["loss"] * 70 / (math.log(2) * 280))
    # the bar is the modified KN order best on the selection split, whatever the report split says
    assert strongest_ngram(out) == min(MODIFIED_KN_ORDERS, key=lambda n: out[n]["val"]["loss"])
    assert [n for n in out if out[n].get("strongest")] == [strongest_ngram(out)]


# ---------------------------------------------------------------------------------------------
# Modified Kneser-Ney (Chen & Goodman 1998)

# One sequence over 4 types: bigram counts (0,1) 4, (1,0) 3, (2,2) 2, (1,2) 1, (2,3) 1, so the top level's
# counts of counts are n1..n4 = 2, 1, 1, 1: Y = 2 / (2 + 2) = 0.5, D1 = 1 - 2 Y 1/2 = 0.5, D2 = 2 - 3 Y 1/1
# = 0.5, D3+ = 3 - 4 Y 1/1 = 1. Continuation counts N1+(. w) = 1, 1, 2, 1 (total 5); n3 = n4 = 0, so that
# level's three discounts are Y = 3 / (3 + 2) = 0.6: p1(w) = (max(N1+ - 0.6, 0) + 0.6 * 4 / 4) / 5
# = 0.2, 0.2, 0.4, 0.2.
TOY = (np.array([[0, 1, 0, 1, 0, 1, 0, 1, 2, 2, 2, 3]]), np.array([12]))


def test_modified_kneser_ney_bigram_by_hand():
    model = ModifiedKneserNey(*TOY, 4, order=2)
    np.testing.assert_allclose(model.levels[2].discounts, [0, 0.5, 0.5, 1.0], rtol=1e-12)
    np.testing.assert_allclose(model.prob((), np.arange(4)), [0.2, 0.2, 0.4, 0.2], rtol=1e-12)
    context, targets = np.array([0, 0, 2, 2, 2, 3]), np.array([1, 2, 2, 3, 0, 2])
    expected = [
        (4 - 1.0) / 4 + (1.0 * 1 / 4) * 0.2,  # p(1|0): c = 4 takes D3+; N3+(0 .) = 1 sets aside 1 / 4
        (1.0 * 1 / 4) * 0.4,  # p(2|0): unseen pair
        (2 - 0.5) / 3 + (0.5 + 0.5) / 3 * 0.4,  # p(2|2) = 19/30: c(2 .) = 3, N1(2 .) = N2(2 .) = 1
        (1 - 0.5) / 3 + (0.5 + 0.5) / 3 * 0.2,  # p(3|2) = 7/30
        (0.5 + 0.5) / 3 * 0.2,  # p(0|2)
        0.4,  # p(2|3): a context never seen falls through to the unigram level
    ]
    np.testing.assert_allclose(model.prob((context,), targets), expected, rtol=1e-12)
    assert expected[2] == pytest.approx(19 / 30) and expected[3] == pytest.approx(7 / 30)


def reference_modified_kn(sequences: list[list[int]], V: int, order: int):
    """An independent modified Kneser-Ney, written from Chen & Goodman's formulas with dicts and
    recursion (no arrays, no shared code): p(w, context) for a context tuple of up to order - 1 tokens."""
    raw = Counter(tuple(s[i - order + 1:i + 1]) for s in sequences for i in range(order - 1, len(s)))
    counts = {order: raw}
    for k in range(order - 1, 0, -1):  # N1+(. g): distinct tokens before the k-gram g
        left = defaultdict(set)
        for s in sequences:
            for i in range(k, len(s)):
                left[tuple(s[i - k + 1:i + 1])].add(s[i - k])
        counts[k] = Counter({g: len(before) for g, before in left.items()})

    def discounts(level):
        n = [sum(1 for c in counts[level].values() if c == k) for k in (1, 2, 3, 4)]
        y = n[0] / (n[0] + 2 * n[1]) if n[0] + n[1] else 0.5
        if 0 in n:
            return {1: y, 2: y, 3: y}
        return {1: 1 - 2 * y * n[1] / n[0], 2: 2 - 3 * y * n[2] / n[1], 3: 3 - 4 * y * n[3] / n[2]}

    D = {level: discounts(level) for level in counts}

    def p(w, context):
        level = len(context) + 1
        below = 1 / V if level == 1 else p(w, context[1:])
        followers = {g[-1]: c for g, c in counts[level].items() if g[:-1] == context}
        total = sum(followers.values())
        if total == 0:
            return below
        c = followers.get(w, 0)
        kept = max(c - D[level][min(c, 3)], 0) if c else 0
        set_aside = sum(D[level][min(n, 3)] for n in followers.values())
        return (kept + set_aside * below) / total

    return p


@pytest.mark.parametrize("order", [2, 3, 4])
def test_modified_kneser_ney_matches_an_independent_implementation(order):
    rng = np.random.default_rng(order)
    lengths = rng.integers(2, 30, 40)
    tokens = rng.zipf(1.6, (40, 30)) % 12  # skewed, so counts of 1 to 4 all occur at every level
    model = ModifiedKneserNey(tokens, lengths, 12, order)
    reference = reference_modified_kn([list(t[:n]) for t, n in zip(tokens, lengths)], 12, order)
    queries = rng.integers(0, 12, (200, order))
    for k in range(order):  # every context length, seen and unseen contexts alike
        ours = model.prob(tuple(queries[:, j] for j in range(order - 1 - k, order - 1)), queries[:, -1])
        theirs = [reference(int(q[-1]), tuple(int(t) for t in q[order - 1 - k:order - 1])) for q in queries]
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    assert min(model.levels[order].discounts[1:]) != max(model.levels[order].discounts[1:])  # three discounts


@pytest.mark.parametrize("order", [2, 3, 4])
def test_every_modified_kneser_ney_distribution_sums_to_one(order):
    rng = np.random.default_rng(7)
    model = ModifiedKneserNey(rng.zipf(1.5, (60, 9)) % 10, rng.integers(1, 10, 60), 10, order)
    for context in [(0, 1, 2), (1, 1, 1), (9, 9, 9), (3, 0, 1)]:
        probs = model.prob(tuple(np.full(10, c) for c in context[3 - order + 1:]), np.arange(10))
        assert probs.sum() == pytest.approx(1.0, abs=1e-12) and (probs > 0).all()


def test_modified_kneser_ney_scores_early_targets_with_the_context_they_have():
    model = ModifiedKneserNey(*TOY, 4, order=3)
    tokens = np.array([[0, 1, 0, 2]])
    nll = model.token_nll(tokens, np.array([4]))
    assert math.isnan(nll[0, 0])  # the first token is context only
    assert nll[0, 1] == pytest.approx(-math.log(model.prob((np.array([0]),), np.array([1]))[0]))  # one token
    assert nll[0, 3] == pytest.approx(-math.log(model.prob((np.array([1]), np.array([0])), np.array([2]))[0]))


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


def test_a_train_fraction_keeps_whole_articles_in_one_fixed_order_nested_across_fractions():
    from data_utils import article_fraction

    rows = [row for i in range(8) for row in (f" = Article {i} = \n", f" text of {i} . \n", "")]
    text = SplitText("toy", rows, "toy.txt", "sha")
    half, three_quarters = article_fraction(text, 0.5), article_fraction(text, 0.75)
    titles = [[r for r in t.rows if r.startswith(" = ")] for t in (half, three_quarters)]
    assert len(titles[0]) == 4 and len(titles[1]) == 6 and set(titles[0]) <= set(titles[1])  # nested
    kept = [int(t.split()[2]) for t in titles[0]]
    assert kept == sorted(kept)  # in the split's order
    assert half.rows == [row for i in kept for row in rows[3 * i:3 * i + 3]]  # each article whole
    assert article_fraction(text, 0.5) == half and half.articles == "4 of 8 articles (train_fraction 0.5)"
    assert article_fraction(text, 1.0) is text and half.sha256 != text.sha256


@needs_shared_data
def test_a_train_fraction_of_the_wikitext_test_articles():
    from data_utils import article_fraction

    full = load_split_text("test", WIKITEXT_DIR)
    half = article_fraction(full, 0.5)
    kept, total = (int(n) for n in half.articles.split(" articles")[0].split(" of "))
    assert kept == round(total / 2) and 0.3 < len(half.rows) / len(full.rows) < 0.7
