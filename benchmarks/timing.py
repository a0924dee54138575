"""What both benchmarks time and how: a model and optimizer of ours or Hugging Face's, one training or
evaluation step, calls interleaved so that two things compare within one run, and the matmul ceiling
a step is measured against. throughput.py and shapes.py import this; neither imports the other's
measurements (throughput.py runs shapes.py's --shapes)."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformer_from_scratch import IGNORE_INDEX, Transformer, TransformerConfig  # noqa: E402

BATCH, SEQ = 8, 128


def build(which: str, cfg: TransformerConfig, device: str = "cpu"):
    """(model, optimizer) for "ours" or "hf" on ``device``, the study's optimizer settings."""
    if which == "ours":
        model = Transformer(cfg, seed=0).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01, fused=True)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_embd=cfg.d_model,
                                           n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_mlp)).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)  # library defaults
    return model, opt


def loss_of(which: str, model, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss; ``labels`` are ``tokens`` with IGNORE_INDEX where padding is."""
    if which == "hf":
        return model(input_ids=tokens, labels=labels).loss
    targets = labels[:, 1:]
    longest = int((labels != IGNORE_INDEX).sum(1).max())  # dynamic padding, as train_simple.py does
    targets = targets[:, : max(longest - 1, 1)]
    return model.nll_sum(tokens[:, : targets.shape[1]], targets) / (targets != IGNORE_INDEX).sum()


def train_step(which: str, model, opt, tokens, labels, bf16: bool = False) -> None:
    opt.zero_grad(set_to_none=True)
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = loss_of(which, model, tokens, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


@torch.no_grad()
def eval_step(which: str, model, tokens, labels, bf16: bool = False) -> None:
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss_of(which, model, tokens, labels)


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, calls alternating between them (one warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds + 1):
        for name, fn in fns.items():
            synchronize()
            start = time.perf_counter()
            fn()
            synchronize()
            if r:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def synchronize() -> None:
    """Wait for queued GPU work, so that a timing covers it (a no-op on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def matmul_ceiling(n_rows: int, cfg: TransformerConfig, rounds: int, dtype: torch.dtype = torch.float32,
                   device: str = "cpu") -> float:
    """Best GFLOP/s in ``dtype`` over the unembedding's three GEMM shapes and both operand layouts."""
    h = torch.randn(n_rows, cfg.d_model, dtype=dtype, device=device)
    W = torch.randn(cfg.d_model, cfg.d_vocab, dtype=dtype, device=device)
    W_t, G = W.t().contiguous(), torch.randn(n_rows, cfg.d_vocab, dtype=dtype, device=device)
    cases = {"h W": lambda: h @ W, "h W^T^T": lambda: h @ W_t.t(), "G W^T": lambda: G @ W.t(),
             "G W_t": lambda: G @ W_t, "G^T h": lambda: G.t() @ h, "h^T G": lambda: h.t() @ G}
    seconds = interleaved(cases, rounds)
    return 2 * n_rows * cfg.d_model * cfg.d_vocab / min(seconds.values()) / 1e9


def train_flops_per_token(cfg: TransformerConfig, seq: int) -> float:
    """6 x matmul weights per token (forward + backward) plus attention's scores and mixing."""
    matmul = cfg.n_layers * (4 * cfg.d_model**2 + 2 * cfg.d_model * cfg.d_mlp) + cfg.d_model * cfg.d_vocab
    attention = cfg.n_layers * 4 * cfg.d_model * seq
    return 6 * (matmul + attention)
