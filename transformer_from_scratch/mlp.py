"""Position-wise MLP: the one place where the activation under study acts.

Plain:  out = act(x W_in + b_in) W_out + b_out
Gated:  out = (act(x W_gate + b_gate) * (x W_in + b_in)) W_out + b_out
(GLU variants: Shazeer 2020, arXiv:2002.05202)
"""

from __future__ import annotations

import torch
from fancy_einsum import einsum
from jaxtyping import Float
from torch import Tensor, nn

from .activations import ACTIVATIONS
from .config import TransformerConfig


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.act = ACTIVATIONS[cfg.act_fn]
        d_hidden = cfg.d_hidden  # d_mlp, or 2/3 of it for a parameter-matched gated MLP
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, d_hidden))
        self.b_in = nn.Parameter(torch.zeros(d_hidden))
        if self.act.gated:  # the gate exists only for GLU-family activations
            self.W_gate = nn.Parameter(torch.empty(cfg.d_model, d_hidden))
            self.b_gate = nn.Parameter(torch.zeros(d_hidden))
        self.W_out = nn.Parameter(torch.empty(d_hidden, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        # Attach torch forward hooks here to study the units: hook_pre sees what the nonlinearity
        # acts on (the gate's pre-activation for gated MLPs), hook_post what leaves it.
        self.hook_pre = nn.Identity()
        self.hook_post = nn.Identity()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        hidden = einsum("batch pos d_model, d_model d_hidden -> batch pos d_hidden", x, self.W_in) + self.b_in
        if self.act.gated:
            gate = einsum("batch pos d_model, d_model d_hidden -> batch pos d_hidden", x, self.W_gate) + self.b_gate
            hidden = self.act.fn(self.hook_pre(gate)) * hidden
        else:
            hidden = self.act.fn(self.hook_pre(hidden))
        hidden = self.hook_post(hidden)
        out = einsum("batch pos d_hidden, d_hidden d_model -> batch pos d_model", hidden, self.W_out)
        return out + self.b_out
