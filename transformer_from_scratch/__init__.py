"""A GPT-2-style decoder written from scratch with einsum, with a pluggable MLP activation.

Names are exported in dependency order, so this table is also a reading order. They load on first
use (PEP 562), so that ``transformer_from_scratch.catalog`` (activation names, model sizes) can be
read without importing torch: the analysis does.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "catalog": ["ALIASES", "activation_names", "canonical_activation"],
    "activations": ["ACTIVATIONS", "Activation"],
    "config": ["MATCHED_WIDTH_MULTIPLE", "PRESETS", "TransformerConfig"],
    "embed": ["Embed"],
    "pos_embed": ["LearnedPosEmbed", "SinusoidalPosEmbed", "sinusoidal_table"],
    "layer_norm": ["LayerNorm"],
    "attention": ["Attention"],
    "mlp": ["MLP"],
    "layer": ["TransformerBlock"],
    "unembed": ["Unembed"],
    "loss": ["linear_cross_entropy"],
    "transformer": ["IGNORE_INDEX", "Transformer", "derived_generator", "parameter_counts", "parameter_groups",
                    "training_flops_per_token"],
    "probes": ["probe"],
    "hf": ["from_hf_gpt2", "to_hf_gpt2"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
