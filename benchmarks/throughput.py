"""Training and evaluation throughput of our model against Hugging Face GPT-2, side by side.

    python benchmarks/throughput.py [--rounds 5] [--precisions fp32 bf16] [--json]
    python benchmarks/throughput.py --shapes [--rounds 3] [--json]     # the search's shapes (shapes.py)

Both models have the study's sizes (d_model 256, 4 heads, 2 layers, d_mlp 1024, vocab 50,257) and
train with AdamW and gradient clipping on the same batches. Rounds alternate A/B in one process, and
medians are reported, because this class of machine drifts by 15% between runs. Also measured: the
fp32 matmul ceiling on the unembedding's shape (the fraction of it a training step achieves), peak
memory of a training step (each model in a fresh subprocess), and the `lines` layout on real
WikiText-2 batches, where our model skips padding and HF, as in the study, pads to 128.

Precisions: fp32, and bf16 autocast for both models alike (HF too, so the ratio stays fair), with the
bf16 matmul speed at the model's shapes against fp32: the figure that says whether --bf16 pays on
this CPU. bf16 is measured by default only where the CPU has native bf16 (AVX512-BF16 or AMX): on
others a bf16 training step is tens of times slower.

glibc's allocator settings change both models' speed a lot (HF's most: its three fresh
tokens x d_vocab tensors per step are page-faulted in anew), so they are recorded with the results:

    MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647 python benchmarks/throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shapes import measure_shapes, print_shapes  # noqa: E402
from timing import BATCH, SEQ, build, eval_step, interleaved, matmul_ceiling, synchronize, train_flops_per_token, \
    train_step  # noqa: E402
from training.machine import native_bf16  # noqa: E402
from transformer_from_scratch import IGNORE_INDEX, TransformerConfig  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per measurement (after one warm-up)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    p.add_argument("--data_dir", type=Path, default=SHARED / "wikitext-2-raw-v1", help="WikiText-2 raw files")
    p.add_argument("--tokenizer", type=Path, default=SHARED / "gpt2-tokenizer", help="GPT-2 tokenizer folder")
    p.add_argument("--skip_memory", action="store_true", help="do not measure peak memory")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both models run")
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=None,
                   help="default: fp32, and bf16 where the CPU has native bf16")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a report")
    p.add_argument("--shapes", action="store_true",
                   help="instead: our model at the search's shapes (d_model 64/128/256 x 1/2/4 layers x tied/untied), "
                        "each against the matmul ceiling at its width, with what an evaluation costs (shapes.py)")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256], help="--shapes: the d_model values")
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4], help="--shapes: the n_layers values")
    return p.parse_args(argv)


def against_hf(models: dict, cfg: TransformerConfig, precisions: list[str], rounds: int, device: str) -> dict:
    """Training and evaluation tokens/s of both models on one random dense batch, in each precision,
    their ratios, and the matmul ceiling (fp32, and bf16 where measured) with the fraction of it we reach."""
    tokens = torch.randint(0, cfg.d_vocab, (BATCH, SEQ)).to(device)
    dense_tokens = BATCH * (SEQ - 1)  # scored targets per dense batch
    # Every (precision, model) pair alternates with the others in one loop: no figure comes from
    # another minute of this drifting machine than its peers.
    train = interleaved({(p, w): (lambda p=p, w=w: train_step(w, *models[w], tokens, tokens, p == "bf16"))
                         for p in precisions for w in models}, rounds)
    evaluate = interleaved({(p, w): (lambda p=p, w=w: eval_step(w, models[w][0], tokens, tokens, p == "bf16"))
                            for p in precisions for w in models}, rounds)
    ceiling = matmul_ceiling(dense_tokens, cfg, rounds, device=device)
    result = {"matmul_gflops": ceiling}
    for precision in precisions:  # fp32 figures keep their plain names; bf16 ones are prefixed
        prefix = "" if precision == "fp32" else f"{precision}_"
        for phase, seconds in (("train", train), ("eval", evaluate)):
            ours, hf = dense_tokens / seconds[precision, "ours"], dense_tokens / seconds[precision, "hf"]
            result.update({f"{prefix}{phase}_tokens_per_s": ours, f"{prefix}hf_{phase}_tokens_per_s": hf,
                           f"{prefix}{phase}_ratio": ours / hf})
    if "fp32" in precisions:
        result["train_ceiling_fraction"] = result["train_tokens_per_s"] * train_flops_per_token(cfg, SEQ) / (ceiling * 1e9)
    if "bf16" in precisions:
        result["bf16_matmul_gflops"] = matmul_ceiling(dense_tokens, cfg, rounds, torch.bfloat16, device)
        result["bf16_matmul_speedup"] = result["bf16_matmul_gflops"] / ceiling
        if "fp32" in precisions:
            result["bf16_train_speedup"] = result["bf16_train_tokens_per_s"] / result["train_tokens_per_s"]
    return result


def lines_against_hf(models: dict, data_dir: Path, tokenizer_dir: Path, rounds: int, device: str) -> dict:
    """fp32 training tokens/s of both models on real `lines` batches (scored tokens; the first batch warms up)."""
    batches = lines_batches(data_dir, tokenizer_dir, rounds + 1)
    scored = sum(n for _, _, n in batches[1:])
    per_batch = {w: [] for w in models}
    for i, (x, labels, _) in enumerate(batches):
        for w in models:
            start = time.perf_counter()
            train_step(w, *models[w], x.to(device), labels.to(device))
            synchronize()
            if i:
                per_batch[w].append(time.perf_counter() - start)
    ours, hf = scored / sum(per_batch["ours"]), scored / sum(per_batch["hf"])
    return {"lines_train_tokens_per_s": ours, "hf_lines_train_tokens_per_s": hf, "lines_train_ratio": ours / hf}


def print_report(result: dict, precisions: list[str], rounds: int) -> None:
    allocator = " ".join(f"{name}={value}" for name, value in result["malloc_env"].items()) or "default"
    print(f"threads {result['threads']}, {rounds} interleaved rounds, medians; batch {BATCH} x {SEQ} tokens; "
          f"glibc allocator {allocator}")
    for precision in precisions:
        prefix = "" if precision == "fp32" else f"{precision}_"
        for phase in ("train", "eval"):
            print(f"{phase:5s} {precision}  ours {result[f'{prefix}{phase}_tokens_per_s']:7.0f} tok/s   HF "
                  f"{result[f'{prefix}hf_{phase}_tokens_per_s']:7.0f} tok/s   ratio {result[f'{prefix}{phase}_ratio']:.2f}x")
    if "bf16_matmul_gflops" in result:
        verdict = "pays" if result["bf16_matmul_speedup"] > 1.1 else "does not pay"
        print(f"bf16 matmul {result['bf16_matmul_gflops']:.0f} GFLOP/s, {result['bf16_matmul_speedup']:.2f}x fp32 on this "
              f"CPU (native bf16: {'yes' if result['native_bf16'] else 'no'}): --bf16 {verdict} here"
              + (f"; our bf16 training is {result['bf16_train_speedup']:.2f}x our fp32" if "bf16_train_speedup" in result else ""))
    if "lines_train_ratio" in result:
        print(f"lines  ours {result['lines_train_tokens_per_s']:7.0f} tok/s   HF {result['hf_lines_train_tokens_per_s']:7.0f}"
              f" tok/s   ratio {result['lines_train_ratio']:.2f}x   (real WikiText-2 batches, scored tokens)")
    if "train_ceiling_fraction" in result:
        print(f"matmul ceiling {result['matmul_gflops']:.0f} GFLOP/s (fp32) on the unembedding's shape; an fp32 training "
              f"step reaches {100 * result['train_ceiling_fraction']:.0f}% of it")
    if "peak_memory_mb" in result:
        print(f"peak memory growth of a training step: ours {result['peak_memory_mb']:.0f} MB, "
              f"HF {result['hf_peak_memory_mb']:.0f} MB")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    precisions = args.precisions or ["fp32", *(["bf16"] if native_bf16() or args.device == "cuda" else [])]
    if args.shapes:
        rows = measure_shapes(precisions, args.rounds, args.widths, args.depths)
        if args.json:
            print(json.dumps({"threads": torch.get_num_threads(), "native_bf16": native_bf16(), "allocator":
                              "glibc, freed memory kept", "shapes": rows}, indent=1))
        else:
            print_shapes(rows, precisions)
        return 0
    cfg = TransformerConfig()
    models = {which: build(which, cfg, args.device) for which in ("ours", "hf")}
    result = {"threads": torch.get_num_threads(), "native_bf16": native_bf16(), "device": args.device,
              "malloc_env": {name: value for name, value in os.environ.items() if name.startswith("MALLOC_")},
              **against_hf(models, cfg, precisions, args.rounds, args.device)}
    if args.data_dir.is_dir() and args.tokenizer.is_dir():
        result.update(lines_against_hf(models, args.data_dir, args.tokenizer, args.rounds, args.device))
    if not args.skip_memory and args.device == "cpu":  # resident memory: what a CPU run costs
        result["peak_memory_mb"] = peak_memory_mb("ours")
        result["hf_peak_memory_mb"] = peak_memory_mb("hf")
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print_report(result, precisions, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
