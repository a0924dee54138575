"""Looking inside a model without changing it: what its MLP units do on a fixed probe batch.

Each activation defines what "active" means for its units (activations.py), so dead-unit fractions
are comparable across activations.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .transformer import Transformer


@torch.no_grad()
def mlp_activity(
    model: Transformer, tokens: Int[Tensor, "batch pos"], scored: Bool[Tensor, "batch pos"]
) -> list[dict[str, float]]:
    """Per MLP layer, over the scored positions: the fraction of hidden units never active, the mean
    fraction active per token, and the mean and std of the (gate) pre-activations."""
    captured: list[Tensor] = []
    hooks = [block.mlp.hook_pre.register_forward_hook(lambda _m, _i, out: captured.append(out[scored]))
             for block in model.blocks]
    was_training = model.training
    model.eval()
    try:
        model.residual(tokens)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    stats = []
    for layer, (block, pre) in enumerate(zip(model.blocks, captured)):
        active = block.mlp.act.is_active(pre)
        stats.append({
            "layer": layer,
            "dead_fraction": 1.0 - active.any(dim=0).float().mean().item(),
            "active_fraction": active.float().mean().item(),
            "pre_mean": pre.mean().item(),
            "pre_std": pre.std().item(),
        })
    return stats
