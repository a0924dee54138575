"""Training and evaluation speed at the search's shapes, each against the matmul ceiling at its width.

    python benchmarks/throughput.py --shapes [--rounds 3] [--precisions fp32 bf16] [--widths 64 ...]
                                    [--depths 1 ...] [--json]

The small-data search trains d_model 64-256 with 1-4 layers, tied or untied, where the vocabulary's
matmuls, the rest of the model and the optimizer take different shares than at the study's shape.
Per shape (d_mlp 4 x d_model, heads of 64, batch 8 x 128 dense tokens): training and evaluation
tokens/s in each precision, interleaved with the other precision in one loop; the fraction of the
matmul ceiling (measured at that width and precision in the same run) a training step reaches; and
what one evaluation costs: 20,000 tokens of a split, the probes (16 sequences) and the text samples
(3 prompts x 40 tokens, greedy and sampled), which are diagnostics the objective does not need.
The process keeps freed memory as train_simple.py does (glibc's mallopt), so that the figures are
those of training, not of page faults (without it a step spends ~0.1 s faulting its gradients in).
"""

from __future__ import annotations

import itertools

import torch

from timing import BATCH, SEQ, build, eval_step, interleaved, matmul_ceiling, train_flops_per_token, train_step
from training.machine import keep_freed_memory
from transformer_from_scratch import TransformerConfig, probe

WIDTHS, DEPTHS, TIES = (64, 128, 256), (1, 2, 4), (False, True)
EVAL_TOKENS, PROBE_SEQUENCES, N_PROMPTS, PROMPT_TOKENS, SAMPLE_TOKENS = 20_000, 16, 3, 24, 40  # as a search trial


def shape_config(d_model: int, n_layers: int, tied: bool) -> TransformerConfig:
    return TransformerConfig(d_model=d_model, n_heads=max(1, d_model // 64), n_layers=n_layers, d_mlp=4 * d_model,
                             tie_embeddings=tied, act_fn="relu")


def diagnostics_seconds(model, cfg: TransformerConfig) -> dict[str, float]:
    """Seconds of one evaluation's probes and of its text samples (fp32, as train_simple.py runs them)."""
    tokens = torch.randint(0, cfg.d_vocab, (PROBE_SEQUENCES, SEQ))
    scored = torch.ones_like(tokens, dtype=torch.bool)
    prompt = torch.randint(0, cfg.d_vocab, (1, PROMPT_TOKENS))
    generator = torch.Generator().manual_seed(0)

    def samples() -> None:
        for _ in range(N_PROMPTS):
            model.generate(prompt, SAMPLE_TOKENS)
            model.generate(prompt, SAMPLE_TOKENS, temperature=0.8, generator=generator)

    with torch.no_grad():
        return interleaved({"probe_s": lambda: probe(model, tokens, scored), "samples_s": samples}, 1)


def measure_shapes(precisions: list[str], rounds: int, widths=WIDTHS, depths=DEPTHS) -> list[dict]:
    """One row per (d_model, n_layers, tied): tokens/s, fraction of the ceiling, evaluation cost."""
    dense_tokens = BATCH * (SEQ - 1)
    keep_freed_memory()
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    # The ceiling at a width is re-measured beside every shape of that width and its best kept: one
    # measurement taken while the machine dipped would put training above "the ceiling" (seen: 108%).
    ceilings: dict[tuple[int, str], float] = {}
    tokens = torch.randint(0, 50257, (BATCH, SEQ))
    rows = []
    for d_model, n_layers, tied in itertools.product(widths, depths, TIES):
        cfg = shape_config(d_model, n_layers, tied)
        model, opt = build("ours", cfg)
        train = interleaved({p: (lambda p=p: train_step("ours", model, opt, tokens, tokens, p == "bf16"))
                             for p in precisions}, rounds)
        evaluate = interleaved({p: (lambda p=p: eval_step("ours", model, tokens, tokens, p == "bf16"))
                                for p in precisions}, rounds)
        row = {"d_model": d_model, "n_layers": n_layers, "tied": tied,
               "train_mflop_per_token": train_flops_per_token(cfg, SEQ) / 1e6}
        for p in precisions:
            ceilings[d_model, p] = max(ceilings.get((d_model, p), 0.0),
                                       matmul_ceiling(dense_tokens, cfg, rounds, dtypes[p]))
            train_tps, eval_tps = dense_tokens / train[p], dense_tokens / evaluate[p]
            row.update({f"{p}_train_tokens_per_s": train_tps, f"{p}_eval_tokens_per_s": eval_tps,
                        f"{p}_eval_20k_tokens_s": EVAL_TOKENS / eval_tps})
        row.update(diagnostics_seconds(model, cfg))
        rows.append(row)
    for row in rows:  # against the best ceiling its width reached in this run
        for p in precisions:
            ceiling = ceilings[row["d_model"], p]
            row[f"{p}_ceiling_gflops"] = ceiling
            row[f"{p}_train_ceiling_fraction"] = row[f"{p}_train_tokens_per_s"] * row["train_mflop_per_token"] * 1e6 / (ceiling * 1e9)
    return rows


def print_shapes(rows: list[dict], precisions: list[str]) -> None:
    head = "d_model layers tied " + " ".join(f"{p:>5s} train tok/s (% ceiling)  eval 20k s" for p in precisions)
    print(head + "  probes s  samples s")
    for r in rows:
        cells = " ".join(f"{r[f'{p}_train_tokens_per_s']:15.0f} ({100 * r[f'{p}_train_ceiling_fraction']:3.0f}%)"
                         f"{r[f'{p}_eval_20k_tokens_s']:12.1f}" for p in precisions)
        print(f"{r['d_model']:7d} {r['n_layers']:6d} {'yes' if r['tied'] else 'no':>4s} {cells} "
              f"{r['probe_s']:9.2f} {r['samples_s']:10.2f}")
