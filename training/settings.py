"""The runs a command asks for: the parser (built from training/flags.py's declarations), the
checks of its values (bad input is one line and exit code 2), and one RunSpec per (activation, lr,
weight decay, seed), its settings those of the classes that can change a result."""

from __future__ import annotations

import argparse
import glob
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cli import Parser
from training.flags import RESULT_SETTINGS, RUN_FLAGS, DataSettings, TrainingSettings, add_flags, json_ready, title, \
    values_of
from transformer_from_scratch import TransformerConfig
from transformer_from_scratch.catalog import SIZES, activation_names, canonical_activation, run_name
from transformer_from_scratch.hf import check_gpt2_expressible

LENGTH_SETTINGS = ("num_epochs", "max_steps")  # may grow when a run is resumed
OPTIMIZER = "AdamW(betas=(0.9, 0.999), eps=1e-8)"
FIXED_CHOICES = {"optimizer": OPTIMIZER, "dynamic_padding": True}  # this script's, recorded beside the flags
MAX_SEED = 2**63 - 1  # a seed is a JSON int64 everywhere it is recorded


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit code 2."""


def apply_size(args: argparse.Namespace) -> None:
    """Fill the model dimensions not given on the command line from --size."""
    for key, value in SIZES[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description="Train one model per MLP activation, learning rate and seed; write one JSON log per run.")
    g = p.add_argument_group("runs", "one run per activation and seed (and learning rate, see --lr)")
    activation = g.add_argument("--activation", nargs="+", default=["gelu"], choices=activation_names(), metavar="NAME",
                                help=f"MLP activation(s), run one after another; one of {', '.join(activation_names())}")
    activation.unknown_hint = ("a new activation is one entry in transformer_from_scratch/catalog.py's ACTIVATION_TABLE "
                               "and its function in activations.py's FUNCTIONS: docs/model.md")
    g.add_argument("--seeds", "--seed", nargs="+", type=int, default=[42], dest="seeds",
                   help="seed(s); every activation runs with every seed")
    for settings in (*RESULT_SETTINGS, *RUN_FLAGS):
        add_flags(p.add_argument_group(title(settings), settings.__doc__), settings)
    g = p.add_argument_group("existing runs", "what to do with a run that has a log already (see docs/cli_and_log.md)")
    g.add_argument("--resume", action="store_true",
                   help="continue unfinished runs from their checkpoints; train complete ones further when "
                        "--num_epochs/--max_steps grew")
    g.add_argument("--overwrite", action="store_true", help="replace existing logs and checkpoints of these runs")
    return p


@dataclass(frozen=True)
class RunSpec:
    """One requested run: its name, its files, and its settings as the log records them."""

    name: str
    output_dir: Path
    activation: str
    seed: int
    training: TrainingSettings
    model_flags: dict  # TransformerConfig fields set by flags, act_fn included, as TransformerConfig resolves them
    data_settings: DataSettings

    @property
    def train_config(self) -> dict:
        """What the log records under train_config: activation, seed, the training flags and the fixed
        choices of this script."""
        return {"activation": self.activation, "seed": self.seed, **json_ready(self.training), **FIXED_CHOICES}

    @property
    def data_flags(self) -> dict:
        return json_ready(self.data_settings)

    @property
    def log_path(self) -> Path:
        return self.output_dir / f"{self.name}.json"

    @property
    def ckpt_path(self) -> Path:
        return self.output_dir / "checkpoints" / f"{self.name}.pt"

    @property
    def weights_path(self) -> Path:
        """A complete run's final weights (safetensors; training.checkpoint)."""
        return self.output_dir / "checkpoints" / f"{self.name}.safetensors"

    def best_weights_path(self, step: int) -> Path:
        """The weights of the best selection point at ``step``, under --keep best (until the run
        completes). Named by step, so that a new best never replaces the one the latest checkpoint
        names: a run killed between writing a new best and its next checkpoint resumes with its
        checkpoint's best intact (save_checkpoint removes the others once it has written)."""
        return self.output_dir / "checkpoints" / f"{self.name}.best-step{step}.safetensors"

    def best_weights_files(self) -> list[Path]:
        """Every best point's weights this run has on disk (with the one-file name of older versions)."""
        folder = self.output_dir / "checkpoints"
        older = folder / f"{self.name}.best.safetensors"
        return sorted(folder.glob(f"{glob.escape(self.name)}.best-step*.safetensors")) + ([older] if older.exists() else [])

    @property
    def lock_path(self) -> Path:
        return self.output_dir / "checkpoints" / f"{self.name}.lock"

    def settings(self) -> dict[str, dict]:
        """The settings compared with an existing log, by the log section that records them."""
        return {"train_config": self.train_config, "model_config": self.model_flags, "data": self.data_flags}

    def model_config(self, d_vocab: int) -> TransformerConfig:
        return TransformerConfig(d_vocab=d_vocab, n_ctx=self.data_settings.max_length, **self.model_flags)


def device_defaults(device_type: str) -> dict[str, str]:
    """The kernels a flag left unset gets on a device ("cpu", "cuda", "mps"); the log records the resolved
    value. The fused loss pays off on CPU caches and page faults, which GPUs do not have; on CUDA,
    attention is PyTorch's fused scaled_dot_product_attention (is_causal), which gives the einsum path's
    loss and gradients within 1e-5 (tests/test_model.py, on CPU)."""
    return {"loss": "fused" if device_type == "cpu" else "textbook",
            "attn_impl": "sdpa" if device_type == "cuda" else "einsum"}


def fill_device_defaults(args: argparse.Namespace, device_type: str) -> None:
    for flag, value in device_defaults(device_type).items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)


def run_specs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[RunSpec]:
    """Every requested (activation, seed) run, activations in the order given. Kernels still unset are
    resolved as on a CPU (train_simple.py resolves them for its device first)."""
    fill_device_defaults(args, "cpu")
    apply_size(args)
    training, model, data = (values_of(settings, args) for settings in RESULT_SETTINGS)
    model.pop("size")  # a name for four of the model flags, which the log records themselves
    lrs, decays = list(dict.fromkeys(args.lr)), list(dict.fromkeys(args.weight_decay))
    runs = [(a, lr, wd, s) for a in dict.fromkeys(map(canonical_activation, args.activation)) for lr in lrs
            for wd in decays for s in dict.fromkeys(args.seeds)]
    specs = []
    for activation, lr, weight_decay, seed in runs:
        model_flags = resolved_model_flags({**model, "act_fn": activation})
        name = run_name(activation, args.match_params, seed, lr if len(lrs) > 1 else None,
                        weight_decay if len(decays) > 1 else None)
        if args.run_name:
            name = args.run_name if len(runs) == 1 else f"{args.run_name}_{name}"
        specs.append(RunSpec(name, args.output_dir, activation, seed,
                             TrainingSettings(**{**training, "lr": lr, "weight_decay": weight_decay}), model_flags,
                             DataSettings(**data)))
    check_distinct_names(specs)
    return specs


def resolved_model_flags(flags: dict) -> dict:
    """The model flags as TransformerConfig resolves them (an alias to its activation, final_ln None to
    the preset's choice, embed_scale sqrt_d_model to its number): what the log's model_config records,
    so what a later request is compared with."""
    if flags.get("embed_scale") == "sqrt_d_model":
        flags = {**flags, "embed_scale": math.sqrt(flags["d_model"])}
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
                             f"differ in their first 6 significant digits, or separate commands with --run_name")
        first[spec.name] = spec


def validate(args: argparse.Namespace) -> None:
    if args.study_file is not None and not args.study_file.is_file():
        raise UsageError(f"--study_file {args.study_file}: no such file")
    for flag in ("num_epochs", "batch_size", "max_length", "log_every", "checkpoint_every", "eval_batch_size",
                 "probe_sequences"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag} must be positive, got {getattr(args, flag)}")
    for flag in ("max_steps", "threads", "eval_tokens", "patience"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            raise UsageError(f"--{flag} must be positive, got {getattr(args, flag)}")
    for flag in ("lr", "min_lr_ratio", "weight_decay", "grad_clip", "dropout", "word_type_dropout", "unembed_dropout"):
        # nan passes every comparison below
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
    if not 0 < args.train_fraction <= 1:
        raise UsageError(f"--train_fraction must be in (0, 1], got {args.train_fraction}")
    if args.preset == "gpt2" and args.final_ln is False:
        raise UsageError("--no-final_ln: the gpt2 preset has a final LayerNorm, as GPT-2 does")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues runs and --overwrite replaces them: choose one")
    check_writable(args.output_dir / "checkpoints", "output folder")
    if args.export_hf is not None:
        check_writable(args.export_hf, "--export_hf folder", keep_created=True)  # exports expect it


CHECK_ATTEMPTS = 20  # a loaded machine can interleave two checks several times in a row


def check_writable(folder: Path, what: str, keep_created: bool = False) -> None:
    """Write a file in ``folder`` (creating it as needed): an unusable folder is found before any
    training. The folders it had to create are removed again, so a command that fails later (offline,
    a refused run) leaves nothing behind; training creates them when it writes."""
    created = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    try:
        # another process's check (a study's --jobs 2) may remove what it made under us: then the write fails
        # (FileNotFoundError), or mkdir finds the folder and it is gone before mkdir's own is_dir() check
        # (FileExistsError: the failure a suite run beside a study hit)
        for attempt in range(CHECK_ATTEMPTS):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / f".write-test-{os.getpid()}"
                probe.touch()
                probe.unlink()
                break
            except (FileNotFoundError, FileExistsError):
                if attempt == CHECK_ATTEMPTS - 1:
                    raise
                time.sleep(0.001 * attempt)  # out of step with the other process's check
    except OSError as err:
        raise UsageError(f"{what} {folder} is not writable: {err.strerror or err}") from None
    finally:
        for parent in created if not keep_created else []:  # deepest first
            try:
                parent.rmdir()
            except OSError:
                break


def plain_file_name(name: str) -> bool:
    """A name that stays inside the folder it is joined to, and is not one of our hidden temporaries."""
    return bool(name) and not name.startswith(".") and not any(c in name for c in "/\\\0")


def check_models(specs: list[RunSpec], export_hf: bool) -> None:
    """Impossible sizes, or an export GPT-2 cannot hold, are bad input found before any data is loaded."""
    for spec in specs:
        try:
            cfg = spec.model_config(50257)
            if export_hf:
                check_gpt2_expressible(cfg)
        except ValueError as err:
            raise UsageError(f"invalid model for {spec.name}{' (--export_hf)' if export_hf else ''}: {err}") from None
