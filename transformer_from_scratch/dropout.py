"""Dropout (Srivastava et al. 2014), where GPT-2 has it: on the embeddings, on the attention pattern,
and on each block's attention and MLP output before it joins the residual stream. Off by default:
the reference study has none.
"""

from __future__ import annotations

from torch import nn

from .config import TransformerConfig


def make_dropout(cfg: TransformerConfig) -> nn.Module:
    """Dropout at cfg.dropout, or no module at all when it is 0: the computation (and the random
    number stream) of a model without dropout stays exactly what it was."""
    return nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
