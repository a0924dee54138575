"""Evaluating a run: the one pass over a split that produces its sums (``evaluate``; metrics.py
declares what is summed and reported), the selection and report splits at each evaluation (the
report split takes the interpolation weight the selection split chose), the best point for
--patience and --keep best, and the text samples of each epoch's end."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from data_utils import TokenizedSplit
from metrics import INTERPOLATION_STEPS, ROLES, Totals, chosen_weight, logged_name, metrics_of, sum_functions
from training.checkpoint import write_final_weights
from training.data import Data
from training.settings import RunSpec
from training.state import Runtime, TrainingState
from training.watch import evaluation_bar
from transformer_from_scratch import IGNORE_INDEX, Transformer, derived_generator


def interpolation_weights() -> Float[Tensor, " weights"]:
    return torch.arange(INTERPOLATION_STEPS + 1, dtype=torch.float64) / INTERPOLATION_STEPS


def interpolated_nll(
    model_nll: Float[Tensor, " n"], ngram_nll: Float[Tensor, " n"], weights: Float[Tensor, " weights"]
) -> Float[Tensor, " weights"]:
    """Summed -log(w p_model + (1 - w) p_ngram) over the targets, for each weight w (float64; at
    w = 1 exactly the model's NLL, at w = 0 exactly the n-gram's)."""
    mixed = torch.logaddexp(weights.log()[:, None] - model_nll.double()[None, :],
                            (1 - weights).log()[:, None] - ngram_nll.double()[None, :])
    return -mixed.sum(dim=1)


class Batches(Protocol):
    """What evaluation needs of a split (data_utils.TokenizedSplit)."""

    reference_nll: Tensor | None  # the n-gram's NLL of each target at its place in the tokens, if known
    articles: Tensor | None  # the article of each token, if known (-1: padding)

    def __len__(self) -> int: ...

    def batch(self, index: Int[Tensor, " batch"]) -> tuple[Tensor, Tensor]: ...


@dataclass
class ScoredTargets:
    """One batch's scored targets, as metrics.py's sums read them."""

    nll: Float[Tensor, " n"]
    bytes: Int[Tensor, " n"]
    seen: Bool[Tensor, " n"]


def no_reduction(values: Tensor) -> Tensor:
    return values


@torch.no_grad()
def evaluate(
    model: Transformer,
    split: Batches,
    byte_lengths: Int[Tensor, " d_vocab"],
    batch_size: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    all_sum: Callable[[Tensor], Tensor] = no_reduction,
    fused: bool = True,
    shown: Callable[[Iterable], Iterable] = iter,
    seen_types: Bool[Tensor, " d_vocab"] | None = None,
    interp_weight: float | None = None,
) -> dict[str, float | int | list | None]:
    """One full pass in order: every sum metrics.py declares over the split's scored targets
    (``seen_types``: the types seen in training, every type when None), the interpolation with the
    n-gram where the split has its per-target NLL (``interp_weight``: metrics.chosen_weight), and
    the summed NLL and targets of each article where the split knows them; returned as the split's
    metrics, with ``article_nll`` and ``article_tokens`` beside them.

    Under DDP each of ``world`` processes takes every world-th batch and ``all_sum`` adds their
    sums. Sums are float64 and taken in a fixed order, so the result is the same on every run.
    ``fused`` chooses the model's loss path (Transformer.token_nll); ``shown`` wraps the batches (a
    progress bar).
    """
    was_training = model.training
    model.eval()
    sums_of = sum_functions()
    weights = interpolation_weights()
    reference = getattr(split, "reference_nll", None)
    articles = getattr(split, "articles", None)
    n_sums, n_mixture = len(sums_of), len(weights) if reference is not None else 0
    # every article of the whole split, so that a subset's lists line up with the whole split's
    n_articles = getattr(split, "info", {}).get("n_articles", int(articles.max()) + 1) if articles is not None else 0
    sums = torch.zeros(n_sums + n_mixture + 2 * n_articles, dtype=torch.float64)
    mixture, per_article = slice(n_sums, n_sums + n_mixture), slice(n_sums + n_mixture, None)
    for b, start in enumerate(shown(range(0, len(split), batch_size))):
        if b % world != rank:
            continue
        index = torch.arange(start, min(start + batch_size, len(split)))
        inputs, targets = split.batch(index)
        is_scored = targets != IGNORE_INDEX
        scored = targets[is_scored]
        token_nll = model.token_nll(inputs.to(device), targets.to(device), fused=fused).cpu().double()
        seen = seen_types[scored] if seen_types is not None else torch.ones_like(scored, dtype=torch.bool)
        batch = ScoredTargets(token_nll, byte_lengths[scored], seen)
        sums[:n_sums] += torch.tensor([float(add(batch)) for add in sums_of.values()], dtype=torch.float64)
        if reference is not None:
            ngram_nll = reference[index, 1 : targets.shape[1] + 1][is_scored]
            sums[mixture] += interpolated_nll(token_nll, ngram_nll, weights)
        if articles is not None:
            article = articles[index, 1 : targets.shape[1] + 1][is_scored]
            sums[per_article] += torch.cat([torch.zeros(n_articles, dtype=torch.float64).index_add_(
                0, article, token_nll), torch.bincount(article, minlength=n_articles).double()])
    sums = all_sum(sums)
    model.train(was_training)
    mixed = sums[mixture].tolist() if reference is not None else None
    totals = Totals(dict(zip(sums_of, sums[:n_sums].tolist())), mixed,
                    chosen_weight(mixed, interp_weight) if mixed is not None else None)
    out: dict = metrics_of(totals)
    if articles is not None:
        out |= {"article_nll": sums[per_article][:n_articles].tolist(),
                "article_tokens": [int(n) for n in sums[per_article][n_articles:]]}
    return out


N_PROMPTS, PROMPT_TOKENS, SAMPLE_TOKENS = 3, 24, 40  # text samples at each epoch end


def split_metrics(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, split: TokenizedSplit,
                  interp_weight: float | None = None) -> dict:
    return evaluate(state.model, split, data.byte_lengths, rt.execution.eval_batch_size, rt.device,
                    rt.ddp.rank, rt.ddp.world, rt.ddp.all_sum, fused=spec.training.loss == "fused",
                    shown=evaluation_bar(split.info["split"], rt.ddp.main), seen_types=data.seen_types,
                    interp_weight=interp_weight)


def evaluate_splits(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, whole: bool) -> tuple[dict, dict]:
    """The validation (selection) split's metrics and the test (report) split's, {} without one: the
    whole splits, or the subsets evaluated during training. The report split is evaluated at every
    evaluation so that a point chosen on the selection split can be reported on a split nothing was
    chosen on; its interpolation with the n-gram takes the weight the selection split chose."""
    splits = {"val": data.val, "test": data.test} if whole else data.during_training
    val = split_metrics(spec, state, data, rt, splits["val"])
    if splits.get("test") is None:
        return val, {}
    return val, split_metrics(spec, state, data, rt, splits["test"], val.get("interp_weight"))


def note_selection(spec: RunSpec, state: TrainingState, rt: Runtime, val_loss: float) -> None:
    """Count an evaluation of the selection split for --patience and --keep best: a new best point
    (whose weights --keep best saves), or one more evaluation without improvement. An evaluation at
    a step already counted (a partial epoch's end right after an evaluation) counts once."""
    p, cfg = state.progress, spec.training
    if p.step <= p.last_selection_step:
        return
    p.last_selection_step = p.step
    if val_loss < p.best_val_loss:
        p.best_val_loss, p.best_step, p.evals_since_best = val_loss, p.step, 0
        if cfg.keep == "best" and rt.ddp.main:
            write_final_weights(spec.best_weights_path(p.step), state.model.state_dict(),
                                {"run": spec.name, "step": p.step, **spec.settings()})
    else:
        p.evals_since_best += 1
    p.stopped_early = cfg.patience is not None and p.evals_since_best >= cfg.patience


def eval_entry(val: dict, test: dict) -> dict:
    """An evaluation's two splits under the log's names: {"val_loss": ..., "test_loss": ...}."""
    return {logged_name(role, name): value for role, metrics in zip(ROLES, (val, test))
            for name, value in metrics.items()}


def sample_prompts(split: TokenizedSplit) -> list[Tensor]:
    """Three fixed prompts: the first PROMPT_TOKENS tokens of validation sequences spread over the
    split, chosen among those long enough to be a real paragraph."""
    long_enough = (split.lengths >= 2 * PROMPT_TOKENS).nonzero().flatten()
    picks = long_enough[torch.linspace(0, len(long_enough) - 1, N_PROMPTS).long()] if len(long_enough) else long_enough
    return [split.tokens[i, :PROMPT_TOKENS] for i in picks]


def continue_prompts(model: Transformer, data: Data, seed: int, device: torch.device) -> list[dict]:
    """Each prompt continued by SAMPLE_TOKENS tokens, greedy and sampled at temperature 0.8; the
    sampling generator comes from the seed alone, so a rerun writes the same text."""
    generator = derived_generator(seed, "samples")
    out = []
    for prompt in sample_prompts(data.val):
        context = prompt[None].to(device)
        greedy = model.generate(context, SAMPLE_TOKENS)[0, PROMPT_TOKENS:]
        sampled = model.generate(context, SAMPLE_TOKENS, temperature=0.8, generator=generator)[0, PROMPT_TOKENS:]
        out.append({key: data.tokenizer.decode(ids.tolist()) for key, ids in
                    (("prompt", prompt), ("greedy", greedy), ("sampled", sampled))})
    return out
