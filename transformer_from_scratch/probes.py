"""Looking inside a model without changing it: what its MLP units and attention heads do on a fixed
probe batch, in one forward pass with hooks.

MLP: each activation defines what "active" means for its units (activations.py), so dead-unit
fractions are comparable across activations; quantiles describe the pre-activation distribution
without storing it. Attention: per head, the entropy of each query's pattern (nats; ln k is the most
for a query that sees k keys), and the attention paid to the previous and to the first token.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .transformer import Transformer

QUANTILES = (1, 5, 25, 50, 75, 95, 99)  # percent


def mlp_stats(block, pre: Float[Tensor, "n d_hidden"], layer: int) -> dict:
    """The fraction of units never active, the mean fraction active per token, and the mean, std
    and quantiles of the (gate) pre-activations, over the probe's positions."""
    active = block.mlp.act.is_active(pre)
    values = pre.detach().double().cpu().numpy().ravel()
    return {
        "layer": layer,
        "dead_fraction": 1.0 - active.any(dim=0).float().mean().item(),
        "active_fraction": active.float().mean().item(),
        "pre_mean": pre.mean().item(),
        "pre_std": pre.std().item(),
        "pre_quantiles": {f"p{q:02d}": float(v) for q, v in zip(QUANTILES, np.quantile(values, np.array(QUANTILES) / 100))},
    }


def attention_stats(
    pattern: Float[Tensor, "batch head query_pos key_pos"], queries: Bool[Tensor, "batch query_pos"]
) -> list[dict]:
    """Per head, means over the chosen queries (those at position 0, which can only attend to
    themselves, are left out): pattern entropy in nats, the largest possible entropy for those
    queries (ln of the keys each sees), and the attention on the previous and on the first token."""
    n_pos = pattern.shape[-1]
    position = torch.arange(n_pos, device=pattern.device).expand_as(queries)
    chosen = queries & (position > 0)
    rows = pattern.permute(1, 0, 2, 3)[:, chosen]  # head, query, key_pos
    at = position[chosen]
    entropy = -torch.special.xlogy(rows, rows).sum(dim=-1)
    previous = rows.gather(-1, (at - 1).expand(rows.shape[0], -1)[..., None]).squeeze(-1)
    max_entropy = torch.log(at.double() + 1).mean().item() if len(at) else math.nan
    return [
        {"head": h, "entropy": entropy[h].mean().item(), "max_entropy": max_entropy,
         "prev_token": previous[h].mean().item(), "first_token": rows[h, :, 0].mean().item()}
        for h in range(rows.shape[0])
    ]


@torch.no_grad()
def probe(
    model: Transformer, tokens: Int[Tensor, "batch pos"], scored: Bool[Tensor, "batch pos"]
) -> dict[str, list[dict]]:
    """{"mlp": per layer stats, "attention": per layer {"layer", "heads": per head stats}}, over the
    positions where ``scored`` is true (real tokens with a next-token target; no padding)."""
    pre: list[Tensor] = []
    patterns: list[Tensor] = []
    hooks = [block.mlp.hook_pre.register_forward_hook(lambda _m, _i, out: pre.append(out[scored]))
             for block in model.blocks]
    hooks += [block.attn.hook_pattern.register_forward_hook(lambda _m, _i, out: patterns.append(out))
              for block in model.blocks]
    was_training = model.training
    model.eval()
    try:
        model.residual(tokens)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return {
        "mlp": [mlp_stats(block, layer_pre, i) for i, (block, layer_pre) in enumerate(zip(model.blocks, pre))],
        "attention": [{"layer": i, "heads": attention_stats(pattern, scored)} for i, pattern in enumerate(patterns)],
    }

