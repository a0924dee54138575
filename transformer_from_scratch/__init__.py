"""A GPT-2-style decoder written from scratch with einsum, with a pluggable MLP activation.

Names are re-exported in dependency order, so this list is also a reading order.
"""

from .activations import ACTIVATIONS, ALIASES, Activation, activation_names, canonical_activation
from .config import MATCHED_WIDTH_MULTIPLE, PRESETS, TransformerConfig
from .embed import Embed
from .pos_embed import LearnedPosEmbed, SinusoidalPosEmbed, sinusoidal_table
from .layer_norm import LayerNorm
from .attention import Attention
from .mlp import MLP
from .layer import TransformerBlock
from .unembed import Unembed
from .loss import linear_cross_entropy
from .transformer import (
    IGNORE_INDEX, Transformer, derived_generator, parameter_counts, parameter_groups, training_flops_per_token,
)
from .probes import probe
from .hf import from_hf_gpt2, to_hf_gpt2

__all__ = [
    "ACTIVATIONS", "ALIASES", "Activation", "activation_names", "canonical_activation",
    "MATCHED_WIDTH_MULTIPLE", "PRESETS", "TransformerConfig",
    "Embed", "LearnedPosEmbed", "SinusoidalPosEmbed", "sinusoidal_table", "LayerNorm", "Attention",
    "MLP", "TransformerBlock", "Unembed", "linear_cross_entropy",
    "IGNORE_INDEX", "Transformer", "derived_generator", "parameter_counts", "parameter_groups", "training_flops_per_token", "probe",
    "from_hf_gpt2", "to_hf_gpt2",
]
