"""The runs a command asks for, and every setting that can change their results: the flags, their
checks (bad input is one line and exit code 2), and one RunSpec per (activation, lr, weight decay, seed)."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

from cli import Parser
from data_utils import LAYOUTS
from run_log import OLD_PRESET_NAMES
from transformer_from_scratch import PRESETS, TransformerConfig
from transformer_from_scratch.catalog import SIZES, activation_names, canonical_activation, describe_size, run_name
from transformer_from_scratch.config import MLP_INITS, UNEMBED_BIASES
from transformer_from_scratch.hf import check_gpt2_expressible

# Argument groups whose flags can change a result. Their flags are recorded in the log (train_config,
# model_config, data) and compared before a run is skipped or resumed; flags of the other groups only
# change how a run executes and are recorded under run.flags.
TRAINING, MODEL, DATA = "training", "model", "data"
LENGTH_SETTINGS = ("num_epochs", "max_steps")  # may grow when a run is resumed
SCHEDULES = ("constant", "cosine")
LOSSES = ("fused", "textbook")
KEEPS = ("last", "best")
OPTIMIZER = "AdamW(betas=(0.9, 0.999), eps=1e-8)"
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


def embed_scale_setting(text: str) -> float | str:
    """--embed_scale: a positive number, or sqrt_d_model (resolved with the model's width)."""
    if text == "sqrt_d_model":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give a number or sqrt_d_model, not {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
    return value


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
    g.add_argument("--patience", type=int, default=None, metavar="K",
                   help="stop when the selection (validation) loss has not improved for K evaluations in a row; "
                        "the run is complete, its log says where it stopped and its best point. Default: never")
    g.add_argument("--keep", choices=KEEPS, default="last",
                   help="the weights a complete run keeps, and its final numbers are of: its last, or those of its "
                        "evaluation with the lowest selection loss")
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
    g.add_argument("--preset", choices=PRESETS, default="reference", type=lambda name: OLD_PRESET_NAMES.get(name, name),
                   help="architecture: the study's (reference; its old name seed is still accepted) or GPT-2's")
    g.add_argument("--size", choices=SIZES, default="reference",
                   help="a named model size, the four flags below at once (any of them given overrides its "
                        "value): " + "; ".join(f"{name}: {describe_size(name)}" for name in SIZES))
    g.add_argument("--d_model", type=int, default=None, help="residual stream width (default: the size's)")
    g.add_argument("--d_mlp", type=int, default=None, help="MLP hidden width before --match_params (default: the size's)")
    g.add_argument("--n_heads", type=int, default=None, help="attention heads (default: the size's)")
    g.add_argument("--n_layers", type=int, default=None, help="transformer blocks (default: the size's)")
    g.add_argument("--match_params", action="store_true",
                   help="shrink gated (GLU) MLPs to 2/3 width so every MLP has the same parameter count")
    g.add_argument("--attn_impl", choices=("einsum", "sdpa"), default=None,
                   help="attention kernel: einsum (from scratch) or sdpa (PyTorch's fused kernel, the same maths "
                        "within 1e-5). Default: sdpa on CUDA, einsum elsewhere")
    g.add_argument("--final_ln", action=argparse.BooleanOptionalAction, default=None,
                   help="a LayerNorm before the unembedding (default: the preset's; gpt2 always has one)")
    g.add_argument("--mlp_init", choices=MLP_INITS, default="standard",
                   help="variance_matched: scale W_out's init so every activation starts with relu's MLP output "
                        "variance")
    g.add_argument("--dropout", type=float, default=0.0,
                   help="embedding, attention and residual dropout probability (0: none, the study)")
    g.add_argument("--tie_embeddings", action="store_true",
                   help="the unembedding is the token embedding's transpose (halves the embedding parameters)")
    g.add_argument("--unembed_bias", choices=UNEMBED_BIASES, default="none",
                   help="log_unigram: a trained bias on the logits, started at the log of the training targets' "
                        "add-k unigram (the unigram baseline's k), not weight-decayed")
    g.add_argument("--embed_scale", type=embed_scale_setting, default=1.0, metavar="X_OR_sqrt_d_model",
                   help="multiply the token embeddings by this where they enter the residual stream; sqrt_d_model "
                        "(Vaswani et al. 2017) is what tied embeddings need to learn (docs/model.md)")
    g.add_argument("--word_type_dropout", type=float, default=0.0,
                   help="drop whole embedding rows (word types) for a training step with this probability")
    g.add_argument("--unembed_dropout", type=float, default=0.0,
                   help="dropout on the residual stream before the unembedding")
    g = p.add_argument_group(DATA)
    g.add_argument("--layout", choices=LAYOUTS, default="lines",
                   help="lines: one sequence per line, padded (the study); packed: contiguous blocks")
    g.add_argument("--max_length", type=int, default=128, help="tokens per sequence (the model's n_ctx)")
    g.add_argument("--train_split", default="train", help="split (or text file) to train on")
    g.add_argument("--train_fraction", type=float, default=1.0,
                   help="train on this fraction of the training split's articles (whole articles, one fixed "
                        "order: a smaller fraction's articles are part of a larger one's); a data-size rung")
    g.add_argument("--val_split", default="validation",
                   help="the selection split (or a text file): evaluated at every evaluation; every choice (the best "
                        "point, --patience, --keep best, the interpolation weight, an lr) is read off it alone")
    g.add_argument("--test_split", default="test",
                   help="the report split (or a text file): evaluated beside the selection split at every evaluation "
                        "and at the end, and never used to choose anything; skipped when it is the train or val "
                        "split, or 'none'")
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
    g.add_argument("--probes", action=argparse.BooleanOptionalAction, default=True,
                   help="probe MLP unit activity and attention at each epoch's end (diagnostics: --no-probes "
                        "skips them, and the analysis's inside-the-model table and figures)")
    g.add_argument("--samples", action=argparse.BooleanOptionalAction, default=True,
                   help="continue three validation prompts at each epoch's end (diagnostics: --no-samples skips them)")
    g.add_argument("--study_file", type=Path, default=None, metavar="TOML",
                   help="the study file that declared this run (study.py passes it): its sha256 and the commit "
                        "holding it are recorded in the log (run.study), so the report can say whether the study "
                        "was committed before its runs began")
    g.add_argument("--allow_dirty", action="store_true",
                   help="run a declared study's run (--study_file) from a tree with uncommitted code changes; the "
                        "change (git diff HEAD, and untracked files) is stored beside the log as "
                        "<run_name>.<sha12>.diff, its sha256 in the log (run.git_diff_sha256). Without it such a "
                        "run is refused: every number of a declared study names the exact code that made it")
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
    g.add_argument("--keep_optimizer", action="store_true",
                   help="keep a complete run's full checkpoint (AdamW state included, about 3x the weights), so "
                        "that --resume can train it further; without it only the final weights are kept")
    g.add_argument("--export_hf", type=Path, default=None, metavar="DIR",
                   help="save each complete gpt2-preset run as a Hugging Face model (and its tokenizer) in DIR/<run_name>")
    g = p.add_argument_group("existing runs", "what to do with a run that has a log already (see docs/cli_and_log.md)")
    g.add_argument("--resume", action="store_true",
                   help="continue unfinished runs from their checkpoints; train complete ones further when "
                        "--num_epochs/--max_steps grew")
    g.add_argument("--overwrite", action="store_true", help="replace existing logs and checkpoints of these runs")
    return p


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
    def weights_path(self) -> Path:
        """A complete run's final weights (safetensors; training.checkpoint)."""
        return self.output_dir / "checkpoints" / f"{self.name}.safetensors"

    @property
    def best_weights_path(self) -> Path:
        """The weights at the best selection point so far, under --keep best (until the run completes)."""
        return self.output_dir / "checkpoints" / f"{self.name}.best.safetensors"

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
    training, model, data = (group_flags(parser, args, title) for title in (TRAINING, MODEL, DATA))
    model.pop("size")  # a name for four of the model flags, which the log records themselves
    fixed = {"optimizer": OPTIMIZER, "dynamic_padding": True}
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
        train_config = {"activation": activation, "seed": seed, **training, "lr": lr, "weight_decay": weight_decay, **fixed}
        specs.append(RunSpec(name, args.output_dir, train_config, model_flags, data))
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


def check_writable(folder: Path, what: str, keep_created: bool = False) -> None:
    """Write a file in ``folder`` (creating it as needed): an unusable folder is found before any
    training. The folders it had to create are removed again, so a command that fails later (offline,
    a refused run) leaves nothing behind; training creates them when it writes."""
    created = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
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
