"""Evaluating a run: the selection and report splits at each evaluation (the report split takes the
interpolation weight the selection split chose), the best point for --patience and --keep best,
and the text samples of each epoch's end."""

from __future__ import annotations

import torch
from torch import Tensor

from data_utils import TokenizedSplit
from metrics import evaluate
from training.checkpoint import write_final_weights
from training.data import Data
from training.settings import RunSpec
from training.state import Runtime, TrainingState
from training.watch import evaluation_bar
from transformer_from_scratch import Transformer, derived_generator


# Where the loss goes, what the model adds to the strongest n-gram (metrics.py) and the loss per article, in
# epoch entries beside the loss.
BREAKDOWN_KEYS = ("loss_seen", "loss_unseen", "unseen_fraction", "interp_weight", "interp_loss", "ngram_loss",
                  "interp_gain", "article_nll", "article_tokens")


N_PROMPTS, PROMPT_TOKENS, SAMPLE_TOKENS = 3, 24, 40  # text samples at each epoch end


def split_metrics(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, split: TokenizedSplit,
                  interp_weight: float | None = None) -> dict:
    return evaluate(state.model, split, data.byte_lengths, rt.flags["eval_batch_size"], rt.device,
                    rt.ddp.rank, rt.ddp.world, rt.ddp.all_sum, fused=spec.train_config["loss"] == "fused",
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
    p, cfg = state.progress, spec.train_config
    if p.step <= p.last_selection_step:
        return
    p.last_selection_step = p.step
    if val_loss < p.best_val_loss:
        p.best_val_loss, p.best_step, p.evals_since_best = val_loss, p.step, 0
        if cfg["keep"] == "best" and rt.ddp.main:
            write_final_weights(spec.best_weights_path, state.model.state_dict(),
                                {"run": spec.name, "step": p.step, **spec.settings()})
    else:
        p.evals_since_best += 1
    p.stopped_early = cfg["patience"] is not None and p.evals_since_best >= cfg["patience"]


def prefixed(prefix: str, metrics: dict, keys: tuple[str, ...] | None = None) -> dict:
    """``metrics`` under the log's names for its split: {"val_loss": ...}."""
    return {f"{prefix}_{k}": v for k, v in metrics.items() if keys is None or k in keys}


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
