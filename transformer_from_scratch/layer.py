"""One pre-LayerNorm transformer block:

    x = x + Dropout(Attention(LN1(x)))
    x = x + Dropout(MLP(LN2(x)))

(Dropout: none unless cfg.dropout > 0.)
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor, nn

from .attention import Attention
from .config import TransformerConfig
from .dropout import make_dropout
from .layer_norm import LayerNorm
from .mlp import MLP


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.ln1 = LayerNorm(cfg)
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg)
        self.mlp = MLP(cfg)
        self.resid_dropout = make_dropout(cfg.dropout)

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        resid = resid + self.resid_dropout(self.attn(self.ln1(resid)))
        return resid + self.resid_dropout(self.mlp(self.ln2(resid)))
