"""--export_hf: a complete gpt2-preset run saved as a Hugging Face GPT-2 with its tokenizer."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from data_utils import load_tokenizer
from training.checkpoint import read_final_weights
from training.settings import RunSpec, UsageError
from transformer_from_scratch import Transformer, to_hf_gpt2


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
    """Save a complete run's final weights as a Hugging Face GPT-2, with the
    tokenizer, so that AutoModelForCausalLM / AutoTokenizer.from_pretrained(folder) load it; then
    check that the files are there (save_pretrained only logs some failures)."""
    folder = export_folder(spec, args)
    try:
        weights = read_final_weights(spec.weights_path.parent, spec.name)
        model = Transformer(spec.model_config(weights["embed.W_E"].shape[0]))
        model.load_state_dict(weights)
    except (ValueError, RuntimeError, KeyError) as err:
        raise ExportError(f"--export_hf: {err}") from None
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
