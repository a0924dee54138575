"""Token embedding: a lookup table from token id to a d_model vector."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from .config import TransformerConfig


class Embed(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        # F.embedding, not W_E[tokens]: indexing's backward accumulates repeated tokens' gradients in
        # an order that varies with thread timing (bits differ between runs with 2 threads);
        # embedding's backward sums them in a fixed order, at the same speed.
        return F.embedding(tokens, self.W_E)
