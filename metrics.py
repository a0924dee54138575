"""The numbers the study reports, as pure functions of summed NLL, token and byte counts, and the
one evaluation pass that produces those sums.

Sum NLL and count tokens over the whole split; never average the batch means (batches hold
different numbers of scored tokens in the ``lines`` layout).

Beside the plain loss, an evaluation says where the loss goes and what the model knows beyond word
counts:
    loss_seen / loss_unseen / unseen_fraction: the loss on targets whose type occurs as a training
        target, on those whose type never does, and the share of the latter (Mielke & Eisner 2019);
    interp_loss: the model interpolated linearly with the strongest n-gram (modified Kneser-Ney,
        baselines.py; the Kneser-Ney trigram in logs written before it), (Mikolov 2012),
        p = w p_model + (1 - w) p_ngram, w on a grid of INTERPOLATION_STEPS + 1 values chosen on the
        selection split and applied as it is to the report split; interp_gain = ngram_loss -
        interp_loss, the n-gram's loss on the same targets less the interpolation's (older logs call
        it trigram_loss). A model that
        adds nothing the n-gram lacks gains nothing; one that learned longer-range structure gains
        even where it is worse alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable, Iterable
from typing import Protocol

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from transformer_from_scratch import IGNORE_INDEX, Transformer

# The reference study converted loss to bits per byte assuming 4 characters per token.
STUDY_CHARS_PER_TOKEN = 4.0


def perplexity(mean_nll_nats: float) -> float:
    return math.exp(mean_nll_nats) if mean_nll_nats < 700 else math.inf


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    return total_nll_nats / (math.log(2) * n_bytes)  # n_bytes: UTF-8 bytes of the targets scored


def study_bits_per_byte(mean_nll_nats: float) -> float:
    """The reference study's approximation: loss / ln 2 / 4 characters per token."""
    return mean_nll_nats / math.log(2) / STUDY_CHARS_PER_TOKEN


INTERPOLATION_STEPS = 100  # the model's weight in the interpolation: 0, 0.01, ..., 1


def interpolation_weights() -> Float[Tensor, " weights"]:
    return torch.arange(INTERPOLATION_STEPS + 1, dtype=torch.float64) / INTERPOLATION_STEPS


def interpolated_nll(
    model_nll: Float[Tensor, " n"], ngram_nll: Float[Tensor, " n"], weights: Float[Tensor, " weights"]
) -> Float[Tensor, " weights"]:
    """Summed -log(w p_model + (1 - w) p_ngram) over the targets, for each weight w (float64; at
    w = 1 exactly the model's NLL, at w = 0 exactly the n-gram's)."""
    mixed = torch.logaddexp(weights.log()[:, None] - model_nll.double()[None, :],
                            (1 - weights).log()[:, None] - ngram_nll.double()[None, :])
    return -mixed.sum(dim=1)


@dataclass
class NLLTotals:
    """Running sums over a split: summed NLL in nats, scored tokens, and their UTF-8 bytes; the
    summed NLL of the targets of seen and of unseen types; and, where the split has the n-gram's
    per-target NLL, the summed NLL of the interpolation at each weight."""

    nll: float = 0.0
    tokens: int = 0
    bytes: int = 0
    seen_nll: float = 0.0
    seen_tokens: int = 0
    unseen_nll: float = 0.0
    mixture_nll: list[float] | None = None  # at each of interpolation_weights()
    article_nll: list[float] | None = None  # summed NLL of each article's targets, where the split knows them
    article_tokens: list[int] | None = None  # scored targets of each article

    def add(self, nll: float, tokens: int, n_bytes: int, unseen_nll: float = 0.0, unseen_tokens: int = 0) -> None:
        """One batch's sums: ``unseen_*`` of its targets of unseen types, the rest seen."""
        self.nll += nll
        self.tokens += tokens
        self.bytes += n_bytes
        self.seen_nll += nll - unseen_nll
        self.seen_tokens += tokens - unseen_tokens
        self.unseen_nll += unseen_nll

    def summary(self, interp_weight: float | None = None) -> dict[str, float | None]:
        """The split's metrics. The interpolation's weight is chosen here when ``interp_weight`` is
        None (on the selection split), else it is the one given (the selection split's)."""
        if self.tokens == 0:
            raise ValueError("no scored tokens: cannot compute metrics of an empty split")
        loss = self.nll / self.tokens
        unseen_tokens = self.tokens - self.seen_tokens
        out = {
            "loss": loss,
            "ppl": perplexity(loss),
            "bpb": bits_per_byte(self.nll, self.bytes) if self.bytes else math.nan,
            "bpb_approx": study_bits_per_byte(loss),
            "bytes_per_token": self.bytes / self.tokens,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "loss_seen": self.seen_nll / self.seen_tokens if self.seen_tokens else None,
            "loss_unseen": self.unseen_nll / unseen_tokens if unseen_tokens else None,
            "unseen_fraction": unseen_tokens / self.tokens,
        }
        if self.mixture_nll is not None:
            at = (min(range(len(self.mixture_nll)), key=self.mixture_nll.__getitem__) if interp_weight is None
                  else round(interp_weight * INTERPOLATION_STEPS))
            ngram, mixed = self.mixture_nll[0] / self.tokens, self.mixture_nll[at] / self.tokens
            out |= {"interp_weight": at / INTERPOLATION_STEPS, "interp_loss": mixed, "ngram_loss": ngram,
                    "interp_gain": ngram - mixed}
        if self.article_nll is not None:
            out |= {"article_nll": self.article_nll, "article_tokens": self.article_tokens}
        return out


class Batches(Protocol):
    """What evaluation needs of a split (data_utils.TokenizedSplit)."""

    reference_nll: Tensor | None  # the n-gram's NLL of each target at its place in the tokens, if known
    articles: Tensor | None  # the article of each token, if known (-1: padding)

    def __len__(self) -> int: ...

    def batch(self, index: Int[Tensor, " batch"]) -> tuple[Tensor, Tensor]: ...


def no_reduction(values: Tensor) -> Tensor:
    return values


@torch.no_grad()
def evaluate(
    model: Transformer,
    split: Batches,
    byte_lengths: Int[Tensor, " d_vocab"],
    batch_size: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    all_sum: Callable[[Tensor], Tensor] = no_reduction,
    fused: bool = True,
    shown: Callable[[Iterable], Iterable] = iter,
    seen_types: Bool[Tensor, " d_vocab"] | None = None,
    interp_weight: float | None = None,
) -> dict[str, float | None]:
    """One full pass in order: summed NLL, scored tokens and their bytes over the whole split, the
    NLL of targets of ``seen_types`` (every type when None) and of the others, the interpolation
    with the n-gram where the split has its per-target NLL (``interp_weight``: see
    NLLTotals.summary), and the summed NLL and targets of each article where the split knows them.

    Under DDP each of ``world`` processes takes every world-th batch and ``all_sum`` adds their
    sums. Sums are float64 and taken in a fixed order, so the result is the same on every run.
    ``fused`` chooses the model's loss path (Transformer.token_nll); ``shown`` wraps the batches (a
    progress bar).
    """
    was_training = model.training
    model.eval()
    weights = interpolation_weights()
    reference = getattr(split, "reference_nll", None)
    articles = getattr(split, "articles", None)
    n_mixture = len(weights) if reference is not None else 0
    # every article of the whole split, so that a subset's lists line up with the whole split's
    n_articles = getattr(split, "info", {}).get("n_articles", int(articles.max()) + 1) if articles is not None else 0
    sums = torch.zeros(6 + n_mixture + 2 * n_articles, dtype=torch.float64)
    mixture, per_article = slice(6, 6 + n_mixture), slice(6 + n_mixture, None)
    for b, start in enumerate(shown(range(0, len(split), batch_size))):
        if b % world != rank:
            continue
        index = torch.arange(start, min(start + batch_size, len(split)))
        inputs, targets = split.batch(index)
        is_scored = targets != IGNORE_INDEX
        scored = targets[is_scored]
        token_nll = model.token_nll(inputs.to(device), targets.to(device), fused=fused).cpu()
        seen = seen_types[scored] if seen_types is not None else torch.ones_like(scored, dtype=torch.bool)
        sums[:6] += torch.tensor([token_nll.sum().item(), scored.numel(), byte_lengths[scored].sum().item(),
                                  token_nll[seen].double().sum().item(), seen.sum().item(),
                                  token_nll[~seen].double().sum().item()], dtype=torch.float64)
        if reference is not None:
            ngram_nll = reference[index, 1 : targets.shape[1] + 1][is_scored]
            sums[mixture] += interpolated_nll(token_nll, ngram_nll, weights)
        if articles is not None:
            article = articles[index, 1 : targets.shape[1] + 1][is_scored]
            sums[per_article] += torch.cat([torch.zeros(n_articles, dtype=torch.float64).index_add_(
                0, article, token_nll.double()), torch.bincount(article, minlength=n_articles).double()])
    sums = all_sum(sums)
    model.train(was_training)
    totals = NLLTotals(float(sums[0]), int(sums[1]), int(sums[2]), float(sums[3]), int(sums[4]), float(sums[5]),
                       sums[mixture].tolist() if reference is not None else None,
                       sums[per_article][:n_articles].tolist() if articles is not None else None,
                       [int(n) for n in sums[per_article][n_articles:]] if articles is not None else None)
    return totals.summary(interp_weight)
