"""Continue prompts with a trained run: its log says which model, weights and tokenizer.

    python sample.py results/relu_seed42.json                  # the default prompt, " The history of"
    python sample.py results/relu_seed42.json --prompt "The history of" --max_new_tokens 40
    python sample.py results/relu_seed42.json --prompt "The" --temperature 0.8 --top_k 50 --seed 1

The weights are the run's final weights (<log folder>/checkpoints/<run name>.safetensors, or the
full checkpoint of a run completed before those existed), loaded without unpickling code; the
tokenizer is the one the log names. Greedy at temperature 0 (the default).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from data_utils import DataError, load_tokenizer
from run_log import is_finished, read_log
from training.checkpoint import read_final_weights
from transformer_from_scratch import Transformer, TransformerConfig

DEFAULT_PROMPT = " The history of"
MAX_NEW_TOKENS = 4096  # a bound stated in --help: an unbounded request would run silently for hours


def run_log_path(log_or_dir: Path) -> Path:
    """The log itself, or the one complete run's log in a folder; ValueError naming the choices."""
    if not log_or_dir.is_dir():
        return log_or_dir
    complete = []
    for path in sorted(log_or_dir.glob("*.json")):
        try:
            if is_finished(read_log(path)):
                complete.append(path)
        except ValueError:
            continue  # not a run log (a summary, an ngrams.json)
    if len(complete) != 1:
        names = ", ".join(p.name for p in complete) or "none"
        raise ValueError(f"{log_or_dir} holds {len(complete)} complete runs ({names}): name one log")
    return complete[0]


def load_run_model(log_path: Path) -> tuple[Transformer, object]:
    """(model in eval mode, tokenizer) of a complete run; ValueError with a one-line reason."""
    log = read_log(log_path)
    if not is_finished(log):
        raise ValueError(f"{log_path} is not a complete run (status {log['status']!r})")
    state = read_final_weights(log_path.parent / "checkpoints", log["run"]["name"])
    model = Transformer(TransformerConfig.from_dict(log["model_config"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing, unexpected or misshapen tensors: weights of another model
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ValueError(f"the final weights of {log['run']['name']} do not fit the model its log describes "
                         f"({first})") from None
    try:
        tokenizer = load_tokenizer(log["data"]["tokenizer"])
    except DataError as err:
        raise ValueError(str(err)) from None
    return model.eval(), tokenizer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Continue prompts with a complete run's final weights.")
    p.add_argument("log", type=Path, metavar="LOG_OR_DIR", help="the run's JSON log, or a folder with one complete run")
    p.add_argument("--prompt", action="append", default=None,
                   help=f"a prompt (repeat for several; default: {DEFAULT_PROMPT!r})")
    p.add_argument("--max_new_tokens", type=int, default=40,
                   help=f"tokens to add to each prompt, at most {MAX_NEW_TOKENS} (the model reads only its last n_ctx "
                        f"tokens, so a longer continuation adds repetition, not meaning)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy; else sample from softmax(logits / T)")
    p.add_argument("--top_k", type=int, default=None, help="sample among the k likeliest tokens only")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    args = p.parse_args(argv)
    try:
        if not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS or (args.top_k is not None and args.top_k < 1):
            raise ValueError(f"--max_new_tokens must be in 1..{MAX_NEW_TOKENS} and --top_k positive, got "
                             f"{args.max_new_tokens} and {args.top_k}")
        if not (math.isfinite(args.temperature) and args.temperature >= 0):
            raise ValueError(f"--temperature must be a finite number, 0 or more, got {args.temperature}")
        model, tokenizer = load_run_model(run_log_path(args.log))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    generator = torch.Generator().manual_seed(args.seed)
    for prompt in args.prompt or [DEFAULT_PROMPT]:
        tokens = torch.tensor([tokenizer.encode(prompt)[-model.cfg.n_ctx :] or [tokenizer.eos_token_id]])
        out = model.generate(tokens, args.max_new_tokens, args.temperature, args.top_k, generator)
        print(prompt + tokenizer.decode(out[0, tokens.shape[1] :].tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
