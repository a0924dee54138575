"""Training and evaluation throughput of our model against Hugging Face GPT-2, side by side.

    python benchmarks/throughput.py [--rounds 5] [--json]

Both models have the study's sizes (d_model 256, 4 heads, 2 layers, d_mlp 1024, vocab 50,257) and
train with AdamW and gradient clipping on the same batches. Rounds alternate A/B in one process, and
medians are reported, because this class of machine drifts by 15% between runs. Also measured: the
fp32 matmul ceiling on the unembedding's shape (the fraction of it a training step achieves), peak
memory of a training step (each model in a fresh subprocess), and the `lines` layout on real
WikiText-2 batches, where our model skips padding and HF, as in the study, pads to 128.

glibc's allocator settings change both models' speed a lot (HF's most: its three fresh
tokens x d_vocab tensors per step are page-faulted in anew), so they are recorded with the results:

    MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647 python benchmarks/throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from transformer_from_scratch import IGNORE_INDEX, Transformer, TransformerConfig  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
BATCH, SEQ = 8, 128


def build(which: str, cfg: TransformerConfig):
    """(model, optimizer) for "ours" or "hf", the study's optimizer settings."""
    if which == "ours":
        model = Transformer(cfg, seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01, fused=True)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_embd=cfg.d_model,
                                           n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_mlp))
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


def train_step(which: str, model, opt, tokens, labels) -> None:
    opt.zero_grad(set_to_none=True)
    loss_of(which, model, tokens, labels).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


@torch.no_grad()
def eval_step(which: str, model, tokens, labels) -> None:
    loss_of(which, model, tokens, labels)


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, calls alternating between them (one warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_ceiling(n_rows: int, cfg: TransformerConfig, rounds: int) -> float:
    """Best fp32 GFLOP/s over the unembedding's three GEMM shapes and both operand layouts."""
    h, W = torch.randn(n_rows, cfg.d_model), torch.randn(cfg.d_model, cfg.d_vocab)
    W_t, G = W.t().contiguous(), torch.randn(n_rows, cfg.d_vocab)
    cases = {"h W": lambda: h @ W, "h W^T^T": lambda: h @ W_t.t(), "G W^T": lambda: G @ W.t(),
             "G W_t": lambda: G @ W_t, "G^T h": lambda: G.t() @ h, "h^T G": lambda: h.t() @ G}
    seconds = interleaved(cases, rounds)
    return 2 * n_rows * cfg.d_model * cfg.d_vocab / min(seconds.values()) / 1e9


def train_flops_per_token(cfg: TransformerConfig, seq: int) -> float:
    """6 x matmul weights per token (forward + backward) plus attention's scores and mixing."""
    matmul = cfg.n_layers * (4 * cfg.d_model**2 + 2 * cfg.d_model * cfg.d_mlp) + cfg.d_model * cfg.d_vocab
    attention = cfg.n_layers * 4 * cfg.d_model * seq
    return 6 * (matmul + attention)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux VmHWM; unlike ru_maxrss it is not inherited
    across exec from a larger parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_mb(which: str) -> float:
    """Peak resident memory growth of two training steps over the built model, in a fresh interpreter."""
    code = (
        "import sys, torch; sys.path.insert(0, %r); sys.path.insert(0, %r);"
        "from throughput import build, train_step, peak_rss_mb, TransformerConfig;"
        "cfg = TransformerConfig(); m, o = build(%r, cfg); x = torch.randint(0, cfg.d_vocab, (8, 128));"
        "base = peak_rss_mb();"
        "[train_step(%r, m, o, x, x.clone()) for _ in range(2)];"
        "print(peak_rss_mb() - base)"
    ) % (str(ROOT), str(Path(__file__).resolve().parent), which, which)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def lines_batches(data_dir: Path, tokenizer_dir: Path, n_batches: int):
    """Real `lines`-layout batches (padded to 128, labels masked) from the validation split."""
    from data_utils import load_split_text, load_tokenizer, tokenize_split

    split = tokenize_split(load_split_text("validation", data_dir), load_tokenizer(str(tokenizer_dir)), "lines", SEQ)
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
    batches = []
    for b in range(n_batches):
        index = order[b * BATCH : (b + 1) * BATCH]
        tokens, lengths = split.tokens[index], split.lengths[index]
        labels = tokens.masked_fill(torch.arange(SEQ)[None, :] >= lengths[:, None], IGNORE_INDEX)
        batches.append((tokens, labels, int((lengths - 1).clamp(min=0).sum())))
    return batches


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per measurement (after one warm-up)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    p.add_argument("--data_dir", type=Path, default=SHARED / "wikitext-2-raw-v1", help="WikiText-2 raw files")
    p.add_argument("--tokenizer", type=Path, default=SHARED / "gpt2-tokenizer", help="GPT-2 tokenizer folder")
    p.add_argument("--skip_memory", action="store_true", help="do not measure peak memory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a report")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = TransformerConfig()
    models = {which: build(which, cfg) for which in ("ours", "hf")}
    tokens = torch.randint(0, cfg.d_vocab, (BATCH, SEQ))
    dense_tokens = BATCH * (SEQ - 1)  # scored targets per dense batch

    train = interleaved({w: (lambda w=w: train_step(w, *models[w], tokens, tokens)) for w in models}, args.rounds)
    evaluate = interleaved({w: (lambda w=w: eval_step(w, models[w][0], tokens, tokens)) for w in models}, args.rounds)
    ceiling = matmul_ceiling(dense_tokens, cfg, args.rounds)
    result = {
        "train_tokens_per_s": dense_tokens / train["ours"], "hf_train_tokens_per_s": dense_tokens / train["hf"],
        "eval_tokens_per_s": dense_tokens / evaluate["ours"], "hf_eval_tokens_per_s": dense_tokens / evaluate["hf"],
        "matmul_gflops": ceiling, "threads": torch.get_num_threads(),
        "malloc_env": {name: value for name, value in os.environ.items() if name.startswith("MALLOC_")},
    }
    result["train_ratio"] = result["train_tokens_per_s"] / result["hf_train_tokens_per_s"]
    result["eval_ratio"] = result["eval_tokens_per_s"] / result["hf_eval_tokens_per_s"]
    result["train_ceiling_fraction"] = result["train_tokens_per_s"] * train_flops_per_token(cfg, SEQ) / (ceiling * 1e9)
    if args.data_dir.is_dir() and args.tokenizer.is_dir():
        batches = lines_batches(args.data_dir, args.tokenizer, args.rounds + 1)
        scored = sum(n for _, _, n in batches[1:])
        per_batch = {w: [] for w in models}
        for i, (x, labels, _) in enumerate(batches):
            for w in models:
                start = time.perf_counter()
                train_step(w, *models[w], x, labels)
                if i:
                    per_batch[w].append(time.perf_counter() - start)
        result["lines_train_tokens_per_s"] = scored / sum(per_batch["ours"])
        result["hf_lines_train_tokens_per_s"] = scored / sum(per_batch["hf"])
        result["lines_train_ratio"] = result["lines_train_tokens_per_s"] / result["hf_lines_train_tokens_per_s"]
    if not args.skip_memory:
        result["peak_memory_mb"] = peak_memory_mb("ours")
        result["hf_peak_memory_mb"] = peak_memory_mb("hf")
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    allocator = " ".join(f"{name}={value}" for name, value in result["malloc_env"].items()) or "default"
    print(f"threads {result['threads']}, {args.rounds} interleaved rounds, medians; batch {BATCH} x {SEQ} tokens; "
          f"glibc allocator {allocator}")
    print(f"train  ours {result['train_tokens_per_s']:7.0f} tok/s   HF {result['hf_train_tokens_per_s']:7.0f} tok/s   "
          f"ratio {result['train_ratio']:.2f}x")
    print(f"eval   ours {result['eval_tokens_per_s']:7.0f} tok/s   HF {result['hf_eval_tokens_per_s']:7.0f} tok/s   "
          f"ratio {result['eval_ratio']:.2f}x")
    if "lines_train_ratio" in result:
        print(f"lines  ours {result['lines_train_tokens_per_s']:7.0f} tok/s   HF {result['hf_lines_train_tokens_per_s']:7.0f}"
              f" tok/s   ratio {result['lines_train_ratio']:.2f}x   (real WikiText-2 batches, scored tokens)")
    print(f"matmul ceiling {ceiling:.0f} GFLOP/s on the unembedding's shape; a training step reaches "
          f"{100 * result['train_ceiling_fraction']:.0f}% of it")
    if "peak_memory_mb" in result:
        print(f"peak memory growth of a training step: ours {result['peak_memory_mb']:.0f} MB, "
              f"HF {result['hf_peak_memory_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
