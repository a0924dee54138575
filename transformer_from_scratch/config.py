"""One frozen config object for the model's shape, checked once at construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .catalog import ACTIVATION_TABLE, canonical_activation, is_matched

PRESETS = ("reference", "gpt2")
ATTENTION_IMPLS = ("einsum", "sdpa")
MLP_INITS = ("standard", "variance_matched")
UNEMBED_BIASES = ("none", "log_unigram")

# Matched gated MLPs are 2/3 as wide, rounded to a multiple of this: a width that vectorises well
# and, at the reference sizes (d_mlp 1024 -> 680), keeps the MLP parameter count within 1%.
MATCHED_WIDTH_MULTIPLE = 8


@dataclass(frozen=True)
class TransformerConfig:
    """Model shape. Defaults are the reference study.

    preset "reference": the study's architecture: fixed sinusoidal positions, attention without biases,
        LayerNorm before attention and before the MLP, no final LayerNorm.
    preset "gpt2": GPT-2's layout: learned positions, attention biases, a final LayerNorm; it exists
        so the implementation can be checked weight-for-weight against Hugging Face's GPT-2.
    match_params: give gated (GLU) activations 2/3 of d_mlp so their MLP has, within 1%, the
        parameter count of an ungated one (three matrices instead of two).
    attn_impl: "einsum" (from scratch, the default) or "sdpa" (PyTorch's fused kernel, same maths).
    final_ln: a LayerNorm before the unembedding in the reference preset (None: none); gpt2 always has one.
    mlp_init: "standard" (the preset's scheme), or "variance_matched": W_out's init scaled per
        activation so every MLP starts with relu's output variance (see transformer.init_std).
    dropout: probability for embedding, attention-pattern and residual dropout (0: none, no module).
    tie_embeddings: the unembedding is the token embedding's transpose (one tensor for both ends).
    unembed_bias: "none" (the study, GPT-2), or "log_unigram": a trained bias on the logits that
        starts at the log unigram of the training targets (set by the training script; unembed.py).
    word_type_dropout: probability of dropping a whole embedding row (word type) for a training step.
    unembed_dropout: dropout on the residual stream the unembedding reads.
    """

    d_vocab: int = 50257
    n_ctx: int = 128
    d_model: int = 256
    n_heads: int = 4
    d_mlp: int = 1024
    n_layers: int = 2
    act_fn: str = "gelu"
    preset: str = "reference"
    match_params: bool = False
    attn_impl: str = "einsum"
    layer_norm_eps: float = 1e-5
    final_ln: bool | None = None
    mlp_init: str = "standard"
    dropout: float = 0.0
    tie_embeddings: bool = False
    unembed_bias: str = "none"
    word_type_dropout: float = 0.0
    unembed_dropout: float = 0.0
    embed_scale: float = 1.0

    def __post_init__(self) -> None:
        for field in ("d_vocab", "n_ctx", "d_model", "n_heads", "d_mlp", "n_layers"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                f"choose n_heads among the divisors of d_model"
            )
        try:
            object.__setattr__(self, "act_fn", canonical_activation(self.act_fn))
        except ValueError as err:
            raise ValueError(f"act_fn: {err}") from None
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {list(PRESETS)}")
        if self.attn_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"unknown attn_impl {self.attn_impl!r}; choose one of {list(ATTENTION_IMPLS)}"
            )
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
        if self.final_ln is None or self.preset == "gpt2":  # GPT-2 has one, always
            object.__setattr__(self, "final_ln", self.preset == "gpt2" or bool(self.final_ln))
        if self.mlp_init not in MLP_INITS:
            raise ValueError(f"unknown mlp_init {self.mlp_init!r}; choose one of {list(MLP_INITS)}")
        for field in ("dropout", "word_type_dropout", "unembed_dropout"):
            if not 0 <= getattr(self, field) < 1:
                raise ValueError(f"{field} must be in [0, 1), got {getattr(self, field)!r}")
        if not self.embed_scale > 0:
            raise ValueError(f"embed_scale must be positive, got {self.embed_scale!r}")
        if self.unembed_bias not in UNEMBED_BIASES:
            raise ValueError(f"unknown unembed_bias {self.unembed_bias!r}; choose one of {list(UNEMBED_BIASES)}")

    @property
    def d_head(self) -> int:  # derived, so it can never disagree with d_model and n_heads
        return self.d_model // self.n_heads

    @property
    def gated(self) -> bool:
        return ACTIVATION_TABLE[self.act_fn].gated

    @property
    def d_hidden(self) -> int:
        """The MLP's actual hidden width: d_mlp, or 2/3 of it for a parameter-matched gated MLP."""
        if not is_matched(self.act_fn, self.match_params):
            return self.d_mlp
        multiple = MATCHED_WIDTH_MULTIPLE
        return max(multiple, round(2 * self.d_mlp / 3 / multiple) * multiple)

    @property
    def learned_pos(self) -> bool:
        return self.preset == "gpt2"

    @property
    def attn_bias(self) -> bool:
        return self.preset == "gpt2"

    def to_dict(self) -> dict:
        """The fields plus the derived facts a reader of a log needs (d_head, d_hidden)."""
        return {**asdict(self), "d_head": self.d_head, "d_hidden": self.d_hidden}

    @classmethod
    def from_dict(cls, recorded: dict) -> TransformerConfig:
        """The config a log's model_config records: its fields, the derived facts beside them ignored
        (a field an older log lacks takes its default)."""
        return cls(**{f.name: recorded[f.name] for f in fields(cls) if f.name in recorded})
