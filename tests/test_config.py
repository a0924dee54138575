"""The config rejects impossible models with a message naming the field and the valid choices."""

from __future__ import annotations

import pytest

from transformer_from_scratch import TransformerConfig


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"d_model": 30, "n_heads": 4}, ["d_model=30", "n_heads=4"]),
        ({"act_fn": "tanhh"}, ["act_fn", "'relu'", "'swiglu'"]),
        ({"d_mlp": 0}, ["d_mlp", "positive"]),
        ({"n_layers": -1}, ["n_layers", "positive"]),
        ({"preset": "llama"}, ["preset", "'reference'", "'gpt2'"]),
        ({"attn_impl": "flash"}, ["attn_impl", "'einsum'", "'sdpa'"]),
    ],
)
def test_invalid_config_raises_with_helpful_message(kwargs, words):
    with pytest.raises(ValueError) as err:
        TransformerConfig(**kwargs)
    for word in words:
        assert word in str(err.value)


def test_config_is_frozen_and_derives_head_size():
    cfg = TransformerConfig()
    assert cfg.d_head == 64
    with pytest.raises(AttributeError):
        cfg.d_model = 512  # type: ignore[misc]


def test_matched_width_is_two_thirds_rounded_to_multiple_of_8():
    assert TransformerConfig(act_fn="swiglu", match_params=True).d_hidden == 680
    assert TransformerConfig(act_fn="swiglu").d_hidden == 1024
    assert TransformerConfig(act_fn="relu", match_params=True).d_hidden == 1024  # ungated: unchanged
