"""Hugging Face GPT-2 import and export for the ``gpt2`` preset: pure state-dict conversions.

    ours = from_hf_gpt2(GPT2LMHeadModel.from_pretrained(path))
    to_hf_gpt2(ours).save_pretrained(folder)        # AutoModelForCausalLM.from_pretrained(folder) loads it

HF's Conv1D stores weights (in, out), as we do, so most tensors only change name; its fused
``c_attn`` holds Q, K and V side by side (each d_model wide), which we split and store per head.
Every tensor is named once, the shape of each reshaped one is checked (a reshape could hide a wrong
shape), and the result is loaded with ``strict=True``, which checks every name and shape.
Embeddings stay untied: ours are separate parameters, so an export sets tie_word_embeddings=False.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .activations import ACTIVATIONS, canonical_activation
from .config import TransformerConfig
from .transformer import Transformer

# Our activation names that Hugging Face spells differently; the rest share their name with ACT2FN.
HF_ACTIVATION_NAMES = {"gelu_tanh": "gelu_new"}
GPT2_EOS = 50256  # <|endoftext|> in GPT-2's 50,257-token vocabulary


def _checked(tensor: Tensor, shape: tuple[int, ...], name: str) -> Tensor:
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(tensor.shape)}")
    return tensor


def check_gpt2_expressible(cfg: TransformerConfig) -> None:
    """Raise a ValueError saying why GPT-2 cannot hold this model, if it cannot."""
    if cfg.preset != "gpt2":
        raise ValueError(f"preset {cfg.preset!r} has fixed sinusoidal positions, no attention biases and no final "
                         f"LayerNorm; GPT-2 has all three: only the 'gpt2' preset converts")
    if ACTIVATIONS[cfg.act_fn].gated:
        raise ValueError(f"{cfg.act_fn} is a gated MLP (three matrices); GPT-2's MLP has two")
    if cfg.unembed_bias != "none":
        raise ValueError(f"unembed_bias {cfg.unembed_bias!r} is a bias on the logits; GPT-2's lm_head has none (a "
                         f"bias that is not constant cannot be folded into the other weights)")


def config_from_hf(hf_config) -> TransformerConfig:
    unsupported = {"scale_attn_by_inverse_layer_idx": True, "add_cross_attention": True, "scale_attn_weights": False}
    for option, value in unsupported.items():
        if getattr(hf_config, option, not value) == value:
            raise ValueError(f"GPT-2 option {option}={value} has no counterpart in this model")
    return TransformerConfig(
        d_vocab=hf_config.vocab_size, n_ctx=hf_config.n_positions, d_model=hf_config.n_embd,
        n_heads=hf_config.n_head, d_mlp=hf_config.n_inner or 4 * hf_config.n_embd, n_layers=hf_config.n_layer,
        act_fn=canonical_activation(hf_config.activation_function), preset="gpt2",
        layer_norm_eps=hf_config.layer_norm_epsilon,
    )


def hf_config_from(cfg: TransformerConfig):
    from transformers import GPT2Config

    check_gpt2_expressible(cfg)
    return GPT2Config(
        vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_head=cfg.n_heads, n_inner=cfg.d_mlp,
        n_layer=cfg.n_layers, activation_function=HF_ACTIVATION_NAMES.get(cfg.act_fn, cfg.act_fn),
        layer_norm_epsilon=cfg.layer_norm_eps, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        tie_word_embeddings=cfg.tie_embeddings, **dict.fromkeys(("bos_token_id", "eos_token_id"), GPT2_EOS if cfg.d_vocab == 50257 else None),
    )


def same_layout_names(cfg: TransformerConfig) -> dict[str, str]:
    """Our name -> HF's, for the tensors both models store alike (the rest are reshaped below)."""
    names = {"embed.W_E": "transformer.wte.weight", "pos_embed.W_pos": "transformer.wpe.weight",
             "ln_final.w": "transformer.ln_f.weight", "ln_final.b": "transformer.ln_f.bias"}
    for i in range(cfg.n_layers):
        ours, hf = f"blocks.{i}.", f"transformer.h.{i}."
        names.update({
            ours + "ln1.w": hf + "ln_1.weight", ours + "ln1.b": hf + "ln_1.bias",
            ours + "ln2.w": hf + "ln_2.weight", ours + "ln2.b": hf + "ln_2.bias",
            ours + "attn.b_O": hf + "attn.c_proj.bias",
            ours + "mlp.W_in": hf + "mlp.c_fc.weight", ours + "mlp.b_in": hf + "mlp.c_fc.bias",
            ours + "mlp.W_out": hf + "mlp.c_proj.weight", ours + "mlp.b_out": hf + "mlp.c_proj.bias",
        })
    return names


def state_dict_from_hf(hf: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    """Hugging Face GPT2LMHeadModel state dict -> ours."""
    d_model, n_heads, d_head = cfg.d_model, cfg.n_heads, cfg.d_head
    out = {ours: hf[name] for ours, name in same_layout_names(cfg).items()}
    out["unembed.W_U"] = _checked(hf["lm_head.weight"], (cfg.d_vocab, d_model), "lm_head").T
    for i in range(cfg.n_layers):
        hf_block, block = f"transformer.h.{i}.", f"blocks.{i}."
        qkv = _checked(hf[hf_block + "attn.c_attn.weight"], (d_model, 3 * d_model), f"h.{i}.c_attn")
        qkv_bias = _checked(hf[hf_block + "attn.c_attn.bias"], (3 * d_model,), f"h.{i}.c_attn.bias")
        for name, W, b in zip("QKV", qkv.split(d_model, dim=1), qkv_bias.view(3, n_heads, d_head)):
            out[block + f"attn.W_{name}"] = W.reshape(d_model, n_heads, d_head).transpose(0, 1)
            out[block + f"attn.b_{name}"] = b
        W_O = _checked(hf[hf_block + "attn.c_proj.weight"], (d_model, d_model), f"h.{i}.attn.c_proj")
        out[block + "attn.W_O"] = W_O.reshape(n_heads, d_head, d_model)
    return {name: tensor.contiguous() for name, tensor in out.items()}


def state_dict_to_hf(ours: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    """Our state dict -> Hugging Face GPT2LMHeadModel's (the inverse of state_dict_from_hf)."""
    d_model, n_heads, d_head = cfg.d_model, cfg.n_heads, cfg.d_head
    out = {name: ours[mine] for mine, name in same_layout_names(cfg).items()}
    W_U = ours["embed.W_E"].T if cfg.tie_embeddings else ours["unembed.W_U"]  # tied: one tensor, HF ties it too
    out["lm_head.weight"] = _checked(W_U, (d_model, cfg.d_vocab), "W_U").T
    for i in range(cfg.n_layers):
        hf_block, block = f"transformer.h.{i}.", f"blocks.{i}."
        per_head = [_checked(ours[block + f"attn.W_{n}"], (n_heads, d_model, d_head), f"{block}W_{n}") for n in "QKV"]
        out[hf_block + "attn.c_attn.weight"] = torch.cat([W.transpose(0, 1).reshape(d_model, d_model) for W in per_head], 1)
        out[hf_block + "attn.c_attn.bias"] = torch.cat([ours[block + f"attn.b_{n}"].reshape(d_model) for n in "QKV"])
        W_O = _checked(ours[block + "attn.W_O"], (n_heads, d_head, d_model), f"{block}W_O")
        out[hf_block + "attn.c_proj.weight"] = W_O.reshape(d_model, d_model)
    return {name: tensor.contiguous() for name, tensor in out.items()}


def from_hf_gpt2(hf_model) -> Transformer:
    """Our ``gpt2``-preset Transformer holding a Hugging Face GPT2LMHeadModel's weights."""
    cfg = config_from_hf(hf_model.config)
    model = Transformer(cfg)
    model.load_state_dict(state_dict_from_hf(hf_model.state_dict(), cfg), strict=True)
    return model


def to_hf_gpt2(model: Transformer):
    """A Hugging Face GPT2LMHeadModel holding our ``gpt2``-preset model's weights (eval mode)."""
    from transformers import GPT2LMHeadModel

    hf_model = GPT2LMHeadModel(hf_config_from(model.cfg))
    hf_model.load_state_dict(state_dict_to_hf(model.state_dict(), model.cfg), strict=True)
    return hf_model.eval()
