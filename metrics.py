"""The numbers the study reports, as pure functions of summed NLL, token and byte counts, and the
one evaluation pass that produces those sums.

Sum NLL and count tokens over the whole split; never average the batch means (batches hold
different numbers of scored tokens in the ``lines`` layout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable, Iterable
from typing import Protocol

import torch
from jaxtyping import Int
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


@dataclass
class NLLTotals:
    """Running sums over a split: summed NLL in nats, scored tokens, and their UTF-8 bytes."""

    nll: float = 0.0
    tokens: int = 0
    bytes: int = 0

    def add(self, nll: float, tokens: int, n_bytes: int) -> None:
        self.nll += nll
        self.tokens += tokens
        self.bytes += n_bytes

    def summary(self) -> dict[str, float]:
        if self.tokens == 0:
            raise ValueError("no scored tokens: cannot compute metrics of an empty split")
        loss = self.nll / self.tokens
        return {
            "loss": loss,
            "ppl": perplexity(loss),
            "bpb": bits_per_byte(self.nll, self.bytes) if self.bytes else math.nan,
            "bpb_approx": study_bits_per_byte(loss),
            "bytes_per_token": self.bytes / self.tokens,
            "tokens": self.tokens,
            "bytes": self.bytes,
        }


class Batches(Protocol):
    """What evaluation needs of a split (data_utils.TokenizedSplit)."""

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
) -> dict[str, float]:
    """One full pass in order: summed NLL, scored tokens and their bytes over the whole split.

    Under DDP each of ``world`` processes takes every world-th batch and ``all_sum`` adds their
    sums. Sums are float64 and taken in a fixed order, so the result is the same on every run.
    ``fused`` chooses the model's loss path (Transformer.nll_sum); ``shown`` wraps the batches (a
    progress bar).
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    for b, start in enumerate(shown(range(0, len(split), batch_size))):
        if b % world != rank:
            continue
        inputs, targets = split.batch(torch.arange(start, min(start + batch_size, len(split))))
        scored = targets[targets != IGNORE_INDEX]
        nll = model.nll_sum(inputs.to(device), targets.to(device), fused=fused)
        sums += torch.tensor([nll.item(), scored.numel(), byte_lengths[scored].sum().item()], dtype=torch.float64)
    sums = all_sum(sums)
    model.train(was_training)
    return NLLTotals(float(sums[0]), int(sums[1]), int(sums[2])).summary()
