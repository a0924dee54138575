"""A run's data: the three splits tokenized (each split's role: train, selection, report), the
n-gram models on exactly their tokens with the trigram's per-target losses, which types the
training split has as targets, and the fixed subsets evaluated during training."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors.numpy
import torch
from torch import Tensor

from ngrams import NGRAMS_VERSION, NgramScores, ngram_losses, target_counts, unigram_log_probs
from data_utils import DataError, TokenizedSplit, article_fraction, default_cache_dir, load_split_text, load_tokenizer, \
    sha256_bytes, token_byte_lengths, tokenize_split, tokenizer_fingerprint
from run_log import WriteError, atomic_write
from transformer_from_scratch import derived_generator


@dataclass
class Data:
    train: TokenizedSplit
    val: TokenizedSplit
    test: TokenizedSplit | None
    byte_lengths: Tensor
    tokenizer: object  # a transformers tokenizer: decodes the text samples
    tokenizer_sha256: str
    test_skipped: str | None = None  # why no test split is evaluated, when one was asked for
    during_training: dict = field(default_factory=dict)  # role -> the (sub)split evaluated during training
    ngrams: dict = field(default_factory=dict)  # n-gram models on these splits (ngrams.py)
    train_counts: Tensor | None = None  # how often each type is a training target (float64, d_vocab)

    @property
    def seen_types(self) -> Tensor:
        """The types that occur as training targets: evaluations split their loss by these."""
        return self.train_counts > 0

    def log_unigram(self) -> Tensor:
        """log p(w) of the unigram model (its add-k chosen on the selection split): the output
        bias's starting point under unembed_bias "log_unigram"."""
        k = self.ngrams["unigram"]["add_k"]
        return torch.from_numpy(unigram_log_probs(self.train_counts.numpy(), k)).float()

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def roles(self) -> dict[str, TokenizedSplit | None]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def describe(self, data_flags: dict) -> dict:
        return {**data_flags, "tokenizer": self.tokenizer.name_or_path, "tokenizer_sha256": self.tokenizer_sha256,
                **{role: split.info if split is not None else None for role, split in self.roles.items()},
                "test_skipped": self.test_skipped, "ngrams": self.ngrams,
                "evaluated_during_training": {role: {k: split.info[k] for k in ("sequences", "tokens")}
                                              for role, split in self.during_training.items()}}

    def identity(self) -> dict[str, str | None]:
        """What a checkpoint must have been trained on to be resumed with this data."""
        return {"tokenizer": self.tokenizer_sha256,
                **{role: split.info["sha256"] if split is not None else None for role, split in self.roles.items()}}


def load_data(args: argparse.Namespace) -> Data:
    """The three splits, tokenized. Splits are the same when their contents are (sha256), whatever
    their names: a validation split equal to the training data is refused, and such a test split is
    skipped, with the reason in the log, because its numbers would be training loss."""
    tokenizer = load_tokenizer(args.tokenizer)
    byte_lengths = token_byte_lengths(tokenizer)
    train_text = article_fraction(load_split_text(args.train_split, args.data_dir), args.train_fraction)
    val_text = load_split_text(args.val_split, args.data_dir)
    if val_text.sha256 == train_text.sha256:
        raise DataError(f"validation split {args.val_split!r} has the same contents as train split {args.train_split!r} "
                        f"(sha256 {val_text.sha256[:12]}): nothing would be held out")
    test_text, test_skipped = None, None
    if args.test_split.lower() != "none":
        test_text = load_split_text(args.test_split, args.data_dir)
        same_as = [role for role, text in (("train", train_text), ("validation", val_text))
                   if text.sha256 == test_text.sha256]
        if same_as:
            test_skipped = (f"test split {args.test_split!r} has the same contents as the {same_as[0]} split "
                            f"(sha256 {test_text.sha256[:12]}), so it is not evaluated")
            print(f"note: {test_skipped}", file=sys.stderr)
            test_text = None

    def tokenized(text) -> TokenizedSplit:
        return tokenize_split(text, tokenizer, args.layout, args.max_length, byte_lengths, args.cache_dir)

    data = Data(tokenized(train_text), tokenized(val_text), tokenized(test_text) if test_text else None,
                byte_lengths, tokenizer, tokenizer_fingerprint(tokenizer), test_skipped)
    for role, split in (("train", data.train), ("validation", data.val)):
        if split.info["tokens"] == 0:
            raise DataError(f"the {role} split {split.info['split']!r} has no scored tokens (every sequence is a "
                            f"single token)")
    ngrams = cached_ngrams(data, args.cache_dir)
    data.ngrams = ngrams.losses
    for role, split in (("val", data.val), ("test", data.test)):
        if split is not None:  # the trigram's per-target NLL, for interpolating the model with it
            split.reference_nll = torch.from_numpy(ngrams.token_nll[role])
    data.train_counts = torch.from_numpy(target_counts(data.train.tokens.numpy(), data.train.lengths.numpy(),
                                                       data.vocab_size))
    data.during_training = {role: evaluation_subset(split, args.eval_tokens) for role, split in
                            (("val", data.val), ("test", data.test)) if split is not None}
    return data


def evaluation_subset(split: TokenizedSplit, n_tokens: int | None) -> TokenizedSplit:
    """The split, or a fixed subset of its sequences with about ``n_tokens`` scored tokens: a prefix
    of one permutation that depends on nothing but the split's size, so every run evaluates the same
    sequences, spread over the whole split."""
    if n_tokens is None:
        return split
    order = torch.randperm(len(split), generator=derived_generator(0, "evaluation subset"))
    scored = torch.clamp(split.lengths[order] - 1, min=0).cumsum(0)
    chosen = order[: int(torch.searchsorted(scored, n_tokens)) + 1].sort().values
    subset = split.subset(chosen)
    subset.info |= {"sequences": len(subset), "tokens": int(scored[len(chosen) - 1])}
    return subset


def cached_ngrams(data: Data, cache_dir: Path | None) -> NgramScores:
    """The n-gram models of these splits, computed once per data identity (seconds) and cached:
    their losses as JSON, the trigram's per-target NLL beside them as safetensors (numbers only)."""
    evaluated = {role: split for role, split in (("val", data.val), ("test", data.test)) if split is not None}
    identity = {"version": NGRAMS_VERSION, "tokenizer": data.tokenizer_sha256, "vocab": data.vocab_size,
                **{role: {k: split.info[k] for k in ("sha256", "layout", "max_length")}
                   for role, split in (("train", data.train), *evaluated.items())}}
    key = sha256_bytes(json.dumps(identity, sort_keys=True).encode())[:32]
    path = (cache_dir or default_cache_dir()) / f"ngrams-{key}.json"
    nll_path = path.with_suffix(".safetensors")
    try:
        cached = json.loads(path.read_text())
        token_nll = safetensors.numpy.load(nll_path.read_bytes())
        if (isinstance(cached, dict) and cached.get("identity") == identity and set(token_nll) == set(evaluated)
                and all(token_nll[role].shape == split.tokens.shape for role, split in evaluated.items())):
            return NgramScores(cached["ngrams"], token_nll)
    except Exception:  # noqa: BLE001 - missing, damaged or foreign: any of these is computed again
        pass
    as_arrays = {role: (split.tokens.numpy(), split.lengths.numpy(), split.info["bytes"])
                 for role, split in evaluated.items()}
    computed = ngram_losses((data.train.tokens.numpy(), data.train.lengths.numpy()), as_arrays, data.vocab_size, "val")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(nll_path, safetensors.numpy.save({role: np.ascontiguousarray(nll)
                                                       for role, nll in computed.token_nll.items()}))
        atomic_write(path, json.dumps({"identity": identity, "ngrams": computed.losses}).encode())
    except (OSError, WriteError) as err:
        print(f"warning: could not cache the n-gram models: {err}", file=sys.stderr)
    return computed
