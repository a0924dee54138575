"""The numbers the study reports, as pure functions of summed NLL, token and byte counts.

Sum NLL and count tokens over the whole split; never average the batch means (batches hold
different numbers of scored tokens in the ``lines`` layout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
