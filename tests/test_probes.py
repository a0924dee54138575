"""Probes and generation: attention statistics on patterns with known answers and against a direct
computation, MLP quantiles, and generate()'s determinism, greedy rule and context window."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from transformer_from_scratch import Transformer, derived_generator, probe
from transformer_from_scratch.probes import attention_stats


def causal_uniform(n_pos: int) -> torch.Tensor:
    """Each query spreads its attention evenly over the keys it can see: entropy ln(k)."""
    allowed = torch.ones(n_pos, n_pos).tril()
    return (allowed / allowed.sum(-1, keepdim=True))[None, None]


def test_uniform_attention_has_entropy_ln_k_and_one_hot_has_zero():
    n_pos = 6
    queries = torch.ones(1, n_pos, dtype=torch.bool)
    uniform = attention_stats(causal_uniform(n_pos), queries)[0]
    expected = np.mean([math.log(k) for k in range(2, n_pos + 1)])  # queries 1..5 see 2..6 keys
    assert uniform["entropy"] == pytest.approx(expected) and uniform["max_entropy"] == pytest.approx(expected)
    assert uniform["prev_token"] == pytest.approx(np.mean([1 / k for k in range(2, n_pos + 1)]))
    previous = torch.zeros(1, 1, n_pos, n_pos)
    previous[0, 0, torch.arange(1, n_pos), torch.arange(n_pos - 1)] = 1.0
    previous[0, 0, 0, 0] = 1.0
    one_hot = attention_stats(previous, queries)[0]
    assert one_hot["entropy"] == 0.0 and one_hot["prev_token"] == 1.0 and one_hot["first_token"] == pytest.approx(0.2)


def test_only_the_chosen_queries_count():
    pattern = causal_uniform(4).repeat(1, 2, 1, 1)
    pattern[0, 1] = torch.eye(4)  # head 1 attends to itself only
    queries = torch.tensor([[True, True, False, False]])  # padding from position 2 on
    heads = attention_stats(pattern, queries)
    assert heads[0]["entropy"] == pytest.approx(math.log(2)) and heads[1]["entropy"] == 0.0
    assert heads[1]["prev_token"] == 0.0 and heads[0]["first_token"] == pytest.approx(0.5)


@pytest.mark.parametrize("attn_impl", ["einsum", "sdpa"])
def test_probe_entropy_equals_softmax_of_q_k_computed_directly(tiny_cfg, attn_impl):
    model = Transformer(replace(tiny_cfg, attn_impl=attn_impl, n_layers=1), seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.5)  # peaked patterns, far from uniform
    tokens = torch.randint(0, tiny_cfg.d_vocab, (2, 9))
    scored = torch.ones(2, 9, dtype=torch.bool)
    scored[1, 6:] = False
    stats = probe(model, tokens, scored)
    block = model.blocks[0]
    x = block.ln1(model.embed(tokens) + model.pos_embed(tokens))
    q = torch.einsum("bpm,hmd->bhpd", x, block.attn.W_Q)
    k = torch.einsum("bpm,hmd->bhpd", x, block.attn.W_K)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(tiny_cfg.d_head)
    pattern = scores.masked_fill(torch.ones(9, 9).triu(1).bool(), -math.inf).softmax(-1)
    chosen = scored & (torch.arange(9) > 0)
    for head, got in enumerate(stats["attention"][0]["heads"]):
        rows = pattern[:, head][chosen]
        entropy = -(rows * rows.clamp_min(1e-30).log()).sum(-1).mean()
        assert got["entropy"] == pytest.approx(entropy.item(), rel=1e-5)
    assert stats["attention"][0]["heads"][0]["entropy"] < 0.9 * stats["attention"][0]["heads"][0]["max_entropy"]


def test_mlp_quantiles_are_those_of_the_pre_activations(tiny_cfg):
    model = Transformer(replace(tiny_cfg, n_layers=1), seed=0)
    tokens = torch.randint(0, tiny_cfg.d_vocab, (3, 10), generator=torch.Generator().manual_seed(0))
    scored = torch.ones(3, 10, dtype=torch.bool)
    captured = []
    model.blocks[0].mlp.hook_pre.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().clone()))
    quantiles = probe(model, tokens, scored)["mlp"][0]["pre_quantiles"]
    values = captured[0].flatten().double()
    assert list(quantiles) == ["p01", "p05", "p25", "p50", "p75", "p95", "p99"]
    for name, value in quantiles.items():  # the q-quantile has a fraction q of the values at or below it
        below = (values <= value + 1e-9).double().mean().item()
        assert below == pytest.approx(int(name[1:]) / 100, abs=2 / len(values)), name


def test_greedy_generation_is_argmax_decoding_written_out(tiny_cfg):
    model = Transformer(tiny_cfg, seed=1).eval()
    prompt = torch.randint(0, tiny_cfg.d_vocab, (2, 5))
    tokens = prompt
    for _ in range(6):
        tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(model.generate(prompt, 6), tokens)


def test_sampling_is_deterministic_for_a_fixed_generator(tiny_cfg):
    model = Transformer(tiny_cfg, seed=1)
    prompt = torch.randint(0, tiny_cfg.d_vocab, (1, 4))
    draws = [model.generate(prompt, 12, temperature=0.8, generator=derived_generator(7, "samples")) for _ in range(2)]
    other = model.generate(prompt, 12, temperature=0.8, generator=derived_generator(8, "samples"))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], other)
    top1 = model.generate(prompt, 12, temperature=0.8, top_k=1, generator=derived_generator(7, "samples"))
    assert torch.equal(top1, model.generate(prompt, 12))  # top_k=1 leaves only the argmax


def test_generation_never_reads_past_the_context(tiny_cfg):
    model = Transformer(tiny_cfg, seed=2)
    prompt = torch.randint(0, tiny_cfg.d_vocab, (1, tiny_cfg.n_ctx))
    out = model.generate(prompt, 5)  # would raise "exceeds n_ctx" if it fed more than n_ctx tokens
    assert out.shape == (1, tiny_cfg.n_ctx + 5)
    window = out[:, -tiny_cfg.n_ctx - 1 : -1]
    assert out[0, -1] == model(window)[0, -1].argmax()  # the last token depends on the last n_ctx only
