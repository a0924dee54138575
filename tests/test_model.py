"""Components against trusted references, causality, parameter counts, fused loss, overfitting."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from transformer_from_scratch import (
    ACTIVATIONS,
    IGNORE_INDEX,
    Attention,
    LayerNorm,
    Transformer,
    TransformerConfig,
    linear_cross_entropy,
    parameter_counts,
    parameter_groups,
    sinusoidal_table,
    training_flops_per_token,
)
from transformer_from_scratch.loss import Workspace


def test_layer_norm_matches_torch(tiny_cfg):
    ours, ref = LayerNorm(tiny_cfg), torch.nn.LayerNorm(tiny_cfg.d_model, eps=tiny_cfg.layer_norm_eps)
    with torch.no_grad():
        for p in (ours.w, ours.b):
            p.normal_()
        ref.weight.copy_(ours.w)
        ref.bias.copy_(ours.b)
    x = torch.randn(2, 7, tiny_cfg.d_model) * 3 + 1
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["reference", "gpt2"])
def test_einsum_attention_matches_scaled_dot_product_attention(tiny_cfg, preset):
    cfg = replace(tiny_cfg, preset=preset)
    attn = Attention(cfg)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 9, cfg.d_model)
    q, k, v = (torch.einsum("bpm,hmd->bhpd", x, getattr(attn, f"W_{n}")) for n in "QKV")
    if cfg.attn_bias:
        q, k, v = q + attn.b_Q[:, None], k + attn.b_K[:, None], v + attn.b_V[:, None]
    z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    expected = torch.einsum("bhpd,hdm->bpm", z, attn.W_O) + (attn.b_O if cfg.attn_bias else 0)
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    fused = Attention(replace(cfg, attn_impl="sdpa"))
    fused.load_state_dict(attn.state_dict())
    torch.testing.assert_close(fused(x), attn(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["reference", "gpt2"])
def test_the_sdpa_path_gives_the_einsum_paths_loss_and_gradients_within_1e_5(tiny_cfg, preset):
    """What lets CUDA default to sdpa (training.settings.device_defaults): a whole model, padded rows
    included, has the same loss and gradients on both attention paths, to 1e-5 (fp32, CPU)."""
    cfg = replace(tiny_cfg, preset=preset)
    tokens = torch.randint(0, cfg.d_vocab, (3, cfg.n_ctx))
    targets = tokens.roll(-1, dims=1)
    targets[1, 9:] = IGNORE_INDEX  # a padded row, as the lines layout makes
    results = []
    for impl in ("einsum", "sdpa"):
        model = Transformer(replace(cfg, attn_impl=impl), seed=3)
        loss = model.nll_sum(tokens, targets, fused=False) / (targets != IGNORE_INDEX).sum()
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (einsum_loss, einsum_grads), (sdpa_loss, sdpa_grads) = results
    torch.testing.assert_close(sdpa_loss, einsum_loss, atol=1e-5, rtol=1e-5)
    for name, grad in einsum_grads.items():
        torch.testing.assert_close(sdpa_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("preset", ["reference", "gpt2"])
def test_future_tokens_do_not_change_past_logits(tiny_cfg, preset):
    model = Transformer(replace(tiny_cfg, preset=preset), seed=1)
    tokens = torch.randint(0, tiny_cfg.d_vocab, (1, 8))
    edited = tokens.clone()
    edited[0, 5:] = (tokens[0, 5:] + 1) % tiny_cfg.d_vocab  # really different
    logits, edited_logits = model(tokens), model(edited)
    torch.testing.assert_close(logits[:, :5], edited_logits[:, :5])
    assert not torch.allclose(logits[:, 5:], edited_logits[:, 5:])


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_forward_shape_for_every_activation(tiny_cfg, name):
    model = Transformer(replace(tiny_cfg, act_fn=name))
    assert model(torch.randint(0, tiny_cfg.d_vocab, (3, 11))).shape == (3, 11, tiny_cfg.d_vocab)


def test_seed_preset_has_the_study_parameter_count():
    counts = parameter_counts(Transformer(TransformerConfig(act_fn="relu", preset="reference")))
    assert counts == {"total": 27_309_056, "non_embedding": 1_577_472, "mlp": 2 * (2 * 256 * 1024 + 1024 + 256)}


@pytest.mark.parametrize("name", ["glu", "bilinear", "reglu", "geglu", "swiglu"])
def test_matched_gated_mlp_within_one_percent_of_ungated(name):
    ungated = parameter_counts(Transformer(TransformerConfig(act_fn="relu", d_vocab=8)))["mlp"]
    gated = parameter_counts(Transformer(TransformerConfig(act_fn=name, match_params=True, d_vocab=8)))["mlp"]
    unmatched = parameter_counts(Transformer(TransformerConfig(act_fn=name, d_vocab=8)))["mlp"]
    assert abs(gated - ungated) / ungated < 0.01
    assert unmatched > 1.4 * ungated  # without matching a gated MLP really is bigger


def test_same_seed_gives_same_weights_outside_the_mlp(tiny_cfg):
    relu = Transformer(replace(tiny_cfg, act_fn="relu"), seed=3).state_dict()
    swiglu = Transformer(replace(tiny_cfg, act_fn="swiglu"), seed=3).state_dict()
    shared = [k for k in relu if ".mlp." not in k]
    assert shared and all(torch.equal(relu[k], swiglu[k]) for k in shared)
    other_seed = Transformer(replace(tiny_cfg, act_fn="relu"), seed=4).state_dict()
    assert not torch.equal(relu["embed.W_E"], other_seed["embed.W_E"])


def test_seed_preset_mlp_init_follows_the_study():
    model = Transformer(TransformerConfig(act_fn="relu", d_vocab=8), seed=0)
    mlp = model.blocks[0].mlp
    assert abs(mlp.W_in.std().item() - (2 / 256) ** 0.5) < 0.003  # Kaiming normal
    assert abs(mlp.W_out.std().item() - (2 / (1024 + 256)) ** 0.5) < 0.002  # Xavier normal
    assert mlp.b_in.abs().sum() == 0 and mlp.b_out.abs().sum() == 0


@pytest.mark.parametrize("rows, tile", [(37, 8), (37, 53), (37, 256), (5, 1), (0, 8)])
@pytest.mark.parametrize("tied_layout", [False, True])
def test_fused_linear_cross_entropy_matches_textbook_loss_and_grads(rows, tile, tied_layout):
    # tied_layout: W is a (d_vocab x d_model) table's transpose, as a tied W_U, whose gradient the
    # fused loss writes in place, tile by tile, in that layout
    torch.manual_seed(0)
    h = torch.randn(rows, 16, dtype=torch.float64, requires_grad=True)
    W = (torch.randn(53, 16, dtype=torch.float64).t() if tied_layout else torch.randn(16, 53, dtype=torch.float64))
    W.requires_grad_()
    t = torch.randint(0, 53, (rows,))
    ours = linear_cross_entropy(h, W, t, vocab_tile=tile) * 0.7  # a non-unit upstream gradient
    ours.backward()
    grads = h.grad.clone(), W.grad.clone()
    h.grad = W.grad = None
    ref = F.cross_entropy(h @ W, t, reduction="sum") * 0.7
    ref.backward()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grads, (h.grad, W.grad))
    with torch.no_grad():  # the evaluation path (no gradients kept) gives the same loss
        torch.testing.assert_close(linear_cross_entropy(h, W, t, vocab_tile=tile), ref / 0.7)


def test_fused_calls_sharing_the_workspace_before_one_backward():
    """Two calls (the second smaller, reusing the tile workspace) and then one backward, as in
    gradient accumulation; logits spread over +-60 so the running maximum moves from tile to tile."""
    torch.manual_seed(0)
    W = torch.randn(16, 300, dtype=torch.float64, requires_grad=True)
    hs = [(torch.randn(rows, 16, dtype=torch.float64) * 6).requires_grad_() for rows in (40, 9)]
    ts = [torch.randint(0, 300, (len(h),)) for h in hs]
    workspace = Workspace()
    sum(linear_cross_entropy(h, W, t, vocab_tile=64, workspace=workspace) for h, t in zip(hs, ts)).backward()
    ours = [h.grad.clone() for h in hs] + [W.grad.clone()]
    for p in hs + [W]:
        p.grad = None
    sum(F.cross_entropy(h @ W, t, reduction="sum") for h, t in zip(hs, ts)).backward()
    torch.testing.assert_close(ours, [h.grad for h in hs] + [W.grad])


@pytest.mark.parametrize("preset", ["reference", "gpt2"])
def test_fused_model_loss_matches_plain_path_with_padding(tiny_cfg, preset):
    model = Transformer(replace(tiny_cfg, preset=preset, act_fn="swiglu"), seed=5)
    tokens = torch.randint(0, tiny_cfg.d_vocab, (3, 12))
    targets = torch.randint(0, tiny_cfg.d_vocab, (3, 12))
    targets[0, 7:] = IGNORE_INDEX
    targets[2, 2:] = IGNORE_INDEX
    results = []
    for fused in (True, False):
        model.zero_grad()
        loss = model.nll_sum(tokens, targets, fused=fused)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-4, rtol=1e-5)
    for name in results[0][1]:
        torch.testing.assert_close(results[0][1][name], results[1][1][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("name", ["relu", "swiglu"])
def test_tiny_model_overfits_a_repeated_sequence(tiny_cfg, name):
    torch.manual_seed(0)
    model = Transformer(replace(tiny_cfg, act_fn=name), seed=0)
    seq = torch.randint(0, tiny_cfg.d_vocab, (1, 13)).repeat(4, 1)
    inputs, targets = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = model.nll_sum(inputs, targets) / targets.numel()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_derived_generators_differ_by_seed_and_purpose():
    from transformer_from_scratch import derived_generator

    draws = {(s, p): torch.randn(4, generator=derived_generator(s, p)) for s in (42, 43, 2**32 + 42) for p in ("a", "b")}
    values = list(draws.values())
    assert all(not torch.equal(values[i], values[j]) for i in range(len(values)) for j in range(i + 1, len(values)))


@pytest.mark.parametrize("preset", ["reference", "gpt2"])
def test_both_loss_paths_agree_in_float32_under_bf16_autocast(tiny_cfg, preset):
    model = Transformer(replace(tiny_cfg, preset=preset), seed=2)
    tokens, targets = torch.randint(0, tiny_cfg.d_vocab, (2, 2, 11)).unbind(0)
    exact = model.nll_sum(tokens, targets).item()
    for fused in (True, False):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model.nll_sum(tokens, targets, fused=fused)
        loss.backward()
        assert loss.dtype == torch.float32 and loss.item() == pytest.approx(exact, rel=1e-2)
        assert all(p.grad.dtype == p.dtype and torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_fused_loss_workspace_belongs_to_its_model(tiny_cfg):
    a, b = Transformer(tiny_cfg, seed=0), Transformer(tiny_cfg, seed=0)
    tokens = torch.randint(0, tiny_cfg.d_vocab, (2, 9))
    a.nll_sum(tokens[:, :-1], tokens[:, 1:]).backward()
    assert a.loss_workspace.buffer is not None and b.loss_workspace.buffer is None


@pytest.mark.parametrize("pos, i", [(0, 0), (1, 0), (7, 3), (127, 0), (127, 127), (50, 64)])
def test_sinusoidal_table_is_the_closed_form(pos, i):
    # Vaswani et al. 2017: PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(same)
    table = sinusoidal_table(128, 256)
    angle = pos / 10000 ** (2 * i / 256)
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_gpt2_preset_initial_standard_deviations():
    n_layers = 4
    model = Transformer(TransformerConfig(d_vocab=2048, d_model=256, n_layers=n_layers, preset="gpt2"), seed=0)
    residual = 0.02 / math.sqrt(2 * n_layers)  # GPT-2 scales the projections that write to the residual
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("W_O", "W_out"):
            assert p.std().item() == pytest.approx(residual, rel=0.03), name
        elif leaf.startswith("W_"):
            assert p.std().item() == pytest.approx(0.02, rel=0.03), name
        elif leaf == "w":
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            assert torch.equal(p, torch.zeros_like(p)), name


@pytest.mark.parametrize("change", [{}, {"preset": "gpt2"}, {"act_fn": "swiglu"}, {"n_layers": 3}])
def test_parameter_groups_cover_every_parameter_exactly_once(tiny_cfg, change):
    model = Transformer(replace(tiny_cfg, **change))
    grouped = [id(p) for params in parameter_groups(model).values() for p in params]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters()}


def test_a_sequence_longer_than_the_context_is_a_clear_error(tiny_cfg):
    model = Transformer(tiny_cfg)
    with pytest.raises(ValueError, match=f"exceeds n_ctx={tiny_cfg.n_ctx}"):
        model(torch.zeros(1, tiny_cfg.n_ctx + 1, dtype=torch.long))


def test_training_flops_per_token_by_hand_and_by_counting():
    cfg = TransformerConfig(d_vocab=100, n_ctx=4, d_model=8, n_heads=2, d_mlp=16, n_layers=1, act_fn="relu")
    # by hand: weights 4*8*8 (attention) + 2*8*16 (MLP) + 8*100 (unembedding) = 1312; forward 2 * 1312 plus
    # q k^T and pattern v, 2 * 2 * 8 * 4 = 128; training = 3 * forward
    assert training_flops_per_token(cfg) == 3 * (2 * 1312 + 128) == 8256
    assert training_flops_per_token(replace(cfg, act_fn="swiglu")) == 3 * (2 * (1312 + 8 * 16) + 128)
    assert training_flops_per_token(TransformerConfig()) == 87_418_368  # the study's model: 87.4 MFLOP
    # counted: torch's FLOP counter over one forward and backward of full-length sequences (textbook loss)
    from torch.utils.flop_counter import FlopCounterMode

    for act_fn in ("relu", "swiglu"):
        model = Transformer(replace(cfg, act_fn=act_fn, d_model=16, n_ctx=8), seed=0)
        tokens = torch.randint(0, 100, (3, 8))
        with FlopCounterMode(display=False) as counter:
            model.nll_sum(tokens, tokens, fused=False).backward()
        assert counter.get_total_flops() == tokens.numel() * training_flops_per_token(model.cfg)


@pytest.mark.parametrize("bias", [False, True])
def test_bf16_fused_loss_rounds_like_bf16_autocast_and_stays_close_to_fp32(bias):
    # Logits spread over +-30: bf16 keeps 8 bits, so a logit is rounded by up to ~0.06 and the loss
    # moves visibly off fp32. The fused path must round as autocast's textbook path does (the same
    # bf16 products), not more: its distance to that path is a small fraction of its distance to fp32.
    torch.manual_seed(0)
    h = (torch.randn(96, 64) * 3).requires_grad_()
    W = torch.randn(64, 700).requires_grad_()
    t = torch.randint(0, 700, (96,))
    b = (torch.randn(700) * 3).requires_grad_() if bias else None  # added in fp32 to the rounded product

    def loss_and_grads(fused: bool, bf16: bool):
        h.grad = W.grad = None
        if b is not None:
            b.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = linear_cross_entropy(h, W, t, vocab_tile=128, b_U=b) if fused else F.cross_entropy(
                (h @ W).float() + (0 if b is None else b), t, reduction="sum")
        loss.backward()
        return loss.detach(), h.grad.clone(), W.grad.clone(), *([] if b is None else [b.grad.clone()])

    exact, ours, textbook = loss_and_grads(True, False), loss_and_grads(True, True), loss_and_grads(False, True)
    assert ours[0].dtype == torch.float32 and ours[1].dtype == ours[2].dtype == torch.float32
    off_fp32 = [float((a - b).abs().max()) for a, b in zip(ours, exact)]
    off_textbook = [float((a - b).abs().max()) for a, b in zip(ours, textbook)]
    assert all(o > 0 for o in off_fp32)  # the bf16 path really ran
    assert all(t <= 0.25 * o for t, o in zip(off_textbook, off_fp32)), (off_textbook, off_fp32)
    torch.testing.assert_close(ours[0], exact[0], rtol=2e-3, atol=0)  # the summed loss: within 0.2% of fp32
