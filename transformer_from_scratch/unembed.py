"""Unembedding: residual stream -> logits over the vocabulary (no bias, as in GPT-2 and the study)."""

from __future__ import annotations

import torch
from fancy_einsum import einsum
from jaxtyping import Float
from torch import Tensor, nn

from .config import TransformerConfig


class Unembed(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return einsum("batch pos d_model, d_model d_vocab -> batch pos d_vocab", resid, self.W_U)
