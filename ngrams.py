"""Count-based n-gram models on exactly the tokens a run trains and is scored on.

A transformer that does not beat these has learned word frequencies and word pairs, which any
activation can: its differences then say nothing about what the MLP computes. Each is
trained on the run's training sequences and scored on the same next-token targets as the model
(same layout, truncation and tokenizer: a sequence's first token is context only, padding is never
scored, and no n-gram reaches across two sequences):

    unigram     add-k:  p(w) = (c(w) + k) / (N + k V), k chosen on the selection split
    bigram_kn   interpolated Kneser-Ney (Kneser & Ney 1995; Chen & Goodman 1998):
                p(w | v) = max(c(v w) - D, 0) / c(v .) + D N1+(v .) / c(v .) * p_cont(w)
                p_cont(w) = max(N1+(. w) - D', 0) / N1+(. .) + D' |{w: N1+(. w) > 0}| / N1+(. .) / V
    trigram_kn  the same one order up: raw counts at the top, continuation counts (N1+(. v w)) below;
                the first target of a sequence, with one token of context, gets the bigram level

    kn2..kn4    modified Kneser-Ney of orders 2 to 4 (Chen & Goodman 1998, section 3): interpolated, with
                three discounts per level, D1, D2, D3+ for counts 1, 2 and 3 or more,
                p(w | h) = (max(c(h w) - D(c(h w)), 0) + (D1 N1(h .) + D2 N2(h .) + D3+ N3+(h .)) p(w | h')) / c(h .)
                raw counts at the top, continuation counts N1+(. h' w) below, the uniform 1 / V under
                the unigram level; each level's discounts from its own counts of counts n1..n4:
                Y = n1 / (n1 + 2 n2), D1 = 1 - 2 Y n2 / n1, D2 = 2 - 3 Y n3 / n2, D3+ = 3 - 4 Y n4 / n3
                (where some n_k is 0 and they are undefined, all three are Y: the one-discount form).
                The strongest standard n-gram: the bar a model must clear (the report's first lines).

N1+ counts distinct types; each level's discount of the one-discount models is D = n1 / (n1 + 2 n2)
from its own count of counts. An unseen context falls through to the level below, so every probability is positive and
each level sums to one over the vocabulary (a test checks). Vectorised with numpy: a few seconds for
WikiText-2. Needs no torch.

A target with fewer tokens before it in its sequence than a model's context gets the level its
context allows (the first target of a 4-gram model: the bigram level). Order 5 is left out: its
keys overflow int64 over the 50,257-type vocabulary.

Where the loss goes: each loss is also split by whether the target's type ever occurs as a training
target ("seen") or not ("unseen", the types every softmax step pushes down and nothing holds up;
Mielke & Eisner 2019 report loss by training frequency). The loss of every scored target under the
strongest modified Kneser-Ney model (chosen on the selection split) is kept as well (``token_nll``),
so that a model can be interpolated with it (metrics.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NGRAMS_VERSION = 3  # 2: seen/unseen losses and the trigram's per-target losses; 3: modified KN, the strongest's per-target losses. Bump when a model's definition changes: cached values are then recomputed
ADD_K_GRID = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0)
MODIFIED_KN_ORDERS = {"kn2_modified": 2, "kn3_modified": 3, "kn4_modified": 4}
NGRAM_NAMES = ("unigram", "bigram_kn", "trigram_kn", *MODIFIED_KN_ORDERS)


@dataclass(frozen=True)
class Grams:
    """The n-grams of one split's scored targets: ``order`` context tokens before each target
    (position i >= order), as arrays of equal length."""

    contexts: tuple[np.ndarray, ...]  # oldest first
    targets: np.ndarray

    rows: np.ndarray | None = None  # where each target stands: tokens[rows, cols] == targets
    cols: np.ndarray | None = None


def grams(tokens: np.ndarray, lengths: np.ndarray, order: int) -> Grams:
    """Every target at position i >= max(order, 1) of each sequence, with its ``order`` preceding
    tokens, in row-major order (the order in which a model scores them)."""
    positions = np.arange(tokens.shape[1])[None, :]
    scored = (positions >= max(order, 1)) & (positions < lengths[:, None])
    rows, cols = np.nonzero(scored)
    return Grams(tuple(tokens[rows, cols - back] for back in range(order, 0, -1)), tokens[rows, cols], rows, cols)


def first_targets(tokens: np.ndarray, lengths: np.ndarray) -> Grams:
    """The first target of each sequence long enough to have one, with its single context token."""
    rows = np.nonzero(lengths >= 2)[0]
    return Grams((tokens[rows, 0],), tokens[rows, 1], rows, np.ones_like(rows))


def discount(counts: np.ndarray) -> float:
    """Chen & Goodman's D = n1 / (n1 + 2 n2) from the counts of a level's types."""
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    return n1 / (n1 + 2 * n2) if n1 + n2 else 0.5


def lookup(sorted_keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """values[i] where sorted_keys[i] == query, else 0."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), dtype=values.dtype)
    at = np.clip(np.searchsorted(sorted_keys, queries), 0, len(sorted_keys) - 1)
    return np.where(sorted_keys[at] == queries, values[at], 0)


class KneserNey:
    """Interpolated Kneser-Ney of order 2 or 3 over a vocabulary of ``d_vocab`` ids."""

    def __init__(self, train_tokens: np.ndarray, train_lengths: np.ndarray, d_vocab: int, order: int) -> None:
        self.V, self.order = d_vocab, order
        pairs = grams(train_tokens, train_lengths, 1)
        bigram_types = np.unique(pairs.contexts[0].astype(np.int64) * d_vocab + pairs.targets)
        if order == 2:
            top = pairs  # raw bigram counts at the top; continuation counts of bigram types below
        else:
            top = grams(train_tokens, train_lengths, 2)
            # the middle level counts distinct left extensions of (v, w) among trigram types
            trigram_types = np.unique(self.key(top.contexts, top.targets))
            bigram_types, self.mid_counts = np.unique(trigram_types % (d_vocab * d_vocab), return_counts=True)
            self.mid_keys = bigram_types
            self.mid_D = discount(self.mid_counts)
            mid_v = self.mid_keys // d_vocab
            self.mid_total = np.bincount(mid_v, weights=self.mid_counts, minlength=d_vocab)  # N1+(. v .)
            self.mid_types = np.bincount(mid_v, minlength=d_vocab)  # |{w: N1+(. v w) > 0}|
        # lowest level: continuation counts N1+(. w) of the level above's types
        self.cont = np.bincount(bigram_types % d_vocab, minlength=d_vocab).astype(np.float64)
        self.cont_D = discount(self.cont[self.cont > 0])
        self.cont_total = float(len(bigram_types))
        self.top_keys, self.top_counts = np.unique(self.key(top.contexts, top.targets), return_counts=True)
        self.top_D = discount(self.top_counts)
        context_keys = self.key(top.contexts[:-1], top.contexts[-1])
        self.ctx_keys, self.ctx_counts = np.unique(context_keys, return_counts=True)  # c(context .)
        self.ctx_type_keys, self.ctx_types = np.unique(self.top_keys // d_vocab, return_counts=True)  # N1+(context .)

    def key(self, contexts: tuple[np.ndarray, ...], last: np.ndarray) -> np.ndarray:
        """One int64 per (context..., last) tuple."""
        key = np.zeros(len(last), dtype=np.int64)
        for ids in (*contexts, last):
            key = key * self.V + ids
        return key

    def p_cont(self, w: np.ndarray) -> np.ndarray:
        seen = float((self.cont > 0).sum())
        return (np.maximum(self.cont[w] - self.cont_D, 0) + self.cont_D * seen / self.V) / self.cont_total

    def p_mid(self, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The trigram model's bigram level, on continuation counts."""
        total = self.mid_total[v]
        count = lookup(self.mid_keys, self.mid_counts, v.astype(np.int64) * self.V + w)
        below = self.p_cont(w)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = (np.maximum(count - self.mid_D, 0) + self.mid_D * self.mid_types[v] * below) / total
        return np.where(total > 0, p, below)

    def prob(self, g: Grams) -> np.ndarray:
        """p(target | context) for every n-gram of ``g`` (context length order - 1)."""
        below = self.p_cont(g.targets) if self.order == 2 else self.p_mid(g.contexts[-1], g.targets)
        context = self.key(g.contexts[:-1], g.contexts[-1])
        total = lookup(self.ctx_keys, self.ctx_counts, context).astype(np.float64)
        types = lookup(self.ctx_type_keys, self.ctx_types, context)
        count = lookup(self.top_keys, self.top_counts, self.key(g.contexts, g.targets))
        with np.errstate(divide="ignore", invalid="ignore"):
            p = (np.maximum(count - self.top_D, 0) + self.top_D * types * below) / total
        return np.where(total > 0, p, below)

    def token_nll(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The NLL (nats) of every scored target, at its place in ``tokens`` (NaN where nothing is scored)."""
        out = np.full(tokens.shape, np.nan)
        if self.order == 2:
            pairs = grams(tokens, lengths, 1)
            out[pairs.rows, pairs.cols] = -np.log(self.prob(pairs))
            return out
        first = first_targets(tokens, lengths)  # one token of context: the bigram level
        later = grams(tokens, lengths, 2)
        out[first.rows, first.cols] = -np.log(self.p_mid(*first.contexts, first.targets))
        out[later.rows, later.cols] = -np.log(self.prob(later))
        return out

    def nll_sum(self, tokens: np.ndarray, lengths: np.ndarray) -> float:
        """Summed NLL (nats) over every scored target of these sequences, summed as it always was
        (later targets, then first ones), so the recorded losses stay bit for bit what they were."""
        if self.order == 2:
            return float(-np.log(self.prob(grams(tokens, lengths, 1))).sum())
        first = first_targets(tokens, lengths)  # one token of context: the bigram level
        later = -np.log(self.prob(grams(tokens, lengths, 2))).sum()
        return float(later - np.log(self.p_mid(*first.contexts, first.targets)).sum())


def modified_discounts(counts: np.ndarray) -> np.ndarray:
    """[0, D1, D2, D3+] of one level from its counts (Chen & Goodman 1998, eq. 26); where a count of
    counts n1..n4 is 0 they are undefined, and all three are the one-discount Y = n1 / (n1 + 2 n2)."""
    n1, n2, n3, n4 = (int((counts == k).sum()) for k in (1, 2, 3, 4))
    y = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
    if min(n1, n2, n3, n4) == 0:
        return np.array([0.0, y, y, y])
    return np.array([0.0, 1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3])


@dataclass(frozen=True)
class Level:
    """One level of a modified Kneser-Ney model: its n-gram types (int64 keys, sorted) with their counts,
    and per context (the key without its last token) the total count and the mass set aside for the
    level below, D1 N1(h .) + D2 N2(h .) + D3+ N3+(h .)."""

    keys: np.ndarray
    counts: np.ndarray
    discounts: np.ndarray  # [0, D1, D2, D3+]
    context_keys: np.ndarray
    context_totals: np.ndarray
    context_backoff: np.ndarray

    @classmethod
    def of(cls, keys: np.ndarray, counts: np.ndarray, d_vocab: int) -> "Level":
        discounts = modified_discounts(counts)
        context_keys, context = np.unique(keys // d_vocab, return_inverse=True)
        totals = np.bincount(context, weights=counts, minlength=len(context_keys))
        backoff = np.bincount(context, weights=discounts[np.minimum(counts, 3)], minlength=len(context_keys))
        return cls(keys, counts, discounts, context_keys, totals, backoff)

    def discounted(self, keys: np.ndarray) -> np.ndarray:
        """max(c - D(c), 0) of each queried n-gram (0 for one never seen)."""
        counts = lookup(self.keys, self.counts, keys)
        return np.maximum(counts - self.discounts[np.minimum(counts, 3)], 0.0)


class ModifiedKneserNey:
    """Interpolated modified Kneser-Ney of order 2 to 4 over a vocabulary of ``d_vocab`` ids (see the
    module's docstring): ``levels[k]`` holds the k-grams, raw counts at the top and continuation
    counts below."""

    def __init__(self, train_tokens: np.ndarray, train_lengths: np.ndarray, d_vocab: int, order: int) -> None:
        if not 2 <= order <= 4:
            raise ValueError(f"modified Kneser-Ney of order {order}: orders 2 to 4 fit int64 keys")
        self.V, self.order = d_vocab, order
        top = grams(train_tokens, train_lengths, order - 1)
        self.levels = {order: Level.of(*np.unique(self.key(top.contexts, top.targets), return_counts=True), d_vocab)}
        for k in range(order - 1, 0, -1):  # continuation counts: the distinct tokens seen before each k-gram
            longer = grams(train_tokens, train_lengths, k)
            types = np.unique(self.key(longer.contexts, longer.targets))
            keys, counts = np.unique(types % d_vocab**k, return_counts=True)
            self.levels[k] = Level.of(keys, counts, d_vocab)

    def key(self, contexts: tuple[np.ndarray, ...], last: np.ndarray) -> np.ndarray:
        """One int64 per (context..., last) tuple."""
        key = np.zeros(len(last), dtype=np.int64)
        for ids in (*contexts, last):
            key = key * self.V + ids
        return key

    def prob(self, contexts: tuple[np.ndarray, ...], targets: np.ndarray) -> np.ndarray:
        """p(target | context) at the level of len(contexts) + 1 (oldest context token first)."""
        level = self.levels[len(contexts) + 1]
        if not contexts:  # the unigram level, over the uniform distribution
            unigram = level.context_totals[0], level.context_backoff[0]
            return (level.discounted(targets.astype(np.int64)) + unigram[1] / self.V) / unigram[0]
        below = self.prob(contexts[1:], targets)
        context = self.key(contexts[:-1], contexts[-1])
        total = lookup(level.context_keys, level.context_totals, context)
        backoff = lookup(level.context_keys, level.context_backoff, context)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = (level.discounted(self.key(contexts, targets)) + backoff * below) / total
        return np.where(total > 0, p, below)  # a context never seen: the level below alone

    def token_nll(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The NLL (nats) of every scored target, at its place in ``tokens`` (NaN where nothing is
        scored); a target at position i < order - 1 gets the level of its i tokens of context."""
        out = np.full(tokens.shape, np.nan)
        for context in range(1, self.order):
            g = grams(tokens, lengths, context)
            if context < self.order - 1:  # only targets at exactly this position: later ones see more
                at = g.cols == context
                g = Grams(tuple(c[at] for c in g.contexts), g.targets[at], g.rows[at], g.cols[at])
            out[g.rows, g.cols] = -np.log(self.prob(g.contexts, g.targets))
        return out


def unigram_log_probs(counts: np.ndarray, k: float) -> np.ndarray:
    """log p(w) of the add-k unigram: what the output bias ``log_unigram`` starts at."""
    return np.log((counts + k) / (counts.sum() + k * len(counts)))


def unigram_nll_sum(counts: np.ndarray, k: float, targets: np.ndarray) -> float:
    return float(-unigram_log_probs(counts, k)[targets].sum())


def target_counts(tokens: np.ndarray, lengths: np.ndarray, d_vocab: int) -> np.ndarray:
    """How often each type occurs as a scored target of these sequences (a type is "seen" when > 0)."""
    return np.bincount(grams(tokens, lengths, 1).targets, minlength=d_vocab).astype(np.float64)


def loss_breakdown(nll: np.ndarray, seen: np.ndarray, n_bytes: int, total: float) -> dict[str, float | None]:
    """Mean loss over all targets (``total``: their summed NLL), over those of seen types and of
    unseen ones, the unseen fraction, and bits per byte; ``nll`` and ``seen`` per target (None for
    an empty part)."""
    n, n_seen = len(nll), int(seen.sum())

    def mean(part: np.ndarray, count: int) -> float | None:
        return float(part.sum()) / count if count else None

    return {"loss": total / max(n, 1), "bpb": total / (math.log(2) * n_bytes) if n_bytes else math.nan,
            "loss_seen": mean(nll[seen], n_seen), "loss_unseen": mean(nll[~seen], n - n_seen),
            "unseen_fraction": (n - n_seen) / n if n else None}


@dataclass(frozen=True)
class NgramScores:
    """The n-gram models of one run's data: ``losses[name][role]`` (loss_breakdown's keys; the unigram's
    add_k beside the roles; ``"strongest": True`` beside the roles of the modified KN model with the
    lowest selection loss), and that model's NLL of every scored target of each evaluated split, at its place
    in that split's tokens (``token_nll[role]``, NaN where nothing is scored)."""

    losses: dict[str, dict]
    token_nll: dict[str, np.ndarray]


def ngram_losses(train: tuple[np.ndarray, np.ndarray], evaluated: dict[str, tuple[np.ndarray, np.ndarray, int]],
                    d_vocab: int, selection: str) -> NgramScores:
    """Each n-gram model's loss (nats per scored token), split by seen and unseen target types, and bits
    per byte, on each evaluated split.

    ``evaluated``: role -> (tokens, lengths, scored bytes); ``selection`` names the role whose loss
    picks the unigram's k (nothing is chosen on the others).
    """
    scored = {role: grams(tokens, lengths, 1) for role, (tokens, lengths, _) in evaluated.items()}
    counts = target_counts(*train, d_vocab)
    k = min(ADD_K_GRID, key=lambda k: unigram_nll_sum(counts, k, scored[selection].targets))
    per_target = {"unigram": {role: -unigram_log_probs(counts, k)[g.targets] for role, g in scored.items()}}
    sums = {"unigram": {role: unigram_nll_sum(counts, k, g.targets) for role, g in scored.items()}}
    at_places = {}
    for name, order in (("bigram_kn", 2), ("trigram_kn", 3)):
        model = KneserNey(*train, d_vocab, order)
        at_places[name] = {role: model.token_nll(tokens, lengths) for role, (tokens, lengths, _) in evaluated.items()}
        per_target[name] = {role: at_places[name][role][g.rows, g.cols] for role, g in scored.items()}
        sums[name] = {role: model.nll_sum(tokens, lengths) for role, (tokens, lengths, _) in evaluated.items()}
    for name, order in MODIFIED_KN_ORDERS.items():
        model = ModifiedKneserNey(*train, d_vocab, order)
        at_places[name] = {role: model.token_nll(tokens, lengths) for role, (tokens, lengths, _) in evaluated.items()}
        per_target[name] = {role: at_places[name][role][g.rows, g.cols] for role, g in scored.items()}
        sums[name] = {role: float(nll.sum()) for role, nll in per_target[name].items()}
    losses = {name: {role: loss_breakdown(nll, counts[scored[role].targets] > 0, evaluated[role][2], sums[name][role])
                     for role, nll in by_role.items()} for name, by_role in per_target.items()}
    losses["unigram"]["add_k"] = k
    strongest = min(MODIFIED_KN_ORDERS, key=lambda name: losses[name][selection]["loss"])
    losses[strongest]["strongest"] = True  # chosen on the selection split, like every other choice
    return NgramScores(losses, at_places[strongest])


# ---------------------------------------------------------------------------------------------
# N-gram models for logs written before runs recorded them: computed once, kept beside the logs


def data_identity(data: dict) -> dict:
    """What a set of n-gram scores depends on, read off a log's ``data`` section."""
    return {"tokenizer_sha256": data.get("tokenizer_sha256"),
            **{role: {k: info.get(k) for k in ("sha256", "layout", "max_length")} if info else None
               for role, info in ((r, data.get(r)) for r in ("train", "val", "test"))}}


def logged_ngrams(log: dict) -> dict:
    """The n-gram models' scores a log recorded: ``data.ngrams`` (``data.baselines`` in logs written
    before 2026-12-05, when the word "baseline" was kept for the baseline arm alone)."""
    return log["data"].get("ngrams") or log["data"].get("baselines") or {}


def ngrams_for(log: dict, kept: list[dict]) -> dict:
    """The log's own n-gram scores, with those of a kept entry ({identity, ngrams}) for its data that
    the log lacks (a log from before modified Kneser-Ney gets them from the folder's ngrams.json)."""
    identity = data_identity(log["data"])
    kept_here = next((entry["ngrams"] for entry in kept if entry.get("identity") == identity), {})
    return {**kept_here, **logged_ngrams(log)}


def strongest_ngram(ngrams: dict) -> str | None:
    """The modified Kneser-Ney model chosen as the bar (lowest selection loss), None before there were any."""
    return next((name for name in MODIFIED_KN_ORDERS if ngrams.get(name, {}).get("strongest")), None)


def interpolation_partner(ngrams: dict) -> str:
    """The n-gram a run's model was interpolated with: the strongest, or the trigram in older logs."""
    return strongest_ngram(ngrams) or "trigram_kn"
