"""Unembedding: residual stream -> logits over the vocabulary.

Untied (the study): W_U is a parameter of its own. Tied (Press & Wolf 2017, arXiv:1608.05859):
W_U is the token embedding's transpose, one tensor for both ends of the model.

Output bias (``unembed_bias``): none in the study and in GPT-2. ``log_unigram`` adds a trained bias
b_U on the logits, initialised by the training script to the log of the add-k unigram of the
training targets (Meister et al. 2023): the model starts at the unigram model's loss instead of
ln d_vocab, and the matrices need not spend their capacity on word frequencies.
"""

from __future__ import annotations

import torch
from fancy_einsum import einsum
from jaxtyping import Float
from torch import Tensor, nn

from .config import TransformerConfig
from .embed import Embed


def make_bias(cfg: TransformerConfig) -> nn.Parameter | None:
    return nn.Parameter(torch.zeros(cfg.d_vocab)) if cfg.unembed_bias != "none" else None


class Unembed(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = make_bias(cfg)

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        logits = einsum("batch pos d_model, d_model d_vocab -> batch pos d_vocab", resid, self.W_U)
        return logits if self.b_U is None else logits + self.b_U


class TiedUnembed(Unembed):
    def __init__(self, embed: Embed, cfg: TransformerConfig) -> None:
        nn.Module.__init__(self)
        self.tied_to = [embed]  # in a list, so the embedding is not registered (and counted) twice
        self.b_U = make_bias(cfg)  # the bias is the unembedding's own, tied or not

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.tied_to[0].W_E.T
