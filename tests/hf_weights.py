"""Copy a Hugging Face GPT2LMHeadModel's weights into our ``gpt2`` preset (test helper).

HF's Conv1D stores weights (in, out) like ours; its fused c_attn holds Q, K and V side by side,
which we split and reshape per head.
"""

from __future__ import annotations

import torch

from transformer_from_scratch import Transformer


@torch.no_grad()
def load_hf_gpt2(ours: Transformer, hf) -> None:
    cfg = ours.cfg
    n_heads, d_head, d_model = cfg.n_heads, cfg.d_head, cfg.d_model
    ours.embed.W_E.copy_(hf.transformer.wte.weight)
    ours.pos_embed.W_pos.copy_(hf.transformer.wpe.weight)
    for block, hf_block in zip(ours.blocks, hf.transformer.h):
        block.ln1.w.copy_(hf_block.ln_1.weight)
        block.ln1.b.copy_(hf_block.ln_1.bias)
        block.ln2.w.copy_(hf_block.ln_2.weight)
        block.ln2.b.copy_(hf_block.ln_2.bias)
        W_qkv = hf_block.attn.c_attn.weight.view(d_model, 3, n_heads, d_head)
        b_qkv = hf_block.attn.c_attn.bias.view(3, n_heads, d_head)
        for i, name in enumerate("QKV"):
            getattr(block.attn, f"W_{name}").copy_(W_qkv[:, i].permute(1, 0, 2))
            getattr(block.attn, f"b_{name}").copy_(b_qkv[i])
        block.attn.W_O.copy_(hf_block.attn.c_proj.weight.view(n_heads, d_head, d_model))
        block.attn.b_O.copy_(hf_block.attn.c_proj.bias)
        block.mlp.W_in.copy_(hf_block.mlp.c_fc.weight)
        block.mlp.b_in.copy_(hf_block.mlp.c_fc.bias)
        block.mlp.W_out.copy_(hf_block.mlp.c_proj.weight)
        block.mlp.b_out.copy_(hf_block.mlp.c_proj.bias)
    ours.ln_final.w.copy_(hf.transformer.ln_f.weight)
    ours.ln_final.b.copy_(hf.transformer.ln_f.bias)
    ours.unembed.W_U.copy_(hf.lm_head.weight.T)
