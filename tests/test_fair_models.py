"""The controls a reviewer asks for: variance-matched MLP init, a final LayerNorm, dropout, tied
embeddings, weight-decay sweeps, warmup as a fraction of the run, and clipping that is counted."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import train_simple
from conftest import assert_same_run, final_weights, read_log
from transformer_from_scratch import ACTIVATIONS, Transformer, TransformerConfig, parameter_counts

RUN = "relu_seed3"


def mlp_output_variance(act_fn: str, mlp_init: str, seed: int = 0) -> float:
    """The first block's MLP output variance at init, on LayerNorm'd inputs as the model feeds it
    (seed-size model: d_model 256, d_mlp 1024; gated MLPs parameter-matched)."""
    cfg = TransformerConfig(d_vocab=64, act_fn=act_fn, match_params=True, mlp_init=mlp_init)
    block = Transformer(cfg, seed=seed).blocks[0]
    x = torch.randn(1, 4096, cfg.d_model, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float(block.mlp(block.ln2(x)).var())


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_variance_matched_init_gives_every_mlp_relus_output_variance(name):
    relu = mlp_output_variance("relu", "standard")
    assert relu == pytest.approx(1.60, rel=0.03)  # d_mlp * E[relu(h)^2] * Xavier var, h ~ N(0, 2): 1024 * 1 * 2/1280
    assert mlp_output_variance(name, "variance_matched") == pytest.approx(relu, rel=0.05)


def test_without_variance_matching_relu2_starts_six_times_louder():
    ratio = mlp_output_variance("relu2", "standard") / mlp_output_variance("relu", "standard")
    assert ratio > 3 and ratio == pytest.approx(6.0, rel=0.05)  # E[relu(h)^4] / E[relu(h)^2] = 6 / 1


def test_variance_matching_changes_only_w_out():
    standard, matched = (Transformer(TransformerConfig(d_vocab=64, act_fn="relu2", mlp_init=init), seed=1)
                         for init in ("standard", "variance_matched"))
    different = [name for name, p in standard.state_dict().items() if not torch.equal(p, matched.state_dict()[name])]
    assert different == ["blocks.0.mlp.W_out", "blocks.1.mlp.W_out"]


def test_final_layer_norm_in_the_seed_preset(tiny_cfg):
    tokens = torch.randint(0, tiny_cfg.d_vocab, (2, 8))
    plain, normed = Transformer(tiny_cfg, seed=2), Transformer(replace(tiny_cfg, final_ln=True), seed=2)
    assert isinstance(plain.ln_final, torch.nn.Identity) and not isinstance(normed.ln_final, torch.nn.Identity)
    residual = normed.residual(tokens)  # normalised: zero mean, unit variance per position
    torch.testing.assert_close(residual.mean(-1), torch.zeros(2, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(residual.var(-1, unbiased=False), torch.ones(2, 8), atol=1e-3, rtol=0)
    assert TransformerConfig(preset="gpt2").final_ln and not TransformerConfig().final_ln
    assert replace(TransformerConfig(), preset="gpt2").final_ln  # GPT-2 always has one


def test_final_ln_flag_is_recorded_and_gpt2_refuses_its_removal(tiny_argv, tmp_path, capsys):
    assert train_simple.main(tiny_argv(None, "--final_ln", "--max_steps", "1")) == 0
    assert read_log(tmp_path / "out" / f"{RUN}.json")["model_config"]["final_ln"] is True
    assert train_simple.main(tiny_argv(tmp_path / "gpt2", "--preset", "gpt2", "--no-final_ln")) == 2
    assert "gpt2 preset has a final LayerNorm" in capsys.readouterr().err


def test_no_dropout_means_no_dropout_module_and_train_equals_eval(tiny_cfg):
    model = Transformer(tiny_cfg, seed=4)
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    tokens = torch.randint(0, tiny_cfg.d_vocab, (2, 8))
    assert torch.equal(model.train()(tokens), model.eval()(tokens))


@pytest.mark.parametrize("attn_impl", ["einsum", "sdpa"])
def test_dropout_acts_in_training_only(tiny_cfg, attn_impl):
    model = Transformer(replace(tiny_cfg, dropout=0.2, attn_impl=attn_impl), seed=4)
    # one on the embeddings, and per block one on the residual branches and one on the pattern
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 1 + 2 * tiny_cfg.n_layers
    tokens = torch.randint(0, tiny_cfg.d_vocab, (2, 8))
    evaluated = model.eval()(tokens)
    assert torch.equal(evaluated, model(tokens))
    assert not torch.allclose(model.train()(tokens), evaluated)


def test_a_resumed_run_with_dropout_equals_an_uninterrupted_one(tiny_argv, tmp_path):
    dropout = ("--dropout", "0.3")
    assert train_simple.main(tiny_argv(tmp_path / "stopped", *dropout, "--max_steps", "4", "--keep_optimizer")) == 0
    assert train_simple.main(tiny_argv(tmp_path / "stopped", *dropout, "--max_steps", "7", "--resume")) == 0
    assert train_simple.main(tiny_argv(tmp_path / "whole", *dropout, "--max_steps", "7")) == 0
    assert_same_run(tmp_path / "whole", tmp_path / "stopped")
    assert read_log(tmp_path / "whole" / f"{RUN}.json")["model_config"]["dropout"] == 0.3


def test_tied_embeddings_are_one_tensor_with_gradients_from_both_ends(tiny_cfg):
    untied, tied = Transformer(tiny_cfg, seed=5), Transformer(replace(tiny_cfg, tie_embeddings=True), seed=5)
    assert tied.unembed.W_U.data_ptr() == tied.embed.W_E.data_ptr() and "unembed.W_U" not in tied.state_dict()
    assert parameter_counts(untied)["total"] - parameter_counts(tied)["total"] == tiny_cfg.d_vocab * tiny_cfg.d_model
    tokens = torch.randint(0, tiny_cfg.d_vocab, (2, 8))
    targets = torch.randint(0, tiny_cfg.d_vocab, (2, 8))
    grads = []
    for fused in (True, False):
        tied.zero_grad()
        tied.nll_sum(tokens, targets, fused=fused).backward()
        grads.append(tied.embed.W_E.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)  # the fused loss reaches W_E too
    unused = sorted(set(range(tiny_cfg.d_vocab)) - set(tokens.flatten().tolist()))
    assert grads[0][unused].abs().sum() > 0  # rows of tokens never input still learn, through the unembedding


@pytest.mark.slow
def test_a_tied_run_exports_to_hugging_face_with_the_same_logits(tiny_argv, tmp_path):
    from transformers import AutoModelForCausalLM

    argv = tiny_argv(None, "--preset", "gpt2", "--tie_embeddings", "--max_steps", "3", "--export_hf", str(tmp_path / "hf"))
    argv[argv.index("--activation") + 1] = "gelu_tanh"
    assert train_simple.main(argv) == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf" / "gelu_tanh_seed3").eval()
    log = read_log(tmp_path / "out" / "gelu_tanh_seed3.json")
    cfg = TransformerConfig.from_dict(log["model_config"])
    ours = Transformer(cfg)
    ours.load_state_dict(final_weights(tmp_path / "out", "gelu_tanh_seed3"))
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    tokens = torch.randint(0, cfg.d_vocab, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, ours.eval()(tokens), atol=1e-5, rtol=0)


def test_several_weight_decays_make_one_run_each_named_by_weight_decay(tiny_argv, tmp_path):
    assert train_simple.main(tiny_argv(None, "--weight_decay", "0", "0.1", "--max_steps", "2")) == 0
    logs = {p.stem: read_log(p) for p in (tmp_path / "out").glob("*.json")}
    assert sorted(logs) == ["relu_wd0.1_seed3", "relu_wd0_seed3"]
    assert [logs[n]["train_config"]["weight_decay"] for n in sorted(logs)] == [0.1, 0.0]
    states = [final_weights(tmp_path / "out", n) for n in sorted(logs)]
    assert not torch.equal(states[0]["embed.W_E"], states[1]["embed.W_E"])  # the decay reached the optimizer


def test_warmup_as_a_fraction_of_the_run(tiny_argv, tmp_path):
    assert train_simple.main(tiny_argv(None, "--warmup", "0.5", "--max_steps", "4", "--lr", "1e-3")) == 0
    log = read_log(tmp_path / "out" / f"{RUN}.json")
    assert [s["lr"] for s in log["steps"]] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])  # 2 of 4 steps warm up
    assert log["train_config"]["warmup_steps"] == 0.5
    assert train_simple.learning_rate(25, 1.0, "constant", 0.05, 1000, 0.1) == pytest.approx(0.5)


def test_clipped_steps_are_counted_and_grad_clip_0_means_off(tiny_argv, tmp_path):
    runs = {"off": "0", "never reached": "1e9", "always": "1e-6"}
    for name, clip in runs.items():
        assert train_simple.main(tiny_argv(tmp_path / name, "--grad_clip", clip, "--max_steps", "4")) == 0
    fractions = {name: [e["clipped_fraction"] for e in read_log(tmp_path / name / f"{RUN}.json")["epochs"]]
                 for name in runs}
    assert fractions == {"off": [0.0], "never reached": [0.0], "always": [1.0]}
    states = {name: final_weights(tmp_path / name, RUN) for name in runs}
    assert all(torch.equal(states["off"][k], states["never reached"][k]) for k in states["off"])
    assert not torch.equal(states["off"]["embed.W_E"], states["always"]["embed.W_E"])
