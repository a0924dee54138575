"""Every flag of train_simple.py, declared once as a typed dataclass field: its type, default and
help, and the group it belongs to. The parser is built from these classes (training.settings), and
what they are decides what a run records and compares:

    TrainingSettings,       settings that can change a result: recorded in the log (train_config,
    ModelSettings,          model_config, data) and compared with an existing log before a run is
    DataSettings            skipped or resumed (training.decide);
    Sources, Execution      where inputs come from and how a run executes: recorded under run.flags,
                            never compared.

An instance holds one run's values. A field's type builds its flag: ``bool`` an on-switch, ``X | None``
an optional X; a ``sweep`` field takes one or more values on the command line, one run per value.
``flag(...)`` adds what argparse needs beyond that.
"""

from __future__ import annotations

import argparse
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from data_utils import LAYOUTS
from run_log import OLD_PRESET_NAMES
from transformer_from_scratch import PRESETS
from transformer_from_scratch.catalog import SIZES, describe_size
from transformer_from_scratch.config import MLP_INITS, UNEMBED_BIASES

SCHEDULES = ("constant", "cosine")
LOSSES = ("fused", "textbook")
KEEPS = ("last", "best")


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


def preset_setting(name: str) -> str:
    """--preset: a name, its old spelling read as the new one."""
    return OLD_PRESET_NAMES.get(name, name)


def flag(default: Any, help: str, *aliases: str, sweep: bool = False, **argparse_kwargs: Any) -> Any:
    """A dataclass field that is also a command-line flag: ``--<field name>`` and ``aliases``, with
    ``argparse_kwargs`` (choices, type, action, metavar) beyond what the field's type gives; ``sweep``:
    the flag takes one or more values."""
    return field(default=default, metadata={"help": help, "aliases": aliases, "sweep": sweep,
                                            "argparse": argparse_kwargs})


@dataclass(frozen=True)
class TrainingSettings:
    """How a model is trained."""

    num_epochs: int = flag(3, "passes over the training split")
    max_steps: int | None = flag(None, "stop after this many optimizer steps in all")
    batch_size: int = flag(8, "sequences per optimizer step (global, also under DDP)")
    lr: float = flag(3e-4, "AdamW peak learning rate(s); several make a sweep: every activation runs with every lr",
                     sweep=True)
    lr_schedule: str = flag("constant", "constant, or cosine decay to --min_lr_ratio of the peak at the last step",
                            choices=SCHEDULES)
    warmup_steps: int | float = flag(0, "linear warmup from 0 to the peak: over N steps, or over a fraction of the run "
                                        "(0.05: its first 5%%), so runs of other lengths keep the schedule's shape",
                                     "--warmup", type=warmup_setting, metavar="N_OR_FRACTION")
    min_lr_ratio: float = flag(0.1, "cosine: the last step's lr as a fraction of the peak")
    weight_decay: float = flag(0.01, "AdamW weight decay(s); several make a sweep, like --lr", sweep=True)
    grad_clip: float = flag(1.0, "clip the global gradient norm to this (0: off); the log counts the steps clipped")
    eval_tokens: int | None = flag(None, "evaluate during training on a fixed subset of about N scored tokens of each "
                                         "evaluated split (the same for every run); the final numbers always use the "
                                         "whole splits. Default: whole splits", metavar="N")
    patience: int | None = flag(None, "stop when the selection (validation) loss has not improved for K evaluations "
                                      "in a row; the run is complete, its log says where it stopped and its best "
                                      "point. Default: never", metavar="K")
    keep: str = flag("last", "the weights a complete run keeps, and its final numbers are of: its last, or those of "
                             "its evaluation with the lowest selection loss", choices=KEEPS)
    probe_sequences: int = flag(64, "validation sequences used to probe MLP unit activity each epoch")
    loss: str | None = flag(None, "fused: vocabulary-tiled linear + cross-entropy (fast on CPU); textbook: logits "
                                  "then F.cross_entropy (fast on GPUs). Default: fused on CPU, textbook on CUDA/MPS",
                            choices=LOSSES)
    compile: bool = flag(False, "torch.compile the model (for GPUs; little gain on CPU)")
    bf16: bool = flag(False, "bf16 autocast, the fused loss's matmuls included: for GPUs, and CPUs with native bf16 "
                             "(AVX512-BF16 or AMX: AMD Zen 4, Intel Sapphire Rapids); far slower on CPUs without it "
                             "(AVX2, or AVX-512 without BF16). Runs of different precision are never pooled")


@dataclass(frozen=True)
class ModelSettings:
    """The architecture: each flag is the TransformerConfig field of its name (--size names four)."""

    preset: str = flag("reference", "architecture: the study's (reference; its old name seed is still accepted) or "
                                    "GPT-2's", choices=PRESETS, type=preset_setting)
    size: str = flag("reference", "a named model size, the four flags below at once (any of them given overrides "
                                  "its value): " + "; ".join(f"{name}: {describe_size(name)}" for name in SIZES),
                     choices=tuple(SIZES))
    d_model: int | None = flag(None, "residual stream width (default: the size's)")
    d_mlp: int | None = flag(None, "MLP hidden width before --match_params (default: the size's)")
    n_heads: int | None = flag(None, "attention heads (default: the size's)")
    n_layers: int | None = flag(None, "transformer blocks (default: the size's)")
    match_params: bool = flag(False, "shrink gated (GLU) MLPs to 2/3 width so every MLP has the same parameter count")
    attn_impl: str | None = flag(None, "attention kernel: einsum (from scratch) or sdpa (PyTorch's fused kernel, the "
                                       "same maths within 1e-5). Default: sdpa on CUDA, einsum elsewhere",
                                 choices=("einsum", "sdpa"))
    final_ln: bool | None = flag(None, "a LayerNorm before the unembedding (default: the preset's; gpt2 always has "
                                       "one)", action=argparse.BooleanOptionalAction)
    mlp_init: str = flag("standard", "variance_matched: scale W_out's init so every activation starts with relu's MLP "
                                     "output variance", choices=MLP_INITS)
    dropout: float = flag(0.0, "embedding, attention and residual dropout probability (0: none, the study)")
    tie_embeddings: bool = flag(False, "the unembedding is the token embedding's transpose (halves the embedding "
                                       "parameters)")
    unembed_bias: str = flag("none", "log_unigram: a trained bias on the logits, started at the log of the training "
                                     "targets' add-k unigram (the unigram model's k), not weight-decayed",
                             choices=UNEMBED_BIASES)
    embed_scale: float | str = flag(1.0, "multiply the token embeddings by this where they enter the residual stream; "
                                         "sqrt_d_model (Vaswani et al. 2017) is what tied embeddings need to learn "
                                         "(docs/model.md)", type=embed_scale_setting, metavar="X_OR_sqrt_d_model")
    word_type_dropout: float = flag(0.0, "drop whole embedding rows (word types) for a training step with this "
                                         "probability")
    unembed_dropout: float = flag(0.0, "dropout on the residual stream before the unembedding")


@dataclass(frozen=True)
class DataSettings:
    """Which data, and how it is cut into sequences."""

    layout: str = flag("lines", "lines: one sequence per line, padded (the study); packed: contiguous blocks",
                       choices=LAYOUTS)
    max_length: int = flag(128, "tokens per sequence (the model's n_ctx)")
    train_split: str = flag("train", "split (or text file) to train on")
    train_fraction: float = flag(1.0, "train on this fraction of the training split's articles (whole articles, one "
                                      "fixed order: a smaller fraction's articles are part of a larger one's); a "
                                      "data-size rung")
    val_split: str = flag("validation", "the selection split (or a text file): evaluated at every evaluation; every "
                                        "choice (the best point, --patience, --keep best, the interpolation weight, "
                                        "an lr) is read off it alone")
    test_split: str = flag("test", "the report split (or a text file): evaluated beside the selection split at every "
                                   "evaluation and at the end, and never used to choose anything; skipped when it is "
                                   "the train or val split, or 'none'")


@dataclass(frozen=True)
class Sources:
    """Where data comes from (the log records what was read: sha256)."""

    data_dir: Path | None = flag(None, "folder with WikiText-2 wiki.*.raw files (else $WIKITEXT2_DIR, else the hub)")
    tokenizer: str | None = flag(None, "tokenizer hub name or local folder (else $GPT2_TOKENIZER, else gpt2)")
    cache_dir: Path | None = flag(None, "tokenized-data cache (else $ACTIVATION_STUDY_CACHE)")


@dataclass(frozen=True)
class Execution:
    """How runs execute: nothing here changes a result."""

    output_dir: Path = flag(Path("results"), "where logs and checkpoints go")
    run_name: str | None = flag(None, "log name (<output_dir>/<run_name>.json); default <activation>[_matched]"
                                      "_seed<seed>; with several runs it is used as a prefix")
    device: str = flag("auto", "where to train (auto: a GPU if there is one, else the CPU)",
                       choices=("auto", "cpu", "cuda", "mps"))
    threads: int | None = flag(None, "CPU threads (default: PyTorch's choice)")
    probes: bool = flag(True, "probe MLP unit activity and attention at each epoch's end (diagnostics: --no-probes "
                              "skips them, and the analysis's inside-the-model table and figures)",
                        action=argparse.BooleanOptionalAction)
    samples: bool = flag(True, "continue three validation prompts at each epoch's end (diagnostics: --no-samples "
                               "skips them)", action=argparse.BooleanOptionalAction)
    study_file: Path | None = flag(None, "the study file that declared this run (study.py passes it): its sha256 and "
                                         "the commit holding it are recorded in the log (run.study), so the report "
                                         "can say whether the study was committed before its runs began",
                                   metavar="TOML")
    allow_dirty: bool = flag(False, "run a declared study's run (--study_file) from a tree with uncommitted code "
                                    "changes; the change (git diff HEAD, and untracked files) is stored beside the "
                                    "log as <run_name>.<sha12>.diff, its sha256 in the log (run.git_diff_sha256). "
                                    "Without it such a run is refused: every number of a declared study names the "
                                    "exact code that made it")
    log_every: int = flag(10, "record a step entry every N steps (and rewrite the log: it always shows where the run "
                              "is)")
    tensorboard: Path | None = flag(None, "also write the logged scalars for TensorBoard to DIR/<run_name> (needs "
                                          "tensorboard)", metavar="DIR")
    status_every: float = flag(60.0, "without a terminal, print a status line to stderr at most every N seconds")
    eval_every: int = flag(0, "also evaluate every N steps (0: at epoch ends only)")
    evals_per_epoch: int = flag(0, "also evaluate N - 1 times within each epoch, evenly spaced (when --eval_every is "
                                   "0)")
    eval_batch_size: int = flag(32, "sequences per evaluation batch")
    checkpoint_every: int = flag(200, "checkpoint every N steps (and every epoch)")
    keep_optimizer: bool = flag(False, "keep a complete run's full checkpoint (AdamW state included, about 3x the "
                                       "weights), so that --resume can train it further; without it only the final "
                                       "weights are kept")
    export_hf: Path | None = flag(None, "save each complete gpt2-preset run as a Hugging Face model (and its "
                                        "tokenizer) in DIR/<run_name>", metavar="DIR")


RESULT_SETTINGS = (TrainingSettings, ModelSettings, DataSettings)  # compared before a run is skipped or resumed
RUN_FLAGS = (Sources, Execution)  # recorded under run.flags


def add_flags(group: argparse._ArgumentGroup, settings: type) -> None:
    """One flag per field of ``settings``, its type from the field's annotation."""
    hints = typing.get_type_hints(settings)
    for f in fields(settings):
        meta = f.metadata
        derived = argument_type(hints[f.name]) if "action" not in meta["argparse"] else {}
        kwargs: dict[str, Any] = {"default": f.default, "help": meta["help"], **derived, **meta["argparse"]}
        if meta["sweep"]:
            kwargs |= {"nargs": "+", "default": [f.default]}
        group.add_argument(f"--{f.name}", *meta["aliases"], dest=f.name, **kwargs)


def argument_type(hint: Any) -> dict[str, Any]:
    """argparse's type, nargs or action for a field annotation."""
    if hint is bool:
        return {"action": "store_true"}
    if isinstance(hint, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return {"type": options[0]} if len(options) == 1 else {}
    return {"type": hint}


def title(settings: type) -> str:
    """The flags' group in --help: "training", "model", "data", "sources", "execution"."""
    return settings.__name__.removesuffix("Settings").lower()


def values_of(settings: type, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed values of one settings class's flags (a sweep's: the list)."""
    return {f.name: getattr(args, f.name) for f in fields(settings)}


def json_ready(settings: Any) -> dict[str, Any]:
    """A settings instance as a log records it (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()}
