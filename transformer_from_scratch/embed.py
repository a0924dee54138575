"""Token embedding: a lookup table from token id to a d_model vector.

Word-type dropout (``word_type_dropout``; Gal & Ghahramani 2016, AWD-LSTM's embedding dropout,
Merity et al. 2017): while training, each step drops whole rows of the table, so every occurrence
of a dropped word type in the batch reads zeros, and scales the kept rows by 1 / (1 - p). Unlike
dropout on the embedded vectors it hides a word, not some of its features, from the whole batch.
"""

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
        self.word_type_dropout = cfg.word_type_dropout
        self.scale = cfg.embed_scale

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        # F.embedding, not W_E[tokens]: indexing's backward accumulates repeated tokens' gradients in
        # an order that varies with thread timing (bits differ between runs with 2 threads);
        # embedding's backward sums them in a fixed order, at the same speed.
        embedded = F.embedding(tokens, self.W_E)
        if self.scale != 1.0:
            embedded = embedded * self.scale
        if not (self.training and self.word_type_dropout > 0):
            return embedded  # no draw from the generator: a model without it computes what it did
        keep = 1 - self.word_type_dropout
        row_scale = torch.empty(self.W_E.shape[0], device=tokens.device).bernoulli_(keep) / keep
        return embedded * row_scale[tokens][..., None].to(embedded.dtype)
