"""Our gpt2 preset, given a Hugging Face GPT-2's weights, computes the same logits and loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_weights import load_hf_gpt2
from transformer_from_scratch import Transformer, TransformerConfig

OURS_TO_HF = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}


@pytest.mark.parametrize("act_fn", sorted(OURS_TO_HF))
@pytest.mark.parametrize("attn_impl", ["einsum", "sdpa"])
def test_logits_and_loss_match_hugging_face_gpt2(act_fn, attn_impl):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf_cfg = GPT2Config(
        vocab_size=211, n_positions=24, n_embd=48, n_layer=2, n_head=4, n_inner=96,
        activation_function=OURS_TO_HF[act_fn], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, attn_implementation="eager",
    )
    hf = GPT2LMHeadModel(hf_cfg).eval()
    with torch.no_grad():  # HF initialises biases and LayerNorms to constants: make them informative
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.normal_(std=0.1).add_(1.0 if name.endswith("weight") else 0.0)
    ours = Transformer(TransformerConfig(
        d_vocab=211, n_ctx=24, d_model=48, n_heads=4, d_mlp=96, n_layers=2, act_fn=act_fn, preset="gpt2",
        attn_impl=attn_impl,
    )).eval()
    load_hf_gpt2(ours, hf)
    tokens = torch.randint(0, 211, (3, 24))
    with torch.no_grad():
        hf_out = hf(input_ids=tokens, labels=tokens)
        logits = ours(tokens)
        loss = ours.nll_sum(tokens[:, :-1], tokens[:, 1:]) / tokens[:, 1:].numel()
    torch.testing.assert_close(logits, hf_out.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()), hf_out.loss,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, hf_out.loss, atol=1e-5, rtol=1e-5)
