"""The small-data tools: where the loss goes (seen and unseen target types), the interpolation with
the Kneser-Ney trigram, the output bias, word-type and unembedding dropout, early stopping, and
shapes other than the seed's."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train_simple
from ngrams import MODIFIED_KN_ORDERS, ngram_losses, strongest_ngram, unigram_log_probs
from conftest import CORPUS_LINES, GPT2_TOKENIZER_DIR, WIKITEXT_DIR, final_weights, needs_shared_data, read_log, \
    train_here
from data_utils import TokenizedSplit, load_split_text, token_byte_lengths, tokenize_split
from metrics import INTERPOLATION_STEPS
from training.data import evaluation_subset
from training.evaluation import evaluate, interpolated_nll, split_metrics
from training.flags import Execution, Sources
from training.settings import build_parser
from training.state import parameter_groups_for_decay
from transformer_from_scratch import (IGNORE_INDEX, Transformer, TransformerConfig, linear_cross_entropy,
                                      parameter_counts, training_flops_per_token)

CPU = torch.device("cpu")
RUN = "relu_seed3"


# ---------------------------------------------------------------------------------------------
# Where the loss goes


def test_ngrams_split_their_loss_by_seen_and_unseen_target_types():
    # training targets (positions >= 1) are the types 1, 2, 3 and 7; type 4 is only ever a first token
    train = (np.array([[4, 1, 2, 3], [4, 2, 1, 3], [4, 7, 3, 1]]), np.array([4, 4, 4]))
    val = (np.array([[1, 2, 5, 3, 6]]), np.array([5]), 20)  # targets 2, 5, 3, 6: 5 and 6 unseen
    out = ngram_losses(train, {"val": val}, 8, "val")
    unigram = out.losses["unigram"]["val"]
    log_p = unigram_log_probs(np.bincount([1, 2, 3, 2, 1, 3, 7, 3, 1], minlength=8).astype(float),
                              out.losses["unigram"]["add_k"])
    assert unigram["loss_seen"] == pytest.approx(-(log_p[2] + log_p[3]) / 2)
    assert unigram["loss_unseen"] == pytest.approx(-(log_p[5] + log_p[6]) / 2)
    for name in ("unigram", "bigram_kn", "trigram_kn", *MODIFIED_KN_ORDERS):
        scores = out.losses[name]["val"]
        assert scores["unseen_fraction"] == 0.5
        # the two parts add back up to the plain loss, to float64 rounding
        assert (scores["loss_seen"] + scores["loss_unseen"]) / 2 == pytest.approx(scores["loss"], rel=1e-12)
    ngram = out.token_nll["val"]  # the strongest's, at each target's place; nothing scored at position 0
    assert np.isnan(ngram[0, 0]) and np.isfinite(ngram[0, 1:]).all()
    assert ngram[0, 1:].mean() == pytest.approx(out.losses[strongest_ngram(out.losses)]["val"]["loss"], rel=1e-12)


@pytest.fixture
def tiny_split(corpus_dir, tiny_tokenizer, tmp_path):
    split = tokenize_split(load_split_text(str(corpus_dir / "valid.txt")), tiny_tokenizer, "lines", 16, cache_dir=tmp_path)
    model = Transformer(TransformerConfig(d_vocab=len(tiny_tokenizer), n_ctx=16, d_model=32, n_heads=2, d_mlp=64,
                                          n_layers=1, act_fn="relu"), seed=0)
    return split, model, token_byte_lengths(tiny_tokenizer)


def test_evaluation_splits_the_loss_by_seen_types_and_the_parts_add_back_up(tiny_split):
    split, model, byte_lengths = tiny_split
    targets = split.scored_targets()
    seen_types = torch.zeros(model.cfg.d_vocab, dtype=torch.bool)
    seen_types[targets.unique()[::2]] = True  # every other type that occurs: both parts well filled
    out = evaluate(model, split, byte_lengths, batch_size=3, device=CPU, seen_types=seen_types)
    inputs, all_targets = split.batch(torch.arange(len(split)))
    mask = all_targets != IGNORE_INDEX
    nll = F.cross_entropy(model(inputs)[mask], all_targets[mask], reduction="none").double()
    seen = seen_types[all_targets[mask]]
    assert out["loss_seen"] == pytest.approx(nll[seen].mean().item(), rel=1e-6)
    assert out["loss_unseen"] == pytest.approx(nll[~seen].mean().item(), rel=1e-6)
    assert out["unseen_fraction"] == pytest.approx((~seen).double().mean().item(), abs=1e-12)
    # the parts sum back to the plain loss: fp32 batch sums against float64 parts, measured ~1e-8
    parts = out["loss_seen"] * (1 - out["unseen_fraction"]) + out["loss_unseen"] * out["unseen_fraction"]
    assert parts == pytest.approx(out["loss"], rel=1e-6)


def test_the_fused_per_token_losses_sum_to_the_training_loss_bit_for_bit(tiny_split):
    """Evaluation sums the per-token losses; it must give exactly the number it gave before."""
    split, model, _ = tiny_split
    inputs, targets = split.batch(torch.arange(len(split)))
    with torch.no_grad():
        assert model.token_nll(inputs, targets).sum().item() == model.nll_sum(inputs, targets).item()
    torch.testing.assert_close(model.token_nll(inputs, targets), model.token_nll(inputs, targets, fused=False))


# ---------------------------------------------------------------------------------------------
# Interpolation with the trigram


def test_interpolation_is_the_model_at_weight_1_and_the_trigram_at_0():
    model_nll, trigram_nll = torch.tensor([0.5, 3.0, 9.0]), torch.tensor([2.0, 1.0, 20.0], dtype=torch.float64)
    weights = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    mixed = interpolated_nll(model_nll, trigram_nll, weights)
    assert mixed[2].item() == model_nll.double().sum().item() and mixed[0].item() == trigram_nll.sum().item()
    by_hand = -sum(math.log(0.25 * math.exp(-m) + 0.75 * math.exp(-t)) for m, t in zip([0.5, 3.0, 9.0], [2, 1, 20]))
    assert mixed[1].item() == pytest.approx(by_hand, rel=1e-12)


def with_reference(split: TokenizedSplit, nll_per_token: float) -> TokenizedSplit:
    """The split with a stand-in 'trigram' that gives every target the same NLL."""
    return TokenizedSplit(split.tokens, split.lengths, split.info, torch.full(split.tokens.shape, nll_per_token,
                                                                              dtype=torch.float64))


def test_the_report_split_takes_the_weight_the_selection_split_chose(tiny_split):
    split, model, byte_lengths = tiny_split
    useless, perfect = with_reference(split, 50.0), with_reference(split, 1e-6)
    selection = evaluate(model, useless, byte_lengths, 4, CPU)  # the 'trigram' is useless: all weight on the model
    assert selection["interp_weight"] == 1.0 and selection["interp_gain"] > 0
    alone = evaluate(model, perfect, byte_lengths, 4, CPU)  # chosen on itself, it would take the 'trigram'
    assert alone["interp_weight"] < 0.05
    reported = evaluate(model, perfect, byte_lengths, 4, CPU, interp_weight=selection["interp_weight"])
    assert reported["interp_weight"] == 1.0
    assert reported["interp_loss"] == pytest.approx(reported["loss"], rel=1e-6)  # weight 1: the model itself
    assert reported["ngram_loss"] == pytest.approx(1e-6) and reported["interp_gain"] < 0
    half = evaluate(model, perfect, byte_lengths, 4, CPU, interp_weight=0.5)
    assert half["interp_weight"] == 0.5 and INTERPOLATION_STEPS == 100


# ---------------------------------------------------------------------------------------------
# A tiny run on local files that exercises all of it


@pytest.fixture
def three_splits(corpus_dir):
    """A report split besides the selection split: the training lines in another order (its own file)."""
    test = corpus_dir / "report.txt"
    test.write_text("".join(CORPUS_LINES[2:] * 2), encoding="utf-8")
    return ["--test_split", str(test)]


def test_a_run_records_where_its_loss_goes_and_its_gain_over_the_strongest_ngram(tiny_argv, three_splits, tmp_path):
    argv = [a for a in tiny_argv(None, "--eval_every", "3") if a not in ("--test_split", "none")]
    assert train_simple.main(argv + three_splits) == 0
    log = read_log(tmp_path / "out" / f"{RUN}.json")
    ngrams = log["data"]["ngrams"]
    strongest = strongest_ngram(ngrams)  # the modified KN order with the lowest selection loss
    assert strongest == min(MODIFIED_KN_ORDERS, key=lambda name: ngrams[name]["val"]["loss"])
    for role in ("val", "test"):
        strongest_scores = ngrams[strongest][role]
        assert {"loss_seen", "loss_unseen", "unseen_fraction"} <= set(strongest_scores)
        final = log["final"][role]
        assert final["ngram_loss"] == pytest.approx(strongest_scores["loss"], rel=1e-9)  # the same targets
        assert final["interp_gain"] == pytest.approx(final["ngram_loss"] - final["interp_loss"])
    # every evaluation reports its interpolation with the weight the selection split chose
    for entry in log["evals"] + log["epochs"]:
        assert entry["test_interp_weight"] == entry["val_interp_weight"]
    assert log["final"]["test"]["interp_weight"] == log["final"]["val"]["interp_weight"]


def test_the_training_script_hands_the_selection_splits_weight_to_the_report_split(tiny_argv, three_splits):
    """train_simple's evaluation of both splits, with stand-in trigrams that pull the weight apart:
    useless on the selection split (it chooses the model alone), perfect on the report split."""
    from training.distributed import Distributed
    from training.signals import StopSignal

    args = build_parser().parse_args([a for a in tiny_argv() if a not in ("--test_split", "none")] + three_splits)
    data = train_simple.load_data(args)
    data.val, data.test = with_reference(data.val, 50.0), with_reference(data.test, 1e-6)
    spec = train_simple.run_specs(build_parser(), args)[0]
    rt = train_simple.Runtime(CPU, Distributed(), StopSignal(), Sources(), Execution(eval_batch_size=8),
                              {"git_commit": None, "git_dirty": None})
    state = train_simple.fresh_state(spec, data, rt)
    val, test = train_simple.evaluate_splits(spec, state, data, rt, whole=True)
    assert val["interp_weight"] == test["interp_weight"] == 1.0
    assert split_metrics(spec, state, data, rt, data.test)["interp_weight"] < 0.05  # its own choice


# ---------------------------------------------------------------------------------------------
# The output bias


def test_fused_loss_with_an_output_bias_matches_the_textbook_loss_and_gradients():
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    W = torch.randn(16, 53, dtype=torch.float64, requires_grad=True)
    b = torch.randn(53, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 53, (37,))
    (linear_cross_entropy(h, W, t, vocab_tile=8, b_U=b) * 0.7).backward()
    grads = [x.grad.clone() for x in (h, W, b)]
    for x in (h, W, b):
        x.grad = None
    (F.cross_entropy(h @ W + b, t, reduction="sum") * 0.7).backward()
    torch.testing.assert_close(grads, [h.grad, W.grad, b.grad])


def test_the_output_bias_is_counted_as_vocabulary_and_never_weight_decayed(tiny_cfg):
    plain, biased = Transformer(tiny_cfg), Transformer(replace(tiny_cfg, unembed_bias="log_unigram"))
    assert parameter_counts(biased)["total"] - parameter_counts(plain)["total"] == tiny_cfg.d_vocab
    assert parameter_counts(biased)["non_embedding"] == parameter_counts(plain)["non_embedding"]
    groups = parameter_groups_for_decay(biased)
    assert groups[1] == {"params": [biased.unembed.b_U], "weight_decay": 0.0}
    assert sum(len(g["params"]) for g in groups) == len(list(biased.parameters()))


@pytest.mark.slow
@needs_shared_data
def test_the_output_bias_starts_the_model_at_the_unigram_models_loss(tmp_path):
    args = build_parser().parse_args([
        "--data_dir", str(WIKITEXT_DIR), "--tokenizer", str(GPT2_TOKENIZER_DIR), "--train_split", "test",
        "--val_split", "validation:A", "--test_split", "none", "--layout", "packed", "--cache_dir", str(tmp_path)])
    data = train_simple.load_data(args)
    subset = evaluation_subset(data.val, 6000)
    targets = subset.scored_targets()
    unigram = -unigram_log_probs(data.train_counts.numpy(), data.ngrams["unigram"]["add_k"])[targets.numpy()].mean()
    losses = {}
    for bias, final_ln in (("none", True), ("log_unigram", True), ("log_unigram", False)):  # seed-size models
        model = Transformer(TransformerConfig(unembed_bias=bias, final_ln=final_ln), seed=1)
        if bias != "none":
            model.init_unembed_bias(data.log_unigram())
        losses[bias, final_ln] = evaluate(model, subset, data.byte_lengths, 32, CPU)["loss"]
    # measured 0.048 above the unigram with a final LayerNorm (the residual's random logits, std ~0.3,
    # cost var / 2); without one the residual is larger at init (std ~0.5): 0.158
    assert 0 < losses["log_unigram", True] - unigram < 0.1
    assert 0 < losses["log_unigram", False] - unigram < 0.2
    assert abs(losses["none", True] - math.log(50257)) < 0.1  # without the bias: ln d_vocab, 3 nats above


def test_a_model_with_an_output_bias_is_refused_for_hugging_face_export_in_one_line(tiny_argv, tmp_path, capsys):
    code, err = train_here(capsys, tiny_argv(None, "--preset", "gpt2", "--unembed_bias", "log_unigram",
                                             "--export_hf", str(tmp_path / "hf")))
    assert code == 2 and "lm_head has none" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out" / f"{RUN}.json").exists()


# ---------------------------------------------------------------------------------------------
# Dropout for small data


def test_word_type_dropout_drops_whole_types_and_only_while_training(tiny_cfg):
    model = Transformer(replace(tiny_cfg, word_type_dropout=0.5), seed=0)
    tokens = torch.tensor([[3, 5, 3, 7, 5, 3, 9, 9]])
    embed = model.embed
    torch.manual_seed(0)
    dropped = embed(tokens)
    plain = F.embedding(tokens, embed.W_E)
    for token in tokens.unique():
        at = tokens[0] == token
        rows = dropped[0, at]
        # every occurrence of a type is dropped together or kept together, and kept rows are scaled by 2
        assert (rows == 0).all() or torch.equal(rows, plain[0, at] * 2)
    model.eval()
    assert torch.equal(embed(tokens), plain)


def test_no_word_type_dropout_draws_no_random_numbers(tiny_cfg):
    """At rate 0 the training forward is today's: the same numbers and the generator untouched."""
    model = Transformer(tiny_cfg, seed=0)
    tokens = torch.randint(0, tiny_cfg.d_vocab, (2, 8))
    state = torch.get_rng_state()
    train_logits = model(tokens)
    assert torch.equal(torch.get_rng_state(), state)
    model.eval()
    assert torch.equal(model(tokens), train_logits)


def test_unembedding_dropout_acts_on_the_residual_the_unembedding_reads(tiny_cfg):
    model = Transformer(replace(tiny_cfg, unembed_dropout=0.5), seed=0)
    tokens = torch.randint(0, tiny_cfg.d_vocab, (2, 8))
    resid = model.residual(tokens)
    assert (resid == 0).float().mean() > 0.3  # about half the features zeroed
    model.eval()
    assert (model.residual(tokens) != 0).all()


@pytest.mark.slow
def test_a_resumed_run_with_small_data_dropout_equals_an_uninterrupted_one(tiny_argv, tmp_path):
    from conftest import assert_same_run

    extra = ("--word_type_dropout", "0.2", "--unembed_dropout", "0.3", "--unembed_bias", "log_unigram")
    assert train_simple.main(tiny_argv(tmp_path / "stopped", *extra, "--max_steps", "4", "--keep_optimizer")) == 0
    assert train_simple.main(tiny_argv(tmp_path / "stopped", *extra, "--max_steps", "7", "--resume")) == 0
    assert train_simple.main(tiny_argv(tmp_path / "whole", *extra, "--max_steps", "7")) == 0
    assert_same_run(tmp_path / "whole", tmp_path / "stopped")
    cfg = read_log(tmp_path / "whole" / f"{RUN}.json")["model_config"]
    assert (cfg["word_type_dropout"], cfg["unembed_dropout"], cfg["unembed_bias"]) == (0.2, 0.3, "log_unigram")
    # the bias started at the log unigram (7 steps at lr 3e-4 move it by at most ~2e-3)
    data = train_simple.load_data(build_parser().parse_args(tiny_argv(tmp_path / "whole", *extra)))
    torch.testing.assert_close(final_weights(tmp_path / "whole")["unembed.b_U"], data.log_unigram(), atol=3e-3, rtol=0)


# ---------------------------------------------------------------------------------------------
# Early stopping


def overfitting_argv(tiny_argv, corpus_dir, *extra: str) -> list[str]:
    """Train on one repeated line, select on other text, evaluate after every step at a high lr: the
    selection loss falls for a few steps, then rises as the line is memorised."""
    train = corpus_dir / "one_line.txt"
    train.write_text(CORPUS_LINES[6] * 8, encoding="utf-8")
    argv = tiny_argv(None, "--eval_every", "1", "--lr", "3e-2", "--num_epochs", "20", *extra)
    argv[argv.index("--train_split") + 1] = str(train)
    return argv


def first_stop(val_losses: list[float], patience: int) -> int:
    """The index of the evaluation at which ``patience`` evaluations in a row have not improved."""
    best, since = math.inf, 0
    for i, loss in enumerate(val_losses):
        best, since = (loss, 0) if loss < best else (best, since + 1)
        if since >= patience:
            return i
    raise AssertionError("never stopped")


@pytest.mark.parametrize("keep", ["best", "last"])
def test_early_stopping_stops_at_the_first_evaluation_past_the_patience(tiny_argv, corpus_dir, tmp_path, keep):
    argv = overfitting_argv(tiny_argv, corpus_dir, "--patience", "3", "--keep", keep)
    assert train_simple.main(argv) == 0
    log = read_log(tmp_path / "out" / f"{RUN}.json")
    evals = log["evals"] + [e for e in log["epochs"] if e["steps"] not in {x["step"] for x in log["evals"]}]
    evals = sorted(({"step": e.get("step", e.get("steps")), "val_loss": e["val_loss"]} for e in evals),
                   key=lambda e: e["step"])
    stop = first_stop([e["val_loss"] for e in evals], 3)
    best = min(evals[: stop + 1], key=lambda e: e["val_loss"])
    assert log["status"] == "complete" and log["progress"]["step"] == evals[stop]["step"] < 20
    assert log["stopped_early"] == {"step": evals[stop]["step"], "patience": 3, "best_step": best["step"],
                                    "best_val_loss": best["val_loss"]}
    assert log["final"]["kept"] == keep
    assert not list((tmp_path / "out" / "checkpoints").glob(f"{RUN}.best*"))  # folded into the final
    if keep == "last":
        assert log["final"]["step"] == evals[stop]["step"] and log["final"]["val"]["loss"] > best["val_loss"]
        return
    # the final numbers, and the weights kept, are the best point's
    assert log["final"]["step"] == best["step"] and log["final"]["val"]["loss"] == best["val_loss"]
    model = Transformer(TransformerConfig.from_dict(log["model_config"]))
    model.load_state_dict(final_weights(tmp_path / "out"))
    data = train_simple.load_data(build_parser().parse_args(argv))
    assert evaluate(model, data.val, data.byte_lengths, 8, CPU)["loss"] == best["val_loss"]


def test_the_analysis_reads_an_early_stopped_run_at_its_best_point(tiny_argv, corpus_dir, tmp_path):
    from analysis.runs import load_run

    assert train_simple.main(overfitting_argv(tiny_argv, corpus_dir, "--patience", "2")) == 0
    run = load_run(tmp_path / "out" / f"{RUN}.json")
    assert run.metric_at("val_loss", "final") == run.log["stopped_early"]["best_val_loss"] < run.metric("val_loss")


def test_a_stopped_run_is_not_trained_further(tiny_argv, corpus_dir, tmp_path, capsys):
    assert train_simple.main(overfitting_argv(tiny_argv, corpus_dir, "--patience", "2", "--keep_optimizer")) == 0
    code, err = train_here(capsys, overfitting_argv(tiny_argv, corpus_dir, "--patience", "2", "--keep_optimizer",
                                                    "--num_epochs", "30", "--resume"))
    assert code == 2 and "stopped early" in err


def keep_best_run_stopped_past_its_best(tiny_argv, corpus_dir, tmp_path) -> tuple[list[str], dict]:
    """An overfitting run under --keep best, complete at --max_steps 8 with what training it further
    needs (--keep_optimizer): its best point lies before its last step, and the steps after 8 are
    worse still, so a longer run must report the best point's saved weights again."""
    argv = overfitting_argv(tiny_argv, corpus_dir, "--keep", "best", "--keep_optimizer")
    assert train_simple.main([*argv, "--max_steps", "8"]) == 0
    log = read_log(tmp_path / "out" / f"{RUN}.json")
    assert log["final"]["step"] < log["progress"]["step"] == 8  # the best point is an earlier one
    return argv, log


def test_a_keep_best_run_trained_further_still_reports_its_best_point(tiny_argv, corpus_dir, tmp_path):
    argv, first = keep_best_run_stopped_past_its_best(tiny_argv, corpus_dir, tmp_path)
    assert train_simple.main([*argv, "--max_steps", "12", "--resume"]) == 0
    log = read_log(tmp_path / "out" / f"{RUN}.json")
    assert log["status"] == "complete" and log["progress"]["step"] == 12
    assert log["final"]["step"] == first["final"]["step"] and log["final"]["val"] == first["final"]["val"]


def test_resuming_a_keep_best_run_without_its_best_weights_fails_before_training(tiny_argv, corpus_dir, tmp_path,
                                                                                   capsys):
    argv, first = keep_best_run_stopped_past_its_best(tiny_argv, corpus_dir, tmp_path)
    best = f"{RUN}.best-step{first['final']['step']}.safetensors"
    (tmp_path / "out" / "checkpoints" / best).unlink()  # copied without it
    capsys.readouterr()
    code, err = train_here(capsys, [*argv, "--max_steps", "12", "--resume"])
    error = err.strip().splitlines()[-1]
    assert code == 2 and error.startswith("error: --keep best")
    assert f"weights (step {first['final']['step']})" in error and best in error
    assert read_log(tmp_path / "out" / f"{RUN}.json") == first  # nothing trained, nothing lost


# ---------------------------------------------------------------------------------------------
# Shapes other than the seed's


@pytest.mark.parametrize("d_model, n_layers, d_mlp, act_fn", [(64, 1, 200, "relu"), (128, 3, 300, "swiglu"),
                                                              (512, 6, 2048, "gelu")])
def test_other_shapes_count_their_parameters_and_flops(d_model, n_layers, d_mlp, act_fn):
    cfg = TransformerConfig(d_vocab=1000, n_ctx=16, d_model=d_model, n_heads=4, d_mlp=d_mlp, n_layers=n_layers,
                            act_fn=act_fn)
    model = Transformer(cfg)
    n_mlp = 3 if act_fn == "swiglu" else 2
    per_layer = 4 * d_model**2 + n_mlp * d_model * d_mlp + (n_mlp - 1) * d_mlp + d_model + 4 * d_model  # + 2 LNs
    assert parameter_counts(model) == {"total": 2 * 1000 * d_model + n_layers * per_layer,
                                       "non_embedding": n_layers * per_layer,
                                       "mlp": n_layers * (n_mlp * d_model * d_mlp + (n_mlp - 1) * d_mlp + d_model)}
    if d_model > 128:
        return  # counting FLOPs is exact at any size; the small ones keep the test fast
    from torch.utils.flop_counter import FlopCounterMode

    tokens = torch.randint(0, 1000, (2, 16))
    with FlopCounterMode(display=False) as counter:
        model.nll_sum(tokens, tokens, fused=False).backward()
    assert counter.get_total_flops() == tokens.numel() * training_flops_per_token(cfg)


def test_a_small_shape_trains_end_to_end(tiny_argv, tmp_path):
    argv = tiny_argv(None, "--max_steps", "3")
    for flag, value in (("--d_model", "48"), ("--n_layers", "3"), ("--d_mlp", "100")):
        argv[argv.index(flag) + 1] = value
    assert train_simple.main(argv) == 0
    log = read_log(tmp_path / "out" / f"{RUN}.json")
    cfg = TransformerConfig.from_dict(log["model_config"])
    assert (cfg.d_model, cfg.n_layers, cfg.d_mlp) == (48, 3, 100)
    assert log["model_config"]["training_flops_per_token"] == training_flops_per_token(cfg)
    assert log["params"] == parameter_counts(Transformer(cfg))


# ---------------------------------------------------------------------------------------------
# Tied embeddings that learn


@pytest.mark.slow
def test_tied_embeddings_with_a_final_layer_norm_learn_as_fast_as_untied_once_scaled(tiny_argv, tmp_path):
    """The token embedding enters the residual stream ~35x weaker than the sinusoidal positions
    (row norm 0.02 sqrt(d_model) against sqrt(d_model / 2)); untied, W_E grows from its input-side
    gradients alone, tied it cannot (docs/model.md). Measured here after 80 steps: untied 0.99, tied
    1.86, tied with embed_scale sqrt(d_model) 1.02 (lr 3e-3, final LayerNorm in all three)."""
    losses = {}
    for name, extra in (("untied", ()), ("tied", ("--tie_embeddings",)),
                        ("tied_scaled", ("--tie_embeddings", "--embed_scale", "sqrt_d_model"))):
        out = tmp_path / name
        assert train_simple.main(tiny_argv(out, "--final_ln", "--lr", "3e-3", "--max_steps", "80", "--num_epochs", "50",
                                           "--log_every", "10", *extra)) == 0
        losses[name] = read_log(out / f"{RUN}.json")["final"]["val"]["loss"]
    assert losses["tied_scaled"] - losses["untied"] < 0.1
    assert losses["tied"] - losses["untied"] > 0.3  # the fault the scale mends shows at this size
    cfg = read_log(tmp_path / "tied_scaled" / f"{RUN}.json")["model_config"]
    assert cfg["embed_scale"] == math.sqrt(32)


def test_the_docs_example_reads_a_complete_runs_activations(tiny_argv, tmp_path, capsys):
    """docs/model.md's run_with_cache example, on a tiny complete run instead of the quick run's."""
    from conftest import ROOT

    assert train_simple.main(tiny_argv(None, "--max_steps", "2")) == 0
    text = (ROOT / "docs" / "model.md").read_text()
    example = text.split("**Reading activations**")[1].split("```python\n")[1].split("```")[0]
    log = tmp_path / "out" / f"{RUN}.json"
    assert 'Path("results/quick/relu_seed1.json")' in example
    capsys.readouterr()
    exec(example.replace('Path("results/quick/relu_seed1.json")', f"Path({str(log)!r})"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and printed[0].startswith("layer 0: ") and "% of units active" in printed[0]
    model = Transformer(TransformerConfig.from_dict(read_log(log)["model_config"]))
    _, cache = model.run_with_cache(torch.randint(0, model.cfg.d_vocab, (1, 6)))
    assert set(cache) == {"blocks.0.attn.hook_pattern", "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post"}
    assert cache["blocks.0.mlp.hook_pre"].shape == (1, 6, model.cfg.d_hidden)
    assert not any(m._forward_hooks for m in model.modules())  # the hooks are gone again
