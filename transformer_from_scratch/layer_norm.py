"""LayerNorm (Ba et al. 2016): normalise each position's vector, then scale and shift.

    y = (x - mean(x)) / sqrt(var(x) + eps) * w + b     (biased variance, as nn.LayerNorm)
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from .config import TransformerConfig


class LayerNorm(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.eps = cfg.layer_norm_eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        centred = x - x.mean(dim=-1, keepdim=True)
        scale = (centred.pow(2).mean(dim=-1, keepdim=True) + self.eps).rsqrt()
        return centred * scale * self.w + self.b
