"""Unembedding: residual stream -> logits over the vocabulary (no bias, as in GPT-2 and the study).

Untied (the study): W_U is a parameter of its own. Tied (Press & Wolf 2017, arXiv:1608.05859):
W_U is the token embedding's transpose, one tensor for both ends of the model.
"""

from __future__ import annotations

import torch
from fancy_einsum import einsum
from jaxtyping import Float
from torch import Tensor, nn

from .config import TransformerConfig
from .embed import Embed


class Unembed(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return einsum("batch pos d_model, d_model d_vocab -> batch pos d_vocab", resid, self.W_U)


class TiedUnembed(Unembed):
    def __init__(self, embed: Embed) -> None:
        nn.Module.__init__(self)
        self.tied_to = [embed]  # in a list, so the embedding is not registered (and counted) twice

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.tied_to[0].W_E.T
