"""Train one model per (activation, learning rate, seed) on WikiText-2 and write one JSON log per run.

    python train_simple.py --activation relu --num_epochs 3 --batch_size 8

A run's life, in the order this file reads: parse the flags -> the runs they ask for, each with
every setting that can change its result -> decide each run from its existing log (train, resume,
skip or refuse), before any data is loaded -> load the data once -> for each run, holding its lock:
build or restore the training state, loop, evaluate, write the log.

Runs are reproducible (same seed, machine and threads: the same log apart from timings), paired
(for one seed every activation sees the same data order and the same initial weights outside the
MLP) and resumable (a checkpoint holds model, optimizer, the position in the data and what was
measured so far; plain tensors and values, loaded without unpickling code). SIGINT and SIGTERM
finish the step, checkpoint and exit 130/143. Under ``torchrun --nproc_per_node=N`` it trains with
DistributedDataParallel, the global batch still ``--batch_size``. The log schema is in the README.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import filelock
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from baselines import BASELINES_VERSION, baseline_losses
from cli import Parser
from data_utils import LAYOUTS, DataError, TokenizedSplit, atomic_save, default_cache_dir, load_split_text, load_tokenizer, \
    check_offline_inputs, sha256_bytes, token_byte_lengths, tokenize_split, tokenizer_fingerprint
from metrics import evaluate
from run_log import COMPLETE, FAILED, INTERRUPTED, NON_FINITE, RUNNING, SCHEMA_VERSION, WriteError, atomic_write, \
    failed_non_finite, last_step, read_log, remove_stale_temporaries, value_before_it_was_recorded, write_log
from transformer_from_scratch import ACTIVATIONS, IGNORE_INDEX, PRESETS, Transformer, TransformerConfig, activation_names, \
    canonical_activation, derived_generator, parameter_counts, parameter_groups, probe, to_hf_gpt2, \
    training_flops_per_token
from transformer_from_scratch.config import MLP_INITS
from transformer_from_scratch.hf import check_gpt2_expressible

# Argument groups whose flags can change a result. Their flags are recorded in the log (train_config,
# model_config, data) and compared before a run is skipped or resumed; flags of the other groups only
# change how a run executes and are recorded under run.flags.
TRAINING, MODEL, DATA = "training", "model", "data"
LENGTH_SETTINGS = ("num_epochs", "max_steps")  # may grow when a run is resumed
CHECKPOINT_FORMAT = 3
SCHEDULES = ("constant", "cosine")
N_PROMPTS, PROMPT_TOKENS, SAMPLE_TOKENS = 3, 24, 40  # text samples at each epoch end
LOSSES = ("fused", "textbook")
OPTIMIZER = "AdamW(betas=(0.9, 0.999), eps=1e-8)"

# What to do with a requested run (see decide()).
TRAIN, RESUME, SKIP, KEEP_FAILED, REFUSE = "train", "resume", "skip", "keep failed", "refuse"
MAX_SEED = 2**63 - 1  # a seed is a JSON int64 everywhere it is recorded


def warmup_setting(text: str) -> int | float:
    """--warmup_steps: a whole number of steps, or a fraction of the run in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value.is_integer() and value >= 0:
        return int(value)
    if 0 < value < 1:
        return value
    raise argparse.ArgumentTypeError(f"give a whole number of steps or a fraction in (0, 1), not {text}")


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit code 2."""


class NonFiniteLoss(Exception):
    """The loss or gradient norm stopped being finite."""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description="Train one model per MLP activation, learning rate and seed; write one JSON log per run.")
    g = p.add_argument_group("runs", "one run per activation and seed (and learning rate, see --lr)")
    g.add_argument("--activation", nargs="+", default=["gelu"], choices=activation_names(), metavar="NAME",
                   help=f"MLP activation(s), run one after another; one of {', '.join(activation_names())}")
    g.add_argument("--seeds", "--seed", nargs="+", type=int, default=[42], dest="seeds",
                   help="seed(s); every activation runs with every seed")
    g = p.add_argument_group(TRAINING)
    g.add_argument("--num_epochs", type=int, default=3, help="passes over the training split")
    g.add_argument("--max_steps", type=int, default=None, help="stop after this many optimizer steps in all")
    g.add_argument("--batch_size", type=int, default=8, help="sequences per optimizer step (global, also under DDP)")
    g.add_argument("--lr", nargs="+", type=float, default=[3e-4],
                   help="AdamW peak learning rate(s); several make a sweep: every activation runs with every lr")
    g.add_argument("--lr_schedule", choices=SCHEDULES, default="constant",
                   help="constant, or cosine decay to --min_lr_ratio of the peak at the last step")
    g.add_argument("--warmup_steps", "--warmup", type=warmup_setting, default=0, metavar="N_OR_FRACTION",
                   help="linear warmup from 0 to the peak: over N steps, or over a fraction of the run (0.05: "
                        "its first 5%%), so runs of other lengths keep the schedule's shape")
    g.add_argument("--min_lr_ratio", type=float, default=0.1, help="cosine: the last step's lr as a fraction of the peak")
    g.add_argument("--weight_decay", nargs="+", type=float, default=[0.01],
                   help="AdamW weight decay(s); several make a sweep, like --lr")
    g.add_argument("--grad_clip", type=float, default=1.0,
                   help="clip the global gradient norm to this (0: off); the log counts the steps clipped")
    g.add_argument("--eval_tokens", type=int, default=None, metavar="N",
                   help="evaluate during training on a fixed subset of about N scored tokens of each evaluated "
                        "split (the same for every run); the final numbers always use the whole splits. Default: "
                        "whole splits")
    g.add_argument("--probe_sequences", type=int, default=64,
                   help="validation sequences used to probe MLP unit activity each epoch")
    g.add_argument("--loss", choices=LOSSES, default=None,
                   help="fused: vocabulary-tiled linear + cross-entropy (fast on CPU); textbook: logits then "
                        "F.cross_entropy (fast on GPUs). Default: fused on CPU, textbook on CUDA/MPS")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (for GPUs; little gain on CPU)")
    g.add_argument("--bf16", action="store_true",
                   help="bf16 autocast, the fused loss's matmuls included: for GPUs, and CPUs with native bf16 "
                        "(AVX512-BF16 or AMX: AMD Zen 4, Intel Sapphire Rapids); far slower on CPUs without it "
                        "(AVX2, or AVX-512 without BF16). Runs of different precision are never pooled")
    g = p.add_argument_group(MODEL, "architecture (each flag is the TransformerConfig field of its name)")
    g.add_argument("--preset", choices=PRESETS, default="seed", help="architecture: the study's (seed) or GPT-2's")
    g.add_argument("--d_model", type=int, default=256, help="residual stream width")
    g.add_argument("--d_mlp", type=int, default=1024, help="MLP hidden width (before --match_params)")
    g.add_argument("--n_heads", type=int, default=4, help="attention heads")
    g.add_argument("--n_layers", type=int, default=2, help="transformer blocks")
    g.add_argument("--match_params", action="store_true",
                   help="shrink gated (GLU) MLPs to 2/3 width so every MLP has the same parameter count")
    g.add_argument("--attn_impl", choices=("einsum", "sdpa"), default="einsum", help="attention kernel")
    g.add_argument("--final_ln", action=argparse.BooleanOptionalAction, default=None,
                   help="a LayerNorm before the unembedding (default: the preset's; gpt2 always has one)")
    g.add_argument("--mlp_init", choices=MLP_INITS, default="standard",
                   help="variance_matched: scale W_out's init so every activation starts with relu's MLP output "
                        "variance")
    g.add_argument("--dropout", type=float, default=0.0,
                   help="embedding, attention and residual dropout probability (0: none, the study)")
    g.add_argument("--tie_embeddings", action="store_true",
                   help="the unembedding is the token embedding's transpose (halves the embedding parameters)")
    g = p.add_argument_group(DATA)
    g.add_argument("--layout", choices=LAYOUTS, default="lines",
                   help="lines: one sequence per line, padded (the study); packed: contiguous blocks")
    g.add_argument("--max_length", type=int, default=128, help="tokens per sequence (the model's n_ctx)")
    g.add_argument("--train_split", default="train", help="split (or text file) to train on")
    g.add_argument("--val_split", default="validation", help="split (or text file) to evaluate on every epoch")
    g.add_argument("--test_split", default="test",
                   help="split evaluated once at the end; skipped when it is the train or val split, or 'none'")
    g = p.add_argument_group("sources", "where data comes from (the log records what was read: sha256)")
    g.add_argument("--data_dir", type=Path, default=None,
                   help="folder with WikiText-2 wiki.*.raw files (else $WIKITEXT2_DIR, else the hub)")
    g.add_argument("--tokenizer", default=None, help="tokenizer hub name or local folder (else $GPT2_TOKENIZER, else gpt2)")
    g.add_argument("--cache_dir", type=Path, default=None, help="tokenized-data cache (else $ACTIVATION_STUDY_CACHE)")
    g = p.add_argument_group("execution")
    g.add_argument("--output_dir", type=Path, default=Path("results"), help="where logs and checkpoints go")
    g.add_argument("--run_name", default=None,
                   help="log name (<output_dir>/<run_name>.json); default <activation>[_matched]_seed<seed>; "
                        "with several runs it is used as a prefix")
    g.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="where to train (auto: a GPU if there is one, else the CPU)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    g.add_argument("--log_every", type=int, default=10,
                   help="record a step entry every N steps (and rewrite the log: it always shows where the run is)")
    g.add_argument("--tensorboard", type=Path, default=None, metavar="DIR",
                   help="also write the logged scalars for TensorBoard to DIR/<run_name> (needs tensorboard)")
    g.add_argument("--status_every", type=float, default=60.0,
                   help="without a terminal, print a status line to stderr at most every N seconds")
    g.add_argument("--eval_every", type=int, default=0, help="also evaluate every N steps (0: at epoch ends only)")
    g.add_argument("--evals_per_epoch", type=int, default=0,
                   help="also evaluate N - 1 times within each epoch, evenly spaced (when --eval_every is 0)")
    g.add_argument("--eval_batch_size", type=int, default=32, help="sequences per evaluation batch")
    g.add_argument("--checkpoint_every", type=int, default=200, help="checkpoint every N steps (and every epoch)")
    g.add_argument("--export_hf", type=Path, default=None, metavar="DIR",
                   help="save each complete gpt2-preset run as a Hugging Face model (and its tokenizer) in DIR/<run_name>")
    g = p.add_argument_group("existing runs", "what to do with a run that has a log already (see README)")
    g.add_argument("--resume", action="store_true",
                   help="continue unfinished runs from their checkpoints; train complete ones further when "
                        "--num_epochs/--max_steps grew")
    g.add_argument("--overwrite", action="store_true", help="replace existing logs and checkpoints of these runs")
    return p


# ---------------------------------------------------------------------------------------------
# Settings: the runs a command asks for, and every setting that can change their results


def group_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, title: str) -> dict:
    """The parsed values of one argument group's flags, JSON-ready (paths as strings)."""
    group = next(g for g in parser._action_groups if g.title == title)  # argparse keeps its groups here
    values = {action.dest: getattr(args, action.dest) for action in group._group_actions}
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


@dataclass(frozen=True)
class RunSpec:
    """One requested run: its name, its files, and its settings as the log records them."""

    name: str
    output_dir: Path
    train_config: dict  # activation, seed, the training flags and the fixed choices of this script
    model_flags: dict  # TransformerConfig fields set by flags, act_fn included
    data_flags: dict

    @property
    def log_path(self) -> Path:
        return self.output_dir / f"{self.name}.json"

    @property
    def ckpt_path(self) -> Path:
        return self.output_dir / "checkpoints" / f"{self.name}.pt"

    @property
    def lock_path(self) -> Path:
        return self.output_dir / "checkpoints" / f"{self.name}.lock"

    @property
    def seed(self) -> int:
        return self.train_config["seed"]

    def settings(self) -> dict[str, dict]:
        """The settings compared with an existing log, by the log section that records them."""
        return {"train_config": self.train_config, "model_config": self.model_flags, "data": self.data_flags}

    def model_config(self, d_vocab: int) -> TransformerConfig:
        return TransformerConfig(d_vocab=d_vocab, n_ctx=self.data_flags["max_length"], **self.model_flags)


def run_specs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[RunSpec]:
    """Every requested (activation, seed) run, activations in the order given."""
    training, model, data = (group_flags(parser, args, title) for title in (TRAINING, MODEL, DATA))
    fixed = {"optimizer": OPTIMIZER, "dynamic_padding": True}
    lrs, decays = list(dict.fromkeys(args.lr)), list(dict.fromkeys(args.weight_decay))
    runs = [(a, lr, wd, s) for a in dict.fromkeys(map(canonical_activation, args.activation)) for lr in lrs
            for wd in decays for s in dict.fromkeys(args.seeds)]
    specs = []
    for activation, lr, weight_decay, seed in runs:
        model_flags = resolved_model_flags({**model, "act_fn": activation})
        matched = "_matched" if ACTIVATIONS[activation].gated and args.match_params else ""
        swept = (f"_lr{short_float(lr)}" if len(lrs) > 1 else "") + (
            f"_wd{short_float(weight_decay)}" if len(decays) > 1 else "")
        name = f"{activation}{matched}{swept}_seed{seed}"
        if args.run_name:
            name = args.run_name if len(runs) == 1 else f"{args.run_name}_{name}"
        train_config = {"activation": activation, "seed": seed, **training, "lr": lr, "weight_decay": weight_decay, **fixed}
        specs.append(RunSpec(name, args.output_dir, train_config, model_flags, data))
    check_distinct_names(specs)
    return specs


def resolved_model_flags(flags: dict) -> dict:
    """The model flags as TransformerConfig resolves them (an alias to its activation, final_ln None to
    the preset's choice): what the log's model_config records, so what a later request is compared with."""
    try:
        cfg = TransformerConfig(**flags)
    except ValueError as err:
        raise UsageError(f"invalid model: {err}") from None
    return {key: getattr(cfg, key) for key in flags}


def check_distinct_names(specs: list[RunSpec]) -> None:
    """Two requested runs may not share a log: the second would skip or resume the first."""
    first: dict[str, RunSpec] = {}
    for spec in specs:
        if spec.name in first:
            a, b = first[spec.name].train_config, spec.train_config
            differ = ", ".join(f"{k} {a[k]!r} and {b[k]!r}" for k in a if a[k] != b[k])
            raise UsageError(f"two requested runs would both be named {spec.name!r} ({differ}): give values that "
                             f"differ in their first 7 significant digits, or separate commands with --run_name")
        first[spec.name] = spec


def short_float(value: float) -> str:
    """3e-4 for 0.0003, 1.5e-3 for 0.0015: the way people write learning rates."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def validate(args: argparse.Namespace) -> None:
    for flag in ("num_epochs", "batch_size", "max_length", "log_every", "checkpoint_every", "eval_batch_size",
                 "probe_sequences"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag} must be positive, got {getattr(args, flag)}")
    for flag in ("max_steps", "threads", "eval_tokens"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            raise UsageError(f"--{flag} must be positive, got {getattr(args, flag)}")
    for flag in ("lr", "min_lr_ratio", "weight_decay", "grad_clip", "dropout"):  # nan passes every comparison below
        values = getattr(args, flag) if isinstance(getattr(args, flag), list) else [getattr(args, flag)]
        if not all(map(math.isfinite, values)):
            raise UsageError(f"--{flag} must be a finite number, got {' '.join(map(str, values))}")
    for seed in args.seeds:
        if not 0 <= seed <= MAX_SEED:
            raise UsageError(f"--seeds must be in 0..2^63-1, got {seed}")
    if args.run_name is not None and not plain_file_name(args.run_name):
        raise UsageError(f"--run_name must be a plain file name (no '/', not '.', '..' or hidden), got {args.run_name!r}")
    if min(args.lr) <= 0 or not 0 <= args.min_lr_ratio <= 1:
        raise UsageError(f"--lr must be positive and --min_lr_ratio in [0, 1], got {args.lr} and {args.min_lr_ratio}")
    for flag in ("weight_decay", "grad_clip", "eval_every", "evals_per_epoch", "warmup_steps", "dropout"):
        value = min(getattr(args, flag)) if flag == "weight_decay" else getattr(args, flag)
        if value < 0:
            raise UsageError(f"--{flag} must be non-negative, got {value}")
    if args.preset == "gpt2" and args.final_ln is False:
        raise UsageError("--no-final_ln: the gpt2 preset has a final LayerNorm, as GPT-2 does")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues runs and --overwrite replaces them: choose one")
    check_writable(args.output_dir / "checkpoints", "output folder")
    if args.export_hf is not None:
        check_writable(args.export_hf, "--export_hf folder")


def check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and write a file in it: an unusable folder is found before any training."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise UsageError(f"{what} {folder} is not writable: {err.strerror or err}") from None


def plain_file_name(name: str) -> bool:
    """A name that stays inside the folder it is joined to, and is not one of our hidden temporaries."""
    return bool(name) and not name.startswith(".") and not any(c in name for c in "/\\\0")


# ---------------------------------------------------------------------------------------------
# Decide: train, resume, skip or refuse, from the existing log; the one place this is decided


@dataclass(frozen=True)
class Decision:
    action: str  # TRAIN, RESUME, SKIP, KEEP_FAILED or REFUSE
    message: str = ""


def at_least(requested: int | None, saved) -> bool:
    """Whether a length setting (None: no limit) asks for at least as much training as before."""
    if not (saved is None or isinstance(saved, int)):
        return False
    return (math.inf if requested is None else requested) >= (math.inf if saved is None else saved)


def differing_settings(log: dict, spec: RunSpec, allow_longer: bool) -> list[str]:
    """'key saved (requested ...)' for every setting in which an existing log differs from the request.

    A longer run can continue a shorter one only under a constant learning rate: a decaying schedule
    is laid out over the run's length, so its steps so far would differ."""
    allow_longer = allow_longer and spec.train_config["lr_schedule"] == "constant"
    differ = []
    for section, requested in spec.settings().items():
        saved = log.get(section) or {}
        for key, value in requested.items():
            old = saved.get(key, value_before_it_was_recorded(key, requested))
            if old == value or (allow_longer and key in LENGTH_SETTINGS and at_least(value, old)):
                continue
            differ.append(f"{key} {old!r} (requested {value!r})")
    return differ


def decide(spec: RunSpec, resume: bool, overwrite: bool) -> Decision:
    """What to do with one requested run, from its existing log and checkpoint.

    --overwrite: train | no log and no checkpoint: train | a checkpoint whose log is missing or
    unreadable: resume (rebuilding the log) with --resume, else refuse | complete, same settings: skip |
    complete, longer num_epochs/max_steps under --resume: resume | other settings: refuse | failed with
    a non-finite loss: stays failed | unfinished: resume with --resume (from step 0 if it stopped
    before its first checkpoint), else refuse. Only --overwrite ever deletes a checkpoint.
    """
    if overwrite:
        return Decision(TRAIN)
    has_checkpoint = spec.ckpt_path.exists()
    try:
        log = read_log(spec.log_path) if spec.log_path.exists() else None
    except ValueError as err:
        if not has_checkpoint:
            return Decision(REFUSE, f"{spec.log_path} is {err}; --overwrite replaces it")
        return from_checkpoint_alone(spec, resume, f"its log {spec.log_path} is {err}")
    if log is None:
        return from_checkpoint_alone(spec, resume, f"its log {spec.log_path} is missing") if has_checkpoint \
            else Decision(TRAIN)
    status = log["status"]
    changed, changed_beyond_length = (differing_settings(log, spec, allow_longer) for allow_longer in (False, True))
    if changed_beyond_length or (changed and not resume):
        hint = "" if changed_beyond_length else " (or --resume to train it further)"
        return Decision(REFUSE, f"{spec.log_path} holds a run ({status}) with other settings: {'; '.join(changed)}; "
                                f"choose another --output_dir or --run_name{hint}")
    if failed_non_finite(log):
        return Decision(KEEP_FAILED, f"{spec.name} {status}; --overwrite trains it again")
    if status == COMPLETE:
        if not changed:
            return Decision(SKIP, f"skip {spec.name}: {spec.log_path} is complete with these settings")
        if not has_checkpoint:
            return Decision(REFUSE, f"{spec.name}: no checkpoint {spec.ckpt_path} to train the complete run "
                                    f"further from; --overwrite trains it again from step 0")
        return Decision(RESUME, f"{spec.name}: training the complete run further")
    if not resume:
        return Decision(REFUSE, f"{spec.log_path} holds an unfinished run ({status}, step {last_step(log)}); "
                                f"--resume continues it, --overwrite starts it again")
    if not has_checkpoint:
        return Decision(TRAIN, f"{spec.name}: starting again from step 0 ({status} before its first checkpoint)")
    return Decision(RESUME, f"{spec.name}: resuming from its checkpoint ({status} at step {last_step(log)})")


def from_checkpoint_alone(spec: RunSpec, resume: bool, problem: str) -> Decision:
    """A checkpoint holds the run's whole history, so a lost or damaged log is rebuilt from it
    (restore_state checks its settings); without --resume nothing is touched."""
    if resume:
        return Decision(RESUME, f"{spec.name}: {problem}; rebuilding it from checkpoint {spec.ckpt_path} and resuming")
    return Decision(REFUSE, f"{spec.name}: {problem}, but checkpoint {spec.ckpt_path} holds the run: --resume rebuilds "
                            f"the log from it and continues, --overwrite deletes both and starts again")


class RunLocked(Exception):
    """Another process holds this run's lock."""


class RunLock:
    """One writer per run: an OS file lock, released when the process ends, also by kill -9."""

    def __init__(self, spec: RunSpec, enabled: bool = True) -> None:
        self.spec, self.lock = spec, filelock.FileLock(spec.lock_path, timeout=0) if enabled else None

    def __enter__(self) -> RunLock:
        try:
            if self.lock is not None:
                self.lock.acquire()
        except filelock.Timeout:
            raise RunLocked(f"{self.spec.name} is being trained by another process (lock {self.spec.lock_path})") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.lock is not None:
            self.lock.release()


# ---------------------------------------------------------------------------------------------
# Data


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
    baselines: dict = field(default_factory=dict)  # n-gram baselines on these splits (baselines.py)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def roles(self) -> dict[str, TokenizedSplit | None]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def describe(self, data_flags: dict) -> dict:
        return {**data_flags, "tokenizer": self.tokenizer.name_or_path, "tokenizer_sha256": self.tokenizer_sha256,
                **{role: split.info if split is not None else None for role, split in self.roles.items()},
                "test_skipped": self.test_skipped, "baselines": self.baselines,
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
    train_text, val_text = load_split_text(args.train_split, args.data_dir), load_split_text(args.val_split, args.data_dir)
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
    data.baselines = cached_baselines(data, args.cache_dir)
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
    subset = TokenizedSplit(split.tokens[chosen], split.lengths[chosen])
    subset.info = {**split.info, "sequences": len(subset), "tokens": int(scored[len(chosen) - 1])}
    return subset


def cached_baselines(data: Data, cache_dir: Path | None) -> dict:
    """The n-gram baselines of these splits, computed once per data identity (seconds) and cached."""
    evaluated = {role: split for role, split in (("val", data.val), ("test", data.test)) if split is not None}
    identity = {"version": BASELINES_VERSION, "tokenizer": data.tokenizer_sha256, "vocab": data.vocab_size,
                **{role: {k: split.info[k] for k in ("sha256", "layout", "max_length")}
                   for role, split in (("train", data.train), *evaluated.items())}}
    key = sha256_bytes(json.dumps(identity, sort_keys=True).encode())[:32]
    path = (cache_dir or default_cache_dir()) / f"baselines-{key}.json"
    try:
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and cached.get("identity") == identity:
            return cached["baselines"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    as_arrays = {role: (split.tokens.numpy(), split.lengths.numpy(), split.info["bytes"])
                 for role, split in evaluated.items()}
    computed = baseline_losses((data.train.tokens.numpy(), data.train.lengths.numpy()), as_arrays, data.vocab_size, "val")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({"identity": identity, "baselines": computed}).encode())
    except (OSError, WriteError) as err:
        print(f"warning: could not cache the n-gram baselines: {err}", file=sys.stderr)
    return computed


# ---------------------------------------------------------------------------------------------
# The machine: device, threads, DDP, allocator, signals


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

    def from_main(self, value):
        """Rank 0's value on every rank (a decision taken under rank 0's lock)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup_distributed(device: torch.device) -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Distributed(dist.get_rank(), world)


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


def default_loss(device: torch.device) -> str:
    """The fused loss pays off on CPU caches and page faults; GPUs have neither problem."""
    return "fused" if device.type == "cpu" else "textbook"


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


class StopSignal:
    """SIGINT or SIGTERM asks the run to stop after the current step; a second one stops at once.

    A context manager: the previous handlers come back on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> StopSignal:
        self.previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step (again to stop at once)", file=sys.stderr)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


def git_state() -> dict:
    """The commit this code is at, and whether tracked files differ from it (``git_dirty``); None
    outside a git checkout. Untracked files (logs, results) do not make a tree dirty."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD") or None
        return {"git_commit": commit, "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Runtime:
    """How runs execute here: everything a run needs that is not one of its settings."""

    device: torch.device
    ddp: Distributed
    stop: StopSignal
    flags: dict  # the execution and sources flags
    facts: dict  # command, versions, machine: recorded under run


# ---------------------------------------------------------------------------------------------
# Training state: what a checkpoint holds, and what the log is written from


@dataclass
class Progress:
    """Completed steps, the epoch under way, the next batch in it, and that epoch's running sums."""

    step: int = 0
    epoch: int = 1
    batch_in_epoch: int = 0
    epoch_nll: float = 0.0
    epoch_clipped: int = 0  # steps of this epoch whose gradient norm was clipped
    epoch_tokens: int = 0
    epoch_wall: float = 0.0
    tokens_seen: int = 0  # scored training tokens since step 0
    train_seconds: float = 0.0  # time spent in training steps since step 0 (evaluations excluded)


@dataclass
class History:
    """Everything the run has measured so far, and when it started and resumed."""

    started: str = field(default_factory=now)
    git: dict = field(default_factory=dict)  # git_commit, git_dirty of the first segment (resumed: the later ones)
    resumed: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    epochs: list = field(default_factory=list)
    dynamics: list = field(default_factory=list)
    samples: list = field(default_factory=list)
    last_val: dict | None = None  # {"step", "metrics", "test"} of the latest whole-split evaluation at an epoch end


@dataclass
class TrainingState:
    model: Transformer
    optimizer: torch.optim.Optimizer
    forward: nn.Module  # the module computing the summed NLL: the model, wrapped for DDP and compile
    progress: Progress
    history: History


class NLLSum(nn.Module):
    """(tokens, targets) -> summed NLL; the module DDP wraps, so gradients sync on backward."""

    def __init__(self, model: Transformer, fused: bool) -> None:
        super().__init__()
        self.model, self.fused = model, fused

    def forward(self, tokens: Tensor, targets: Tensor) -> Tensor:
        return self.model.nll_sum(tokens, targets, fused=self.fused)


def fresh_state(spec: RunSpec, data: Data, rt: Runtime) -> TrainingState:
    torch.manual_seed(spec.seed)  # nothing draws from the global generator; seeded in case something does
    model = Transformer(spec.model_config(data.vocab_size), seed=spec.seed).to(rt.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.train_config["lr"],
                                  weight_decay=spec.train_config["weight_decay"],
                                  fused=rt.device.type in ("cpu", "cuda"))
    forward: nn.Module = NLLSum(model, fused=spec.train_config["loss"] == "fused")
    if rt.ddp.world > 1:
        forward = nn.parallel.DistributedDataParallel(forward)
    if spec.train_config["compile"]:
        forward = torch.compile(forward)
    return TrainingState(model, optimizer, forward, Progress(),
                         History(git={key: rt.facts[key] for key in ("git_commit", "git_dirty")}))


def save_checkpoint(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime) -> None:
    """Only tensors and plain values, so that resuming loads it with weights_only=True."""
    if rt.ddp.main:
        progress = {**asdict(state.progress), "epoch_nll": float(state.progress.epoch_nll),
                    "epoch_clipped": int(state.progress.epoch_clipped)}
        atomic_save({"format": CHECKPOINT_FORMAT, "settings": spec.settings(), "data": data.identity(),
                     "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                     "progress": progress, "history": asdict(state.history), "rng": rng_state(rt.device)},
                    spec.ckpt_path)


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """The global generators' states: dropout draws from them, so a resumed run must continue them."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_state(states: dict[str, Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)


def restore_state(spec: RunSpec, data: Data, rt: Runtime) -> TrainingState:
    """The state saved in the run's checkpoint, loaded without executing anything in the file."""
    try:
        ckpt = torch.load(spec.ckpt_path, map_location=rt.device, weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"--resume: no checkpoint {spec.ckpt_path}") from None
    except Exception as err:  # UnpicklingError for foreign objects, RuntimeError for a damaged file, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"refusing checkpoint {spec.ckpt_path}: not a plain-tensor checkpoint ({reason[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{spec.ckpt_path} is not a format-{CHECKPOINT_FORMAT} checkpoint of this script")
    differ = differing_settings(ckpt["settings"], spec, allow_longer=True)
    if differ:
        raise UsageError(f"checkpoint {spec.ckpt_path} was written with other settings: {'; '.join(differ)}")
    if ckpt["data"] != data.identity():
        changed = [role for role in ckpt["data"] if ckpt["data"][role] != data.identity()[role]]
        raise UsageError(f"checkpoint {spec.ckpt_path} was trained on other data ({', '.join(changed)} differ)")
    state = fresh_state(spec, data, rt)
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.progress = Progress(**ckpt["progress"])
    if "rng" in ckpt:  # checkpoints before dropout existed have none, and needed none
        set_rng_state(ckpt["rng"], rt.device)
    state.history = History(**ckpt["history"])
    if not finished(spec, state.progress):
        # A run stopped mid-epoch by --max_steps evaluated that partial epoch; it goes on now, so the
        # partial entries are dropped and measured again when the epoch really ends.
        state.history.epochs = [e for e in state.history.epochs if not e["partial"]]
        state.history.dynamics = [d for d in state.history.dynamics if not d["partial"]]
        state.history.samples = [d for d in state.history.samples if not d["partial"]]
    state.history.resumed.append({"at_step": state.progress.step, "time": now(), "command": rt.facts["command"],
                                  "git_commit": rt.facts["git_commit"], "git_dirty": rt.facts["git_dirty"]})
    return state


def build_log(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, status: str, final: dict | None = None) -> dict:
    """The run's log, written from its state: nothing here is read back to steer the run."""
    h, p = state.history, state.progress
    return {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "run": {"name": spec.name, **rt.facts, **h.git, "threads": torch.get_num_threads(), "flags": rt.flags,
                "started": h.started, "ended": None if status == RUNNING else now(), "resumed": h.resumed},
        "model_config": {**state.model.cfg.to_dict(), "training_flops_per_token": training_flops_per_token(state.model.cfg)},
        "train_config": spec.train_config,
        "params": parameter_counts(state.model),
        "data": data.describe(spec.data_flags),
        "progress": {"step": p.step, "epoch": p.epoch, "batch_in_epoch": p.batch_in_epoch},
        "steps": h.steps, "evals": h.evals, "epochs": h.epochs, "dynamics": h.dynamics, "samples": h.samples,
        "final": final,
    }


def save_log(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, status: str, final: dict | None = None) -> None:
    if rt.ddp.main:
        write_log(build_log(spec, state, data, rt, status, final), spec.log_path)


# ---------------------------------------------------------------------------------------------
# The loop


def epoch_order(seed: int, epoch: int, n: int) -> Tensor:
    """The training order of one epoch: a function of seed and epoch only, so every activation
    sees the same order and a resumed run picks up exactly where it stopped."""
    return torch.randperm(n, generator=derived_generator(seed, f"data order, epoch {epoch}"))


def steps_per_epoch(spec: RunSpec, data: Data) -> int:
    return math.ceil(len(data.train) / spec.train_config["batch_size"])


def total_steps(spec: RunSpec, data: Data) -> int:
    """The run's length in optimizer steps: what a decaying schedule is laid out over."""
    by_epochs = spec.train_config["num_epochs"] * steps_per_epoch(spec, data)
    max_steps = spec.train_config["max_steps"]
    return by_epochs if max_steps is None else min(by_epochs, max_steps)


def learning_rate(step: int, peak: float, schedule: str, warmup: int | float, total: int, min_ratio: float) -> float:
    """The learning rate of optimizer step ``step`` (1-based): linear warmup to ``peak`` over
    ``warmup`` steps (a float in (0, 1): that fraction of ``total``, rounded), then constant, or a
    cosine from the peak down to min_ratio * peak at ``total``."""
    warmup_steps = round(warmup * total) if isinstance(warmup, float) else warmup
    if step <= warmup_steps:
        return peak * step / warmup_steps
    if schedule == "constant":
        return peak
    progress = (step - warmup_steps) / max(total - warmup_steps, 1)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def evaluation_due(rt: Runtime, progress: Progress, per_epoch: int) -> bool:
    """Whether to evaluate after this step, within an epoch (its end is evaluated anyway):
    --eval_every counts steps since step 0; --evals_per_epoch spaces evaluations evenly within each
    epoch, counted from the epoch's start, so none falls just after an epoch's end."""
    if progress.batch_in_epoch >= per_epoch:
        return False
    if rt.flags["eval_every"]:
        return progress.step % rt.flags["eval_every"] == 0
    if rt.flags["evals_per_epoch"]:
        return progress.batch_in_epoch % math.ceil(per_epoch / rt.flags["evals_per_epoch"]) == 0
    return False


def compute_so_far(spec: RunSpec, state: TrainingState) -> dict:
    """Cumulative training tokens, FLOPs and seconds: the x axes of compute-matched comparisons."""
    p = state.progress
    return {"train_tokens_seen": p.tokens_seen, "train_flops": p.tokens_seen * training_flops_per_token(state.model.cfg),
            "train_seconds": p.train_seconds}


def finished(spec: RunSpec, progress: Progress) -> bool:
    max_steps = spec.train_config["max_steps"]
    return progress.epoch > spec.train_config["num_epochs"] or (max_steps is not None and progress.step >= max_steps)


def grad_norm(params: list[nn.Parameter]) -> float:
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def rank_batch(data: Data, index: Tensor, ddp: Distributed) -> tuple[Tensor, Tensor]:
    """This rank's share of a global batch (all of it in a single process)."""
    share = index[ddp.rank :: ddp.world]
    if len(share) == 0:  # a short last batch: take part in the gradient sync with zero loss
        inputs, targets = data.train.batch(index[:1])
        return inputs, torch.full_like(targets, IGNORE_INDEX)
    return data.train.batch(share)


def train_step(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, index: Tensor,
               record: bool) -> tuple[Tensor, int, Tensor, dict | None]:
    """One optimizer step on a global batch: (global summed NLL, scored tokens, grad norm, per-group
    grad norms when ``record``)."""
    cfg = spec.train_config
    inputs, targets = rank_batch(data, index, rt.ddp)
    n_tokens = int(torch.clamp(data.train.lengths[index] - 1, min=0).sum())
    state.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=cfg["bf16"]):
        nll = state.forward(inputs.to(rt.device), targets.to(rt.device))
    # Token-weighted mean over the global batch; DDP averages gradients over ranks, hence * world.
    (nll * (rt.ddp.world / max(n_tokens, 1))).backward()
    group_norms = {k: grad_norm(v) for k, v in parameter_groups(state.model).items()} if record else None
    norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg["grad_clip"] or math.inf)
    lr = learning_rate(state.progress.step + 1, cfg["lr"], cfg["lr_schedule"], cfg["warmup_steps"],
                       total_steps(spec, data), cfg["min_lr_ratio"])
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.optimizer.step()
    return rt.ddp.all_sum(nll.detach().reshape(1))[0], n_tokens, norm, group_norms


def check_finite(step: int, *values: Tensor | float) -> None:
    if not all(math.isfinite(float(v)) for v in values):
        raise NonFiniteLoss(f"{NON_FINITE} loss or gradient norm at step {step}")


def validation_metrics(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, split: TokenizedSplit) -> dict:
    return evaluate(state.model, split, data.byte_lengths, rt.flags["eval_batch_size"], rt.device,
                    rt.ddp.rank, rt.ddp.world, rt.ddp.all_sum, fused=spec.train_config["loss"] == "fused")


def report_metrics(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime) -> dict:
    """The test (report) split's metrics at an evaluation, {} without one: so that the point chosen
    on the validation (selection) split can be reported on a split nothing was chosen on."""
    if data.test is None:
        return {}
    return validation_metrics(spec, state, data, rt, data.during_training["test"])


def prefixed(prefix: str, metrics: dict, keys: tuple[str, ...] | None = None) -> dict:
    """``metrics`` under the log's names for its split: {"val_loss": ...}."""
    return {f"{prefix}_{k}": v for k, v in metrics.items() if keys is None or k in keys}


def end_epoch(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, partial: bool) -> None:
    """Evaluate the epoch and record it with its dynamics."""
    p, h = state.progress, state.history
    check_finite(p.step, p.epoch_nll)
    val = validation_metrics(spec, state, data, rt, data.during_training["val"])
    test = report_metrics(spec, state, data, rt)
    if data.during_training["val"] is data.val:  # the whole splits: the final numbers may reuse them
        h.last_val = {"step": p.step, "metrics": val, "test": test}
    h.epochs.append({
        "epoch": p.epoch, "partial": partial, "steps": p.step, "train_loss": float(p.epoch_nll) / p.epoch_tokens,
        "clipped_fraction": int(p.epoch_clipped) / max(p.batch_in_epoch, 1),
        "train_tokens": p.epoch_tokens, "val_loss": val["loss"], "val_ppl": val["ppl"], "val_bpb": val["bpb"],
        "val_bpb_approx": val["bpb_approx"], "val_bytes_per_token": val["bytes_per_token"],
        **prefixed("test", test, ("loss", "ppl", "bpb")), "wall_s": p.epoch_wall,
        "train_tokens_per_s": p.epoch_tokens / p.epoch_wall if p.epoch_wall else None, **compute_so_far(spec, state),
    })
    recorded = [s["layer_grad_norms"] for s in h.steps if s["epoch"] == p.epoch]
    n_probe = min(spec.train_config["probe_sequences"], len(data.val))
    inputs, targets = data.val.batch(torch.arange(n_probe))
    h.dynamics.append({
        "epoch": p.epoch, "partial": partial,
        "layer_grad_norms": {k: sum(r[k] for r in recorded) / len(recorded) for k in (recorded[0] if recorded else {})},
        **probe(state.model, inputs.to(rt.device), (targets != IGNORE_INDEX).to(rt.device)),
    })
    h.samples.append({"epoch": p.epoch, "partial": partial, "step": p.step,
                      "prompts": continue_prompts(state.model, data, spec.seed, rt.device)})


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


def epoch_recorded(state: TrainingState) -> bool:
    """Whether the epoch under way was already evaluated at the current step (a resumed stop point)."""
    last = state.history.epochs[-1] if state.history.epochs else None
    return last is not None and (last["epoch"], last["steps"]) == (state.progress.epoch, state.progress.step)


def stop_requested(rt: Runtime) -> bool:
    """Whether a signal asked to stop, agreed by every rank so that they stop at the same step."""
    asked = rt.stop.signum is not None
    return bool(rt.ddp.all_sum(torch.tensor([float(asked)])) > 0) if rt.ddp.world > 1 else asked


def tensorboard_writer(folder: Path | None):
    """A TensorBoard SummaryWriter for ``folder``, or None (run_all checked that tensorboard is there)."""
    if folder is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(folder))


class Watch:
    """What a person watching a run sees: in a terminal one progress bar to the run's real end (steps,
    ETA, loss, tokens/s, achieved TFLOP/s); without one, a status line on stderr every ``every`` seconds;
    with --tensorboard, the log's scalars as TensorBoard events."""

    SCALARS = {"loss": "train/loss", "grad_norm": "train/grad_norm", "lr": "train/lr", "tokens_per_s": "train/tokens_per_s",
               "val_loss": "val/loss", "val_bpb": "val/bits_per_byte", "test_loss": "test/loss", "test_bpb": "test/bits_per_byte"}

    def __init__(self, spec: RunSpec, state: TrainingState, data: Data, rt: Runtime) -> None:
        folder = rt.flags["tensorboard"]
        self.writer = tensorboard_writer(Path(folder) / spec.name if folder and rt.ddp.main else None)
        self.spec, self.total, self.every = spec, total_steps(spec, data), rt.flags["status_every"]
        self.flops_per_token = training_flops_per_token(state.model.cfg)
        self.bar = tqdm(total=self.total, initial=state.progress.step, desc=spec.name, dynamic_ncols=True,
                        disable=None if rt.ddp.main else True)
        self.lines = rt.ddp.main and self.bar.disable
        self.last_line = time.monotonic()

    def scalars(self, entry: dict, step: int) -> None:
        if self.writer is not None:
            for key, tag in self.SCALARS.items():
                if isinstance(entry.get(key), (int, float)):
                    self.writer.add_scalar(tag, entry[key], step)

    def step(self, progress: Progress, entry: dict | None) -> None:
        self.bar.update(1)
        if entry is None:
            return
        self.scalars(entry, progress.step)
        tflops = entry["tokens_per_s"] * self.flops_per_token / 1e12
        self.bar.set_postfix(loss=f"{entry['loss']:.3f}", tok_s=f"{entry['tokens_per_s']:.0f}", TFLOPs=f"{tflops:.2f}")
        if self.lines and time.monotonic() - self.last_line >= self.every:
            self.last_line = time.monotonic()
            remaining = (self.total - progress.step) * progress.train_seconds / max(progress.step, 1)
            print(f"{self.spec.name}: step {progress.step}/{self.total} (epoch {progress.epoch}), loss {entry['loss']:.3f}, "
                  f"{entry['tokens_per_s']:,.0f} tokens/s, {tflops:.2f} TFLOP/s, about {remaining / 60:.0f} min of "
                  f"training left", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def run_epoch(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, watch: Watch) -> str | None:
    """Train through the rest of the current epoch; returns why it stopped early ("max_steps" or
    "signal"), or None at the epoch's end. The log is rewritten at every logged step, so a reader
    (the analysis, a person) always sees where the run is."""
    p, h, cfg = state.progress, state.history, spec.train_config
    per_epoch, batch_size = steps_per_epoch(spec, data), cfg["batch_size"]
    order = epoch_order(spec.seed, p.epoch, len(data.train))
    interval_start, interval_tokens = time.perf_counter(), 0
    while p.batch_in_epoch < per_epoch:
        if cfg["max_steps"] is not None and p.step >= cfg["max_steps"]:
            return "max_steps"
        if stop_requested(rt):
            return "signal"
        started = time.perf_counter()
        record = (p.step + 1) % rt.flags["log_every"] == 0
        index = order[p.batch_in_epoch * batch_size : (p.batch_in_epoch + 1) * batch_size]
        nll, n_tokens, norm, group_norms = train_step(spec, state, data, rt, index, record)
        p.step, p.batch_in_epoch = p.step + 1, p.batch_in_epoch + 1
        p.epoch_nll = p.epoch_nll + nll.double()  # stays on the device: no sync per step
        p.epoch_clipped = p.epoch_clipped + (norm > cfg["grad_clip"] if cfg["grad_clip"] else 0)
        p.epoch_tokens += n_tokens
        p.tokens_seen += n_tokens
        p.epoch_wall += time.perf_counter() - started
        p.train_seconds += time.perf_counter() - started
        interval_tokens += n_tokens
        if record:
            loss = nll / max(n_tokens, 1)
            check_finite(p.step, loss, norm)
            elapsed = time.perf_counter() - interval_start
            h.steps.append({"step": p.step, "epoch": p.epoch, "loss": loss.item(), "grad_norm": norm.item(),
                            "lr": state.optimizer.param_groups[0]["lr"], "tokens_per_s": interval_tokens / elapsed,
                            **compute_so_far(spec, state), "layer_grad_norms": group_norms})
            interval_start, interval_tokens = time.perf_counter(), 0
        watch.step(p, h.steps[-1] if record else None)
        if evaluation_due(rt, p, per_epoch):
            val = validation_metrics(spec, state, data, rt, data.during_training["val"])
            h.evals.append({"step": p.step, "epoch": p.epoch, **compute_so_far(spec, state),
                            **prefixed("val", val), **prefixed("test", report_metrics(spec, state, data, rt))})
            watch.scalars(h.evals[-1], p.step)
        checkpoint = p.step % rt.flags["checkpoint_every"] == 0 and p.batch_in_epoch < per_epoch
        if checkpoint:
            check_finite(p.step, nll, norm)
            save_checkpoint(spec, state, data, rt)
        if record or checkpoint:
            save_log(spec, state, data, rt, RUNNING)
    return None


def train(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime) -> str:
    """Train to the run's length, or until a signal; returns COMPLETE or INTERRUPTED."""
    save_log(spec, state, data, rt, RUNNING)
    watch = Watch(spec, state, data, rt)
    try:
        return train_epochs(spec, state, data, rt, watch)
    finally:
        watch.close()


def train_epochs(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, watch: Watch) -> str:
    p = state.progress
    while p.epoch <= spec.train_config["num_epochs"]:
        stopped_by = run_epoch(spec, state, data, rt, watch)
        if stopped_by == "signal":
            save_checkpoint(spec, state, data, rt)
            save_log(spec, state, data, rt, INTERRUPTED)
            return INTERRUPTED
        if p.epoch_tokens and not epoch_recorded(state):  # a resumed stop point may owe its evaluation
            end_epoch(spec, state, data, rt, partial=stopped_by is not None)
            watch.scalars(state.history.epochs[-1], p.step)
        if stopped_by is None:
            p.epoch, p.batch_in_epoch, p.epoch_nll, p.epoch_tokens, p.epoch_wall = p.epoch + 1, 0, 0.0, 0, 0.0
            p.epoch_clipped = 0
        save_checkpoint(spec, state, data, rt)
        if stopped_by is not None:
            break
        save_log(spec, state, data, rt, RUNNING)
    last = state.history.last_val
    just_evaluated = last is not None and last["step"] == p.step  # the whole splits, at this very step
    final = {"step": p.step,
             "val": last["metrics"] if just_evaluated else validation_metrics(spec, state, data, rt, data.val)}
    if data.test is not None:
        final["test"] = last["test"] if just_evaluated and last.get("test") else \
            validation_metrics(spec, state, data, rt, data.test)
    state.history.last_val = {"step": p.step, "metrics": final["val"], "test": final.get("test", {})}
    save_log(spec, state, data, rt, COMPLETE, final)
    return COMPLETE


# ---------------------------------------------------------------------------------------------
# Export


class ExportError(Exception):
    """A complete run could not be exported; the run itself is fine."""


EXPORTED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")


def export_folder(spec: RunSpec, args: argparse.Namespace) -> Path:
    return args.export_hf / spec.name


def check_export_targets(specs: list[RunSpec], args: argparse.Namespace) -> None:
    """Every run's export folder must be a folder (or not exist yet): found before any training."""
    for spec in specs:
        folder = export_folder(spec, args)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--export_hf: {folder} exists and is not a folder")


def export_hf(spec: RunSpec, args: argparse.Namespace) -> Path:
    """Save a complete run's final weights (its last checkpoint) as a Hugging Face GPT-2, with the
    tokenizer, so that AutoModelForCausalLM / AutoTokenizer.from_pretrained(folder) load it; then
    check that the files are there (save_pretrained only logs some failures)."""
    folder = export_folder(spec, args)
    try:
        ckpt = torch.load(spec.ckpt_path, map_location="cpu", weights_only=True)
        model = Transformer(spec.model_config(ckpt["model"]["embed.W_E"].shape[0]))
        model.load_state_dict(ckpt["model"])
    except Exception as err:
        raise ExportError(f"--export_hf: cannot read checkpoint {spec.ckpt_path} ({type(err).__name__})") from None
    staging = None
    try:  # written beside, checked, then renamed: a failed export leaves no half-written folder
        staging = Path(tempfile.mkdtemp(dir=args.export_hf, prefix=f".{spec.name}.", suffix=".tmp"))
        to_hf_gpt2(model).save_pretrained(staging)
        load_tokenizer(args.tokenizer).save_pretrained(staging)
        missing = [name for name in EXPORTED_FILES if not (staging / name).is_file()]
        if missing:
            raise ExportError(f"--export_hf: the export to {folder} wrote no {', '.join(missing)}")
        if folder.is_dir():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except ExportError:
        raise
    except Exception as err:  # OSError, or safetensors' own error for a full disk
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0][:160] or type(err).__name__
        raise ExportError(f"--export_hf: could not write {folder}: {reason}") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    print(f"{spec.name}: exported for Hugging Face to {folder}", file=sys.stderr)
    return folder


def try_export(spec: RunSpec, args: argparse.Namespace) -> int:
    """Export one complete run; 1 (reported in one line) if it failed, so the other runs go on."""
    try:
        export_hf(spec, args)
    except ExportError as err:
        print(f"error: {spec.name}: {err}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# Entry point


def check_models(specs: list[RunSpec], export_hf: bool) -> None:
    """Impossible sizes, or an export GPT-2 cannot hold, are bad input found before any data is loaded."""
    for spec in specs:
        try:
            cfg = spec.model_config(50257)
            if export_hf:
                check_gpt2_expressible(cfg)
        except ValueError as err:
            raise UsageError(f"invalid model for {spec.name}{' (--export_hf)' if export_hf else ''}: {err}") from None


def cpuinfo(field: str) -> str | None:
    """The first value of ``field`` in /proc/cpuinfo, or None (not Linux, or no such field)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 matmuls run about
    twice as fast as fp32; without it they are emulated and far slower."""
    return bool({"avx512_bf16", "amx_bf16"} & set((cpuinfo("flags") or "").split()))


def cpu_model() -> str:
    """The processor's name (e.g. "AMD EPYC ..."): speed figures mean nothing without it."""
    return cpuinfo("model name") or platform.processor() or "unknown"


def run_facts(command: list[str], device: torch.device, ddp: Distributed) -> dict:
    """What a log records about where and how it ran (threads are read when the log is written)."""
    return {"command": command, **git_state(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "device": str(device), "allocator": keep_freed_memory(), "world_size": ddp.world}


def report(decision: Decision, ddp: Distributed) -> None:
    if decision.message and ddp.main:
        prefix = "error: " if decision.action in (REFUSE, KEEP_FAILED) else ""
        print(prefix + decision.message, file=sys.stderr)


def train_one(spec: RunSpec, decision: Decision, data: Data, rt: Runtime) -> int:
    """Train or resume one run; its exit status (0, 1 failed, 130/143 interrupted)."""
    remove_stale_temporaries(spec.log_path)
    remove_stale_temporaries(spec.ckpt_path)
    if decision.action == TRAIN and rt.ddp.main:
        spec.ckpt_path.unlink(missing_ok=True)  # only --overwrite trains beside a checkpoint (see decide)
    state = restore_state(spec, data, rt) if decision.action == RESUME else fresh_state(spec, data, rt)
    try:
        status = train(spec, state, data, rt)
    except (NonFiniteLoss, WriteError, KeyboardInterrupt) as err:
        reason = INTERRUPTED if isinstance(err, KeyboardInterrupt) else f"{FAILED}: {err}"
        try:
            save_log(spec, state, data, rt, reason)
        except WriteError:
            pass  # the write that failed is already being reported; the previous log is intact
        if isinstance(err, KeyboardInterrupt):
            print(f"interrupted: {spec.name} at step {state.progress.step}", file=sys.stderr)
            return rt.stop.exit_code
        message = f"error: {spec.name}: {err}"
        if isinstance(err, NonFiniteLoss):  # say what survives; a write error already names its file
            message += f"; last good checkpoint {spec.ckpt_path}" if spec.ckpt_path.exists() else "; no checkpoint was written"
        print(message, file=sys.stderr)
        return 1
    if status == INTERRUPTED:
        if rt.ddp.main:
            print(f"interrupted: {spec.name} at step {state.progress.step}; --resume continues it", file=sys.stderr)
        return rt.stop.exit_code
    if rt.ddp.main:
        val, wall = state.history.last_val["metrics"], sum(e["wall_s"] for e in state.history.epochs)
        print(f"{spec.name}: val loss {val['loss']:.4f}  ppl {val['ppl']:.2f}  bits/byte {val['bpb']:.4f}  "
              f"train {wall:.0f}s  log {spec.log_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with StopSignal() as stop:
        return run_all(parser, args, stop, ["train_simple.py", *(sys.argv[1:] if argv is None else argv)])


def run_all(parser: argparse.ArgumentParser, args: argparse.Namespace, stop: StopSignal, command: list[str]) -> int:
    """Decide, then train, every requested run; the command's exit status."""
    ddp = Distributed()
    try:
        validate(args)
        device = pick_device(args.device)
        args.loss = args.loss or default_loss(device)
        specs = run_specs(parser, args)
        check_models(specs, args.export_hf is not None)
        if args.export_hf is not None:
            check_export_targets(specs, args)
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.tensorboard is not None and importlib.util.find_spec("tensorboard") is None:
            raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard")
        if args.bf16 and device.type == "cpu" and not native_bf16():
            print("note: --bf16 on a CPU without native bf16 (no avx512_bf16 or amx_bf16): expect it to be much "
                  "slower than fp32", file=sys.stderr)
        ddp = setup_distributed(device)
        if args.batch_size % ddp.world:
            raise UsageError(f"--batch_size {args.batch_size} is not divisible by {ddp.world} processes")
        if device.type == "cuda" and ddp.world > 1:
            device = torch.device("cuda", torch.cuda.current_device())
        plan = [(spec, decide(spec, args.resume, args.overwrite)) for spec in specs]
        if any(d.action in (TRAIN, RESUME) for _, d in plan):  # before any lock file exists
            check_offline_inputs([args.train_split, args.val_split, *([args.test_split] if args.test_split.lower() != "none"
                                                                       else [])], args.data_dir, args.tokenizer)
        for spec in specs:  # a run another process is training is refused now, not after loading data
            with RunLock(spec, enabled=ddp.main):
                pass
        refusals = [d for _, d in plan if d.action == REFUSE]
        for decision in refusals:
            report(decision, ddp)
        if refusals:
            return 2
        failed = 0
        for spec, decision in plan:
            if decision.action in (SKIP, KEEP_FAILED):
                report(decision, ddp)
                failed += decision.action == KEEP_FAILED
            if decision.action == SKIP and args.export_hf and ddp.main:
                failed += try_export(spec, args)
        todo = [spec for spec, d in plan if d.action in (TRAIN, RESUME)]
        if not todo:
            return 1 if failed else 0
        flags = {**group_flags(parser, args, "sources"), **group_flags(parser, args, "execution")}
        rt = Runtime(device, ddp, stop, flags, run_facts(command, device, ddp))
        data = load_data(args)
        for spec in todo:
            if stop.signum is not None:
                return stop.exit_code
            with RunLock(spec, enabled=ddp.main):
                decision = ddp.from_main(decide(spec, args.resume, args.overwrite))  # again, now that it is ours
                report(decision, ddp)
                if decision.action == REFUSE:
                    return 2
                if decision.action not in (TRAIN, RESUME):
                    failed += decision.action == KEEP_FAILED
                    continue
                code = train_one(spec, decision, data, rt)
            if code > 1:
                return code
            if code == 0 and args.export_hf and ddp.main:
                failed += try_export(spec, args)
            failed += code
        return 1 if failed else 0
    except (UsageError, DataError, RunLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return stop.exit_code
    finally:
        if ddp.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
