"""Causal multi-head self-attention, written out with einsum.

    q, k, v = x W_Q (+ b_Q), x W_K (+ b_K), x W_V (+ b_V)        per head
    pattern = softmax(q k^T / sqrt(d_head) + causal mask)
    out     = sum over heads of (pattern v) W_O (+ b_O)

Weights are stored per head, (head, d_model, d_head) and (head, d_head, d_model), so every einsum
reads as the equation. attn_impl="sdpa" computes the same thing with PyTorch's fused
scaled_dot_product_attention (a test checks they agree), which never forms the pattern: while a hook
is attached to ``hook_pattern`` (a probe), the einsum path runs instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fancy_einsum import einsum
from jaxtyping import Float
from torch import Tensor, nn

from .config import TransformerConfig
from .dropout import make_dropout


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_Q = nn.Parameter(torch.empty(cfg.n_heads, cfg.d_model, cfg.d_head))
        self.W_K = nn.Parameter(torch.empty(cfg.n_heads, cfg.d_model, cfg.d_head))
        self.W_V = nn.Parameter(torch.empty(cfg.n_heads, cfg.d_model, cfg.d_head))
        self.W_O = nn.Parameter(torch.empty(cfg.n_heads, cfg.d_head, cfg.d_model))
        if cfg.attn_bias:  # GPT-2 has biases; the study's attention does not
            self.b_Q = nn.Parameter(torch.zeros(cfg.n_heads, cfg.d_head))
            self.b_K = nn.Parameter(torch.zeros(cfg.n_heads, cfg.d_head))
            self.b_V = nn.Parameter(torch.zeros(cfg.n_heads, cfg.d_head))
            self.b_O = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pattern = nn.Identity()  # attach a forward hook to see (batch, head, query_pos, key_pos)
        self.pattern_dropout = make_dropout(cfg.dropout)

    def _project(self, x: Float[Tensor, "batch pos d_model"], name: str) -> Float[Tensor, "batch pos head d_head"]:
        out = einsum("batch pos d_model, head d_model d_head -> batch pos head d_head", x, getattr(self, f"W_{name}"))
        return out + getattr(self, f"b_{name}") if self.cfg.attn_bias else out

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        q, k, v = (self._project(x, name) for name in "QKV")
        if self.cfg.attn_impl == "sdpa" and not self.hook_pattern._forward_hooks:
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                dropout_p=self.cfg.dropout if self.training else 0.0,
            ).transpose(1, 2)
        else:
            z = self._einsum_attention(q, k, v)
        out = einsum("batch pos head d_head, head d_head d_model -> batch pos d_model", z, self.W_O)
        return out + self.b_O if self.cfg.attn_bias else out

    def _einsum_attention(
        self,
        q: Float[Tensor, "batch query_pos head d_head"],
        k: Float[Tensor, "batch key_pos head d_head"],
        v: Float[Tensor, "batch key_pos head d_head"],
    ) -> Float[Tensor, "batch query_pos head d_head"]:
        scores = einsum(
            "batch query_pos head d_head, batch key_pos head d_head -> batch head query_pos key_pos", q, k
        ) / self.cfg.d_head**0.5
        n_pos = q.shape[1]
        future = torch.ones(n_pos, n_pos, dtype=torch.bool, device=q.device).triu(1)
        pattern = self.hook_pattern(scores.masked_fill(future, float("-inf")).softmax(dim=-1))
        pattern = self.pattern_dropout(pattern)
        return einsum(
            "batch head query_pos key_pos, batch key_pos head d_head -> batch query_pos head d_head", pattern, v
        )
