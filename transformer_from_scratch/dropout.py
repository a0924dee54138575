"""Dropout (Srivastava et al. 2014), where GPT-2 has it: on the embeddings, on the attention pattern,
and on each block's attention and MLP output before it joins the residual stream; and, for small
data, before the unembedding (``unembed_dropout``; AWD-LSTM's output dropout, Merity et al. 2017).
Word-type dropout, which drops whole rows of the embedding, lives in embed.py. All off by default:
the reference study has none.
"""

from __future__ import annotations

from torch import nn


def make_dropout(p: float) -> nn.Module:
    """Dropout at probability ``p``, or no module at all when it is 0: the computation (and the
    random number stream) of a model without dropout stays exactly what it was."""
    return nn.Dropout(p) if p > 0 else nn.Identity()
