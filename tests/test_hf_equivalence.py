"""The gpt2 preset against Hugging Face's GPT2LMHeadModel, through the converter in both directions."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import final_weights
from transformer_from_scratch import Transformer, TransformerConfig, from_hf_gpt2, to_hf_gpt2
from transformer_from_scratch.hf import HF_ACTIVATION_NAMES

# Measured: the faithful conversion differs from HF by at most 1.7e-6 in these logits (|logit| < 3,
# fp32). gelu and gelu_tanh, the closest pair of activations, differ by 6.6e-4 here. 5e-6 lies 3x
# above the one and 130x below the other.
ATOL = 5e-6
VOCAB, N_CTX = 211, 24


def hf_gpt2(activation: str, seed: int = 0):
    """A tiny HF GPT-2 whose MLP pre-activations reach |x| > 4, where the GELU forms differ (at
    GPT-2's init scale they stay below 0.6, and a gelu / gelu_tanh mix-up would pass unseen)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=VOCAB, n_positions=N_CTX, n_embd=48, n_layer=2, n_head=4, n_inner=96,
        activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        attn_implementation="eager", bos_token_id=None, eos_token_id=None,
    )).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if ".ln_" in name:
                p.normal_(std=0.1).add_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.normal_(std=0.15 if "mlp.c_fc.weight" in name else 0.1)
    return hf


def logits_and_largest_pre_activation(model: Transformer, tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
    largest = []
    hooks = [b.mlp.hook_pre.register_forward_hook(lambda _m, _i, out: largest.append(out.abs().max().item()))
             for b in model.blocks]
    with torch.no_grad():
        logits = model(tokens)
    for hook in hooks:
        hook.remove()
    return logits, max(largest)


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, N_CTX), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("hf_activation", ["relu", "gelu", "gelu_new", "silu", "relu2"])
@pytest.mark.parametrize("attn_impl", ["einsum", "sdpa"])
def test_converted_gpt2_computes_the_same_logits_and_loss(hf_activation, attn_impl, tokens):
    hf = hf_gpt2(hf_activation)
    converted = from_hf_gpt2(hf)
    ours = Transformer(replace(converted.cfg, attn_impl=attn_impl)).eval()
    ours.load_state_dict(converted.state_dict())
    logits, largest = logits_and_largest_pre_activation(ours, tokens)
    assert largest > 3  # the region where the activations under test differ
    with torch.no_grad():
        hf_out = hf(input_ids=tokens, labels=tokens)
        loss = ours.nll_sum(tokens[:, :-1], tokens[:, 1:]) / tokens[:, 1:].numel()
    torch.testing.assert_close(logits, hf_out.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(loss, hf_out.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(to_hf_gpt2(ours)(tokens).logits, hf_out.logits, atol=ATOL, rtol=0)


@pytest.mark.parametrize("hf_activation, wrong", [("gelu", "gelu_tanh"), ("gelu_new", "gelu"), ("silu", "gelu")])
def test_the_equivalence_test_catches_a_neighbouring_activation(hf_activation, wrong, tokens):
    # A test of the test: a model right in every weight but one activation off must fail ATOL.
    hf = hf_gpt2(hf_activation)
    mistaken = Transformer(replace(from_hf_gpt2(hf).cfg, act_fn=wrong)).eval()
    mistaken.load_state_dict(from_hf_gpt2(hf).state_dict())
    logits, _ = logits_and_largest_pre_activation(mistaken, tokens)
    with torch.no_grad():
        gap = (logits - hf(tokens).logits).abs().max().item()
    assert gap > 100 * ATOL


def test_ours_to_hf_to_ours_gives_identical_tensors():
    ours = Transformer(TransformerConfig(d_vocab=VOCAB, n_ctx=N_CTX, d_model=48, n_heads=4, d_mlp=96, n_layers=3,
                                         act_fn="gelu_tanh", preset="gpt2"), seed=5)
    with torch.no_grad():  # constants (LayerNorms, biases) would hide a swapped weight and bias
        for p in ours.parameters():
            p.normal_()
    again = from_hf_gpt2(to_hf_gpt2(ours))
    assert again.cfg == ours.cfg
    state, state_again = ours.state_dict(), again.state_dict()
    assert state.keys() == state_again.keys()
    assert all(torch.equal(state[k], state_again[k]) for k in state)


def test_hf_to_ours_to_hf_gives_equal_logits(tokens):
    hf = hf_gpt2("gelu_new")
    again = to_hf_gpt2(from_hf_gpt2(hf))
    assert again.config.activation_function == "gelu_new" and not again.config.tie_word_embeddings
    again.set_attn_implementation(hf.config._attn_implementation)  # the same kernel, so equal to the bit
    with torch.no_grad():
        torch.testing.assert_close(again(tokens).logits, hf(tokens).logits, atol=0, rtol=0)


@pytest.mark.parametrize("ours, hf", sorted(HF_ACTIVATION_NAMES.items()))
def test_activation_names_map_to_the_same_function(ours, hf):
    from transformers.activations import ACT2FN

    from transformer_from_scratch import ACTIVATIONS

    x = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(ACTIVATIONS[ours].fn(x), ACT2FN[hf](x), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "change, reason",
    [({"preset": "reference"}, "no final LayerNorm"), ({"act_fn": "swiglu"}, "gated MLP"), ({"act_fn": "glu"}, "gated MLP")],
)
def test_what_gpt2_cannot_express_is_a_value_error_saying_why(change, reason):
    cfg = TransformerConfig(d_vocab=VOCAB, n_ctx=N_CTX, d_model=48, n_heads=4, d_mlp=96, n_layers=1, preset="gpt2")
    with pytest.raises(ValueError, match=reason):
        to_hf_gpt2(Transformer(replace(cfg, **change)))


@pytest.mark.slow
def test_a_trained_gpt2_run_exports_and_loads_with_auto_classes(tiny_argv, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import train_simple

    export = tmp_path / "hf"
    argv = tiny_argv(None, "--preset", "gpt2", "--max_steps", "3", "--export_hf", str(export))
    argv[argv.index("--activation") + 1] = "gelu_tanh"
    assert train_simple.main(argv) == 0
    folder = export / "gelu_tanh_seed3"
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    trained = final_weights(tmp_path / "out", "gelu_tanh_seed3")
    ours = from_hf_gpt2(hf)
    assert all(torch.equal(trained[k], v) for k, v in ours.state_dict().items())  # the trained weights
    tokens = torch.tensor([tokenizer.encode(" The café")])
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, ours.eval()(tokens), atol=ATOL, rtol=0)
        generated = hf.generate(tokens, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert generated.shape == (1, tokens.shape[1] + 4)


@pytest.mark.slow
def test_export_of_a_model_gpt2_cannot_hold_is_refused_before_training(tiny_argv, tmp_path):
    from conftest import run_cli

    result = run_cli(tiny_argv(None, "--export_hf", str(tmp_path / "hf")))  # reference preset
    assert result.returncode == 2 and "no final LayerNorm" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "relu_seed3.json").exists()
