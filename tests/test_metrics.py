"""Metrics are pure functions of sums; evaluation is a deterministic, token-weighted full pass."""

from __future__ import annotations

import math

import pytest
import torch

from data_utils import load_split_text, token_byte_lengths, tokenize_split
from metrics import Totals, bits_per_byte, metrics_of, perplexity, study_bits_per_byte
from training.evaluation import evaluate
from transformer_from_scratch import IGNORE_INDEX, Transformer, TransformerConfig


def test_metric_formulas():
    assert perplexity(math.log(50.0)) == pytest.approx(50.0)
    assert bits_per_byte(1000 * math.log(2), 500) == pytest.approx(2.0)
    assert study_bits_per_byte(4 * math.log(2)) == pytest.approx(1.0)


def test_empty_split_is_an_error():
    with pytest.raises(ValueError, match="no scored tokens"):
        metrics_of(Totals({"nll": 0.0, "tokens": 0, "bytes": 0, "seen_nll": 0.0, "seen_tokens": 0, "unseen_nll": 0.0}))


def test_evaluate_is_token_weighted_like_a_single_batch_and_deterministic(corpus_dir, tiny_tokenizer, tmp_path):
    split = tokenize_split(load_split_text(str(corpus_dir / "valid.txt")), tiny_tokenizer, "lines", 16, cache_dir=tmp_path)
    lengths = token_byte_lengths(tiny_tokenizer)
    model = Transformer(TransformerConfig(d_vocab=len(tiny_tokenizer), n_ctx=16, d_model=32, n_heads=2, d_mlp=64,
                                          n_layers=1, act_fn="relu"), seed=0)
    first = evaluate(model, split, lengths, batch_size=3, device=torch.device("cpu"))
    second = evaluate(model, split, lengths, batch_size=3, device=torch.device("cpu"))
    assert first == second
    inputs, targets = split.batch(torch.arange(len(split)))
    logits = model(inputs)
    mask = targets != IGNORE_INDEX
    nll = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="sum").item()
    assert first["tokens"] == int(mask.sum()) == split.info["tokens"]
    assert first["loss"] == pytest.approx(nll / first["tokens"], rel=1e-5)
    assert first["bpb"] == pytest.approx(nll / math.log(2) / split.info["bytes"], rel=1e-5)
    # the batches hold different numbers of targets, so a mean of batch means would be caught above
    per_target = torch.nn.functional.cross_entropy(logits.detach().transpose(1, 2), targets, reduction="none",
                                                   ignore_index=IGNORE_INDEX)
    batch_means = [per_target[i : i + 3].sum() / mask[i : i + 3].sum() for i in range(0, len(split), 3)]
    assert float(sum(batch_means) / len(batch_means)) != pytest.approx(first["loss"], rel=1e-4)
