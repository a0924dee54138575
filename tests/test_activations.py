"""Every registered activation: equals its PyTorch reference, and fits the MLP with the right shape."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from transformer_from_scratch import ACTIVATIONS, MLP, TransformerConfig, activation_names, canonical_activation

GRID = torch.linspace(-8, 8, 2001, dtype=torch.float64)

REFERENCE = {
    "relu": torch.relu,
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / 2**0.5)),
    "gelu_tanh": lambda x: 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3))),
    "silu": lambda x: x * torch.sigmoid(x),
    "relu2": lambda x: torch.relu(x) ** 2,
    "leaky_relu2": lambda x: torch.where(x > 0, x, 0.5 * x) ** 2,
    "glu": torch.sigmoid,
    "bilinear": lambda x: x,
    "reglu": torch.relu,
    "geglu": lambda x: 0.5 * x * (1 + torch.erf(x / 2**0.5)),
    "swiglu": lambda x: x * torch.sigmoid(x),
}


def test_every_activation_has_a_reference():
    assert set(REFERENCE) == set(ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_reference(name):
    torch.testing.assert_close(ACTIVATIONS[name].fn(GRID), REFERENCE[name](GRID), atol=1e-6, rtol=0)


def test_names_shared_with_hugging_face_mean_the_same_function():
    from transformers.activations import ACT2FN

    for ours, theirs in [("relu", "relu"), ("gelu", "gelu"), ("gelu_tanh", "gelu_new"), ("silu", "silu"),
                         ("swish", "swish"), ("relu2", "relu2"), ("gelu_new", "gelu_new")]:
        x = GRID.float()
        torch.testing.assert_close(ACTIVATIONS[canonical_activation(ours)].fn(x), ACT2FN[theirs](x), atol=1e-6, rtol=0)


def test_gated_family_is_exactly_the_glu_variants():
    assert {n for n, a in ACTIVATIONS.items() if a.gated} == {"glu", "bilinear", "reglu", "geglu", "swiglu"}


def test_unknown_activation_lists_every_name():
    with pytest.raises(ValueError) as err:
        canonical_activation("tanhh")
    for name in activation_names():
        assert repr(name) in str(err.value)


@pytest.mark.parametrize("name", activation_names())
def test_mlp_keeps_residual_shape(name, tiny_cfg):
    x = torch.randn(2, 5, tiny_cfg.d_model)
    mlp = MLP(replace(tiny_cfg, act_fn=name))
    for p in mlp.parameters():
        torch.nn.init.normal_(p, std=0.1)
    out = mlp(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["glu", "bilinear", "reglu", "geglu", "swiglu"])
def test_gated_mlp_is_its_equation(name, tiny_cfg):
    mlp = MLP(replace(tiny_cfg, act_fn=name))
    for p in mlp.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(3, 4, tiny_cfg.d_model)
    act = REFERENCE[name]
    expected = (act(x @ mlp.W_gate + mlp.b_gate) * (x @ mlp.W_in + mlp.b_in)) @ mlp.W_out + mlp.b_out
    torch.testing.assert_close(mlp(x), expected, atol=1e-5, rtol=1e-5)


def test_aliases_resolve_to_one_canonical_name():
    assert TransformerConfig(act_fn="swish").act_fn == "silu"
    assert TransformerConfig(act_fn="gelu_new").act_fn == "gelu_tanh"
