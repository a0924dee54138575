"""Train one model per (activation, seed) on WikiText-2 and write one JSON log per run.

    python train_simple.py --activation relu --num_epochs 3 --batch_size 8

Runs are reproducible (same seed, machine and threads: the same log apart from timings), paired
(for one seed every activation sees the same data order and the same initial weights outside the
MLP) and resumable (checkpoints hold model, optimizer, RNG states and the position in the data).
Under ``torchrun --nproc_per_node=N`` it trains with DistributedDataParallel, the global batch
still ``--batch_size``. The log schema is documented in the README.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from data_utils import (
    LAYOUTS,
    DataError,
    TokenizedSplit,
    atomic_save,
    atomic_write,
    load_split_text,
    load_tokenizer,
    token_byte_lengths,
    tokenize_split,
)
from metrics import NLLTotals
from transformer_from_scratch import (
    ACTIVATIONS,
    IGNORE_INDEX,
    PRESETS,
    Transformer,
    TransformerConfig,
    activation_names,
    canonical_activation,
    derived_generator,
    parameter_counts,
)

SCHEMA_VERSION = 1
# Training settings that may change when a run is resumed; every other setting must match.
RESUMABLE_SETTINGS = ("num_epochs", "max_steps")


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit code 2."""


class NonFiniteLoss(Exception):
    """The loss or gradient norm stopped being finite."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train one model per MLP activation and seed; write one JSON log per run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("experiment")
    g.add_argument("--activation", nargs="+", default=["gelu"], choices=activation_names(), metavar="NAME",
                   help=f"MLP activation(s), run one after another; one of {', '.join(activation_names())}")
    g.add_argument("--seeds", "--seed", nargs="+", type=int, default=[42], dest="seeds",
                   help="seed(s); every activation runs with every seed")
    g.add_argument("--num_epochs", type=int, default=3, help="passes over the training split")
    g.add_argument("--batch_size", type=int, default=8, help="sequences per optimizer step (global, also under DDP)")
    g.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (constant)")
    g.add_argument("--weight_decay", type=float, default=0.01, help="AdamW weight decay")
    g.add_argument("--grad_clip", type=float, default=1.0, help="clip the global gradient norm to this (0: off)")
    g.add_argument("--max_length", type=int, default=128, help="tokens per sequence (the model's n_ctx)")
    g.add_argument("--max_steps", type=int, default=None, help="stop after this many optimizer steps in all")
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=PRESETS, default="seed", help="architecture: the study's (seed) or GPT-2's")
    g.add_argument("--d_model", type=int, default=256, help="residual stream width")
    g.add_argument("--d_mlp", type=int, default=1024, help="MLP hidden width (before --match_params)")
    g.add_argument("--n_heads", type=int, default=4, help="attention heads")
    g.add_argument("--n_layers", type=int, default=2, help="transformer blocks")
    g.add_argument("--match_params", action="store_true",
                   help="shrink gated (GLU) MLPs to 2/3 width so every MLP has the same parameter count")
    g.add_argument("--attn_impl", choices=("einsum", "sdpa"), default="einsum", help="attention kernel")
    g = p.add_argument_group("data")
    g.add_argument("--layout", choices=LAYOUTS, default="lines",
                   help="lines: one sequence per line, padded (the study); packed: contiguous blocks")
    g.add_argument("--data_dir", type=Path, default=None,
                   help="folder with WikiText-2 wiki.*.raw files (else $WIKITEXT2_DIR, else the hub)")
    g.add_argument("--tokenizer", default=None, help="tokenizer hub name or local folder (else $GPT2_TOKENIZER, else gpt2)")
    g.add_argument("--train_split", default="train", help="split (or text file) to train on")
    g.add_argument("--val_split", default="validation", help="split (or text file) to evaluate on every epoch")
    g.add_argument("--test_split", default="test",
                   help="split evaluated once at the end; skipped when it is the train or val split, or 'none'")
    g.add_argument("--cache_dir", type=Path, default=None, help="tokenized-data cache (else $ACTIVATION_STUDY_CACHE)")
    g = p.add_argument_group("run")
    g.add_argument("--output_dir", type=Path, default=Path("results"), help="where logs and checkpoints go")
    g.add_argument("--run_name", default=None,
                   help="log name (<output_dir>/<run_name>.json); default <activation>[_matched]_seed<seed>; "
                        "with several runs it is used as a prefix")
    g.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    g.add_argument("--log_every", type=int, default=10, help="record a step entry every N steps")
    g.add_argument("--eval_every", type=int, default=0, help="also evaluate every N steps (0: at epoch ends only)")
    g.add_argument("--eval_batch_size", type=int, default=32, help="sequences per evaluation batch")
    g.add_argument("--probe_sequences", type=int, default=64,
                   help="validation sequences used to probe MLP unit activity each epoch")
    g.add_argument("--checkpoint_every", type=int, default=200, help="checkpoint every N steps (and every epoch)")
    g.add_argument("--resume", action="store_true", help="continue each run from its latest checkpoint")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (for GPUs; little gain on CPU)")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast (for GPUs; far slower on most CPUs)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Small helpers


def write_json_atomic(obj: dict, path: Path) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[name]:
        raise UsageError(f"device {name!r} is not available on this machine")
    return torch.device(name)


def keep_freed_memory() -> str:
    """Ask glibc to keep freed memory for reuse rather than hand it back to the OS; says what it did.

    A step frees and reallocates the same ~100 MB of gradients. By default glibc unmaps blocks over
    32 MB and trims its heap, so every step page-faults them in again; keeping them measured 8-11%
    more training tokens/s on a 2-core CPU, with no higher peak memory. Equivalent to setting
    MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ to 2**31 - 1. Elsewhere (no glibc) a no-op.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "default"
    m_trim_threshold, m_mmap_threshold, most = -1, -3, 2**31 - 1
    kept = libc.mallopt(m_trim_threshold, most) and libc.mallopt(m_mmap_threshold, most)
    return "glibc, freed memory kept" if kept else "default"


def epoch_order(seed: int, epoch: int, n: int) -> Tensor:
    """The training order of one epoch: a function of seed and epoch only, so every activation
    sees the same order and a resumed run picks up exactly where it stopped."""
    return torch.randperm(n, generator=derived_generator(seed, f"data order, epoch {epoch}"))


def layer_groups(model: Transformer) -> dict[str, list[nn.Parameter]]:
    """Parameters grouped per layer for gradient-norm dynamics."""
    groups: dict[str, list[nn.Parameter]] = {"embed": list(model.embed.parameters()) + list(model.pos_embed.parameters())}
    for i, block in enumerate(model.blocks):
        groups[f"block{i}.attn"] = list(block.ln1.parameters()) + list(block.attn.parameters())
        groups[f"block{i}.mlp"] = list(block.ln2.parameters()) + list(block.mlp.parameters())
    groups["unembed"] = list(model.ln_final.parameters()) + list(model.unembed.parameters())
    return groups


def grad_norm(params: list[nn.Parameter]) -> float:
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: Tensor) -> Tensor:
        if self.world > 1:
            dist.all_reduce(values)
        return values


class NLLSum(nn.Module):
    """(tokens, targets) -> summed NLL; the module DDP wraps, so gradients sync on backward."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, targets: Tensor) -> Tensor:
        return self.model.nll_sum(tokens, targets)


# ---------------------------------------------------------------------------------------------
# Evaluation and dynamics


@torch.no_grad()
def evaluate(model: Transformer, split: TokenizedSplit, byte_lengths: Tensor, batch_size: int,
             device: torch.device, ddp: Distributed = Distributed()) -> dict[str, float]:
    """One deterministic full pass: summed NLL, tokens and bytes over the whole split."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    for b, start in enumerate(range(0, len(split), batch_size)):
        if b % ddp.world != ddp.rank:
            continue
        inputs, targets = split.batch(torch.arange(start, min(start + batch_size, len(split))))
        scored = targets[targets != IGNORE_INDEX]
        nll = model.nll_sum(inputs.to(device), targets.to(device))
        sums += torch.tensor([nll.item(), scored.numel(), byte_lengths[scored].sum().item()], dtype=torch.float64)
    sums = ddp.all_sum(sums)
    model.train(was_training)
    totals = NLLTotals(float(sums[0]), int(sums[1]), int(sums[2]))
    return totals.summary()


@torch.no_grad()
def mlp_activity(model: Transformer, probe: TokenizedSplit, device: torch.device) -> list[dict]:
    """Per MLP layer, over the probe's scored positions: the fraction of hidden units never active,
    the mean fraction active per token, and the mean and std of the (gate) pre-activations.
    "Active" is the activation's own rule (transformer_from_scratch/activations.py)."""
    inputs, targets = probe.batch(torch.arange(len(probe)))
    scored = (targets != IGNORE_INDEX).to(device)
    captured: list[Tensor] = []
    hooks = [block.mlp.hook_pre.register_forward_hook(lambda _m, _i, out: captured.append(out[scored]))
             for block in model.blocks]
    was_training = model.training
    model.eval()
    try:
        model.residual(inputs.to(device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    stats = []
    for layer, (block, pre) in enumerate(zip(model.blocks, captured)):
        active = block.mlp.act.is_active(pre)
        stats.append({
            "layer": layer,
            "dead_fraction": 1.0 - active.any(dim=0).float().mean().item(),
            "active_fraction": active.float().mean().item(),
            "pre_mean": pre.mean().item(),
            "pre_std": pre.std().item(),
        })
    return stats


# ---------------------------------------------------------------------------------------------
# One run


@dataclass
class Data:
    train: TokenizedSplit
    val: TokenizedSplit
    test: TokenizedSplit | None
    byte_lengths: Tensor
    vocab_size: int
    tokenizer: str


def load_data(args: argparse.Namespace) -> Data:
    tokenizer = load_tokenizer(args.tokenizer)
    byte_lengths = token_byte_lengths(tokenizer)
    cache = {}

    def split(name: str) -> TokenizedSplit:
        if name not in cache:
            text = load_split_text(name, args.data_dir)
            cache[name] = tokenize_split(text, tokenizer, args.layout, args.max_length, byte_lengths, args.cache_dir)
        return cache[name]

    test_name = args.test_split
    has_test = test_name.lower() != "none" and test_name not in (args.train_split, args.val_split)
    data = Data(split(args.train_split), split(args.val_split), split(test_name) if has_test else None,
                byte_lengths, len(tokenizer), tokenizer.name_or_path)
    if len(data.train) == 0 or data.val.info["tokens"] == 0:
        raise DataError("the train or validation split has no scored tokens")
    return data


def train_settings(args: argparse.Namespace, activation: str, seed: int) -> dict:
    return {
        "activation": activation, "seed": seed, "num_epochs": args.num_epochs, "max_steps": args.max_steps,
        "batch_size": args.batch_size, "lr": args.lr, "lr_schedule": "constant", "weight_decay": args.weight_decay,
        "optimizer": "AdamW(betas=(0.9, 0.999), eps=1e-8)", "grad_clip": args.grad_clip,
        "max_length": args.max_length, "layout": args.layout, "dynamic_padding": True, "loss": "fused",
        "compile": args.compile, "bf16": args.bf16, "probe_sequences": args.probe_sequences,
    }


def model_config(args: argparse.Namespace, activation: str, vocab_size: int) -> TransformerConfig:
    return TransformerConfig(
        d_vocab=vocab_size, n_ctx=args.max_length, d_model=args.d_model, n_heads=args.n_heads,
        d_mlp=args.d_mlp, n_layers=args.n_layers, act_fn=activation, preset=args.preset,
        match_params=args.match_params, attn_impl=args.attn_impl,
    )


def check_resumable(saved: dict, current: dict, what: str, path: Path) -> None:
    differ = [f"{key} {saved.get(key)!r} -> {current.get(key)!r}" for key in sorted(set(saved) | set(current))
              if key not in RESUMABLE_SETTINGS and saved.get(key) != current.get(key)]
    if differ:
        raise UsageError(f"checkpoint {path} was written with a different {what}: {', '.join(differ)}")


class Run:
    """State and log of one (activation, seed) training run."""

    def __init__(self, args, activation: str, seed: int, name: str, data: Data, device: torch.device,
                 ddp: Distributed) -> None:
        self.args, self.seed, self.data, self.device, self.ddp = args, seed, data, device, ddp
        self.log_path = args.output_dir / f"{name}.json"
        self.ckpt_path = args.output_dir / "checkpoints" / f"{name}.pt"
        self.cfg = model_config(args, activation, data.vocab_size)
        torch.manual_seed(seed)  # nothing here draws from the global generators; seeded for safety
        np.random.seed(seed)
        random.seed(seed)
        self.model = Transformer(self.cfg, seed=seed).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                           fused=device.type in ("cpu", "cuda"))
        loss_module: nn.Module = NLLSum(self.model)
        if ddp.world > 1:
            loss_module = nn.parallel.DistributedDataParallel(loss_module)
        self.loss_module = torch.compile(loss_module) if args.compile else loss_module
        self.probe = TokenizedSplit(data.val.tokens[: args.probe_sequences], data.val.lengths[: args.probe_sequences])
        self.step, self.epoch, self.batch_in_epoch = 0, 1, 0
        self.epoch_nll, self.epoch_tokens, self.epoch_wall = 0.0, 0, 0.0
        self.last_val: dict | None = None  # validation metrics of the latest end_epoch
        self.log = self.new_log(name)

    def new_log(self, name: str) -> dict:
        roles = {"train": self.data.train, "val": self.data.val, "test": self.data.test}
        return {
            "schema_version": SCHEMA_VERSION,
            "status": "running",
            "run": {
                "name": name, "command": self.args.command, "git_commit": git_commit(),
                "python": platform.python_version(), "torch": torch.__version__,
                "transformers": __import__("transformers").__version__, "platform": platform.platform(),
                "device": str(self.device), "threads": torch.get_num_threads(),
                "allocator": self.args.allocator, "world_size": self.ddp.world,
                "started": now(), "ended": None, "resumed": [],
            },
            "model_config": self.cfg.to_dict(),
            "train_config": train_settings(self.args, self.cfg.act_fn, self.seed),
            "params": parameter_counts(self.model),
            "data": {"tokenizer": self.data.tokenizer,
                     **{role: split.info if split is not None else None for role, split in roles.items()}},
            "steps": [], "evals": [], "epochs": [], "dynamics": [], "final": None,
        }

    # -- persistence ------------------------------------------------------------------------------

    def save_log(self) -> None:
        if self.ddp.main:
            write_json_atomic(self.log, self.log_path)

    def save_checkpoint(self) -> None:
        if not self.ddp.main:
            return
        atomic_save({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "position": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                         "epoch_nll": float(self.epoch_nll), "epoch_tokens": self.epoch_tokens,
                         "epoch_wall": self.epoch_wall},
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "log": self.log,
        }, self.ckpt_path)

    def restore(self) -> None:
        try:
            ckpt = torch.load(self.ckpt_path, map_location=self.device, weights_only=False)
        except FileNotFoundError:
            raise UsageError(f"--resume: no checkpoint {self.ckpt_path} for existing log {self.log_path}") from None
        except Exception as err:
            raise UsageError(f"unreadable checkpoint {self.ckpt_path}: {type(err).__name__}") from None
        log = ckpt["log"]
        check_resumable(log["model_config"], self.log["model_config"], "model config", self.ckpt_path)
        check_resumable(log["train_config"], self.log["train_config"], "training config", self.ckpt_path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        pos = ckpt["position"]
        self.step, self.epoch, self.batch_in_epoch = pos["step"], pos["epoch"], pos["batch_in_epoch"]
        self.epoch_nll, self.epoch_tokens, self.epoch_wall = pos["epoch_nll"], pos["epoch_tokens"], pos["epoch_wall"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        np.random.set_state(ckpt["rng"]["numpy"])
        random.setstate(ckpt["rng"]["python"])
        if ckpt["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        log["train_config"] = self.log["train_config"]  # num_epochs / max_steps may have changed
        self.log = log
        if self.finished():
            return  # nothing left to train; main() finishes or skips it
        # A run stopped mid-epoch by --max_steps evaluated that partial epoch; it goes on now, so
        # the partial entries are dropped and measured again when the epoch really ends.
        log["epochs"] = [e for e in log["epochs"] if not e.get("partial")]
        log["dynamics"] = [d for d in log["dynamics"] if not d.get("partial")]
        log["final"] = None
        log["status"] = "running"
        log["run"]["resumed"].append({"at_step": self.step, "time": now(), "command": self.args.command})
        log["run"]["ended"] = None

    # -- training ---------------------------------------------------------------------------------

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.train) / self.args.batch_size)

    def finished(self) -> bool:
        max_steps = self.args.max_steps
        return self.epoch > self.args.num_epochs or (max_steps is not None and self.step >= max_steps)

    def rank_batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """This rank's share of a global batch (all of it in a single process)."""
        share = index[self.ddp.rank :: self.ddp.world]
        if len(share) == 0:  # a short last batch: take part in the gradient sync with zero loss
            inputs, targets = self.data.train.batch(index[:1])
            return inputs, torch.full_like(targets, IGNORE_INDEX)
        return self.data.train.batch(share)

    def train_step(self, index: Tensor) -> tuple[Tensor, int, Tensor, dict | None]:
        """One optimizer step on a global batch: (global mean loss, scored tokens, grad norm, layer norms)."""
        inputs, targets = self.rank_batch(index)
        n_tokens = int(torch.clamp(self.data.train.lengths[index] - 1, min=0).sum())
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.bf16):
            nll = self.loss_module(inputs.to(self.device), targets.to(self.device))
        # Token-weighted mean over the global batch; DDP averages gradients over ranks, hence * world.
        (nll * (self.ddp.world / max(n_tokens, 1))).backward()
        log_now = (self.step + 1) % self.args.log_every == 0  # self.step counts completed steps
        layer_norms = {k: grad_norm(v) for k, v in layer_groups(self.model).items()} if log_now else None
        clip = self.args.grad_clip if self.args.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        global_nll = self.ddp.all_sum(nll.detach().reshape(1))[0]
        return global_nll, n_tokens, norm, layer_norms

    def evaluate(self, split: TokenizedSplit) -> dict:
        return evaluate(self.model, split, self.data.byte_lengths, self.args.eval_batch_size, self.device, self.ddp)

    def end_epoch(self, partial: bool) -> None:
        """Evaluate and record the epoch and its dynamics (the caller checkpoints and writes the log)."""
        val = self.evaluate(self.data.val)
        train_loss = float(self.epoch_nll) / self.epoch_tokens if self.epoch_tokens else math.nan
        self.log["epochs"].append({
            "epoch": self.epoch, "partial": partial, "steps": self.step, "train_loss": train_loss,
            "train_tokens": self.epoch_tokens, "val_loss": val["loss"], "val_ppl": val["ppl"],
            "val_bpb": val["bpb"], "val_bpb_approx": val["bpb_approx"],
            "val_bytes_per_token": val["bytes_per_token"], "wall_s": self.epoch_wall,
            "train_tokens_per_s": self.epoch_tokens / self.epoch_wall if self.epoch_wall else None,
        })
        epoch_steps = [s for s in self.log["steps"] if s["epoch"] == self.epoch and "layer_grad_norms" in s]
        layer_norms = {k: float(np.mean([s["layer_grad_norms"][k] for s in epoch_steps]))
                       for k in (epoch_steps[0]["layer_grad_norms"] if epoch_steps else {})}
        self.log["dynamics"].append({"epoch": self.epoch, "partial": partial, "layer_grad_norms": layer_norms,
                                     "mlp": mlp_activity(self.model, self.probe, self.device)})
        self.last_val = val

    def check_finite(self, loss: Tensor, norm: Tensor) -> None:
        if not (torch.isfinite(loss) and torch.isfinite(norm)):
            raise NonFiniteLoss(f"non-finite loss or gradient norm at step {self.step}")

    def train(self) -> None:
        args, train = self.args, self.data.train
        self.save_log()
        # Loop over epochs, not "until finished": a run resumed exactly where --max_steps stopped it
        # may still owe the evaluation of its partial epoch.
        while self.epoch <= self.args.num_epochs:
            order = epoch_order(self.seed, self.epoch, len(train))
            bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch, desc=f"{self.log_path.stem} epoch {self.epoch}",
                       disable=None if self.ddp.main else True, leave=False, dynamic_ncols=True)
            interval_start, interval_tokens = time.perf_counter(), 0
            stopped = False
            while self.batch_in_epoch < self.steps_per_epoch:
                if args.max_steps is not None and self.step >= args.max_steps:
                    stopped = True
                    break
                started = time.perf_counter()
                index = order[self.batch_in_epoch * args.batch_size : (self.batch_in_epoch + 1) * args.batch_size]
                nll, n_tokens, norm, layer_norms = self.train_step(index)
                self.step += 1
                self.batch_in_epoch += 1
                self.epoch_nll = self.epoch_nll + nll.double()  # stays on the device: no sync per step
                self.epoch_tokens += n_tokens
                interval_tokens += n_tokens
                self.epoch_wall += time.perf_counter() - started
                bar.update(1)
                if layer_norms is not None:  # a logging step
                    loss = nll / max(n_tokens, 1)
                    self.check_finite(loss, norm)
                    elapsed = time.perf_counter() - interval_start
                    entry = {"step": self.step, "epoch": self.epoch, "loss": loss.item(), "grad_norm": norm.item(),
                             "lr": self.optimizer.param_groups[0]["lr"], "tokens_per_s": interval_tokens / elapsed,
                             "layer_grad_norms": layer_norms}
                    self.log["steps"].append(entry)
                    bar.set_postfix(loss=f"{entry['loss']:.3f}", tok_s=f"{entry['tokens_per_s']:.0f}")
                    interval_start, interval_tokens = time.perf_counter(), 0
                if args.eval_every and self.step % args.eval_every == 0:
                    self.log["evals"].append({"step": self.step, "epoch": self.epoch,
                                              **{f"val_{k}": v for k, v in self.evaluate(self.data.val).items()}})
                if self.step % args.checkpoint_every == 0 and self.batch_in_epoch < self.steps_per_epoch:
                    self.check_finite(nll, norm)
                    self.save_checkpoint()
                    self.save_log()
            bar.close()
            recorded = self.log["epochs"] and (self.log["epochs"][-1]["epoch"], self.log["epochs"][-1]["steps"]) == (
                self.epoch, self.step)
            if stopped and (self.epoch_tokens == 0 or recorded):
                break  # stopped at an epoch boundary, or this partial epoch is already evaluated
            self.check_finite(torch.as_tensor(float(self.epoch_nll)), torch.tensor(0.0))
            self.end_epoch(partial=stopped)
            if not stopped:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                self.epoch_nll, self.epoch_tokens, self.epoch_wall = 0.0, 0, 0.0
            self.save_checkpoint()
            self.save_log()
            if stopped:
                break
        self.finish()

    def finish(self) -> None:
        final = {"step": self.step, "val": self.last_val or self.evaluate(self.data.val)}
        if self.data.test is not None:
            final["test"] = self.evaluate(self.data.test)
        self.log["final"] = final
        self.log["status"] = "complete"
        self.log["run"]["ended"] = now()
        self.save_log()

    def fail(self, reason: str) -> None:
        self.log["status"] = f"failed: {reason}"
        self.log["run"]["ended"] = now()
        self.save_log()


# ---------------------------------------------------------------------------------------------
# Entry point


def run_names(args: argparse.Namespace) -> list[tuple[str, int, str]]:
    """(activation, seed, run name) for every requested run, activations in the order given."""
    runs = []
    for activation in dict.fromkeys(canonical_activation(a) for a in args.activation):
        for seed in dict.fromkeys(args.seeds):
            matched = "_matched" if args.match_params and ACTIVATIONS[activation].gated else ""
            default = f"{activation}{matched}_seed{seed}"
            runs.append((activation, seed, default))
    if args.run_name:
        if len(runs) == 1:
            runs = [(runs[0][0], runs[0][1], args.run_name)]
        else:
            runs = [(a, s, f"{args.run_name}_{name}") for a, s, name in runs]
    return runs


def validate(args: argparse.Namespace) -> None:
    for flag in ("num_epochs", "batch_size", "max_length", "log_every", "checkpoint_every", "eval_batch_size",
                 "probe_sequences"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag} must be positive, got {getattr(args, flag)}")
    for flag in ("max_steps", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            raise UsageError(f"--{flag} must be positive, got {getattr(args, flag)}")
    if args.lr <= 0 or args.weight_decay < 0 or args.grad_clip < 0 or args.eval_every < 0:
        raise UsageError("--lr must be positive; --weight_decay, --grad_clip and --eval_every non-negative")
    for activation in args.activation:  # also checks the sizes, before any data is loaded
        try:
            model_config(args, activation, 50257)
        except ValueError as err:
            raise UsageError(f"invalid model: {err}") from None
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=args.output_dir):
            pass
    except OSError as err:
        raise UsageError(f"output folder {args.output_dir} is not writable: {err.strerror or err}") from None


def setup_distributed(device: torch.device) -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Distributed(dist.get_rank(), world)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.command = ["train_simple.py", *(sys.argv[1:] if argv is None else argv)]
    ddp = Distributed()
    try:
        validate(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        args.allocator = keep_freed_memory()
        device = pick_device(args.device)
        ddp = setup_distributed(device)
        if args.batch_size % ddp.world:
            raise UsageError(f"--batch_size {args.batch_size} is not divisible by {ddp.world} processes")
        if device.type == "cuda" and ddp.world > 1:
            device = torch.device("cuda", torch.cuda.current_device())
        runs = run_names(args)
        todo = []
        for activation, seed, name in runs:
            log_path = args.output_dir / f"{name}.json"
            if not log_path.exists():
                todo.append((activation, seed, name, False))
                continue
            try:
                existing = json.loads(log_path.read_text())
                status, settings = existing.get("status"), existing.get("train_config", {})
            except (OSError, ValueError, AttributeError):
                status, settings = "unreadable", {}
            same_length = all(settings.get(k) == getattr(args, k) for k in RESUMABLE_SETTINGS)
            if status == "complete" and (not args.resume or same_length):
                if ddp.main:
                    print(f"skip {name}: {log_path} is complete", file=sys.stderr)
                continue
            if not args.resume:
                raise UsageError(f"{log_path} exists (status {status!r}); pass --resume or another --run_name")
            todo.append((activation, seed, name, status == "complete"))
        if not todo:
            return 0
        data = load_data(args)
        failed = 0
        for activation, seed, name, was_complete in todo:
            run = Run(args, activation, seed, name, data, device, ddp)
            if args.resume and run.log_path.exists():
                run.restore()
                if run.finished() and was_complete:
                    if ddp.main:
                        print(f"skip {name}: already trained to the requested length", file=sys.stderr)
                    continue
            try:
                run.train()
            except NonFiniteLoss as err:
                run.fail(str(err))
                failed += 1
                print(f"error: {name}: {err}; the last good checkpoint is {run.ckpt_path}", file=sys.stderr)
                continue
            except KeyboardInterrupt:
                run.fail("interrupted")
                print(f"interrupted: {name}; resume with --resume", file=sys.stderr)
                return 130
            if ddp.main:
                final = run.log["final"]["val"]
                wall = sum(e["wall_s"] for e in run.log["epochs"])
                print(f"{name}: val loss {final['loss']:.4f}  ppl {final['ppl']:.2f}  bits/byte {final['bpb']:.4f}  "
                      f"train {wall:.0f}s  log {run.log_path}")
        return 1 if failed else 0
    except (UsageError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if ddp.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
