"""The run log: one JSON file per training run, written by train_simple.py, read by analyze_results.py.

This module is the contract between the two scripts and imports nothing heavier than jsonschema, so
the analysis runs without torch. docs/cli_and_log.md documents every key; LOG_SCHEMA checks the type of every
key the analysis reads, so a damaged or hand-edited log is skipped with one line naming its field
instead of crashing a whole analysis.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import jsonschema

SCHEMA_VERSION = 2
# Version 1 (logs written before the run lifecycle was made explicit) lacks "progress"; it is still read.
REQUIRED_KEYS = {
    1: ("schema_version", "status", "run", "model_config", "train_config", "params", "data", "steps", "evals",
        "epochs", "dynamics", "final"),
    2: ("schema_version", "status", "run", "model_config", "train_config", "params", "data", "progress", "steps",
        "evals", "epochs", "dynamics", "samples", "final"),
}
# Top-level statuses; a failed run's status is "failed: <reason>".
COMPLETE, RUNNING, INTERRUPTED, FAILED = "complete", "running", "interrupted", "failed"
PRUNED = "pruned"  # stopped for good by a search's pruner (SIGUSR1): listed by the analysis, never resumed
NON_FINITE = "non-finite"  # the reason of a run whose loss or gradient stopped being finite
# train_simple.py's exit statuses that study.py tells apart: bad input (one line; the study stops there), and
# a run whose lock another process holds (it trains there: not a failure). 1 is a failed run, 128 + N a signal.
EXIT_BAD_INPUT, EXIT_HELD = 2, 75


def _object(required: dict, optional: dict | None = None) -> dict:
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


def _list(items: dict) -> dict:
    return {"type": "array", "items": items}


INT, NUMBER, STRING, BOOL = {"type": "integer"}, {"type": "number"}, {"type": "string"}, {"type": "boolean"}
OPTIONAL_INT, OPTIONAL_STRING = {"type": ["integer", "null"]}, {"type": ["string", "null"]}
SPLIT_KEYS = {"split": STRING, "sha256": STRING, "source": STRING, "layout": STRING, "max_length": INT, "rows": INT,
              "sequences": INT, "tokens": INT, "bytes": INT}


def _split(*required: str) -> dict:
    return _object({k: SPLIT_KEYS[k] for k in required}, SPLIT_KEYS)


EVAL_METRICS = _object({"loss": NUMBER, "ppl": NUMBER, "bpb": NUMBER, "bpb_approx": NUMBER})
# What every log must hold, unfinished ones included: what a run is (variant, seed, settings) and
# how far it got.
LOG_SCHEMA = _object({
    "status": STRING,
    "run": _object({}, {"command": _list(STRING), "git_commit": OPTIONAL_STRING, "threads": INT, "cpu": STRING,
                        "platform": STRING, "device": STRING, "torch": STRING, "world_size": INT,
                        "started": STRING, "ended": OPTIONAL_STRING}),
    "model_config": _object({"act_fn": STRING, "n_layers": INT, "d_mlp": INT, "d_hidden": INT, "preset": STRING,
                             "d_model": INT, "n_heads": INT, "d_head": INT, "n_ctx": INT, "d_vocab": INT},
                            {"match_params": BOOL}),
    "train_config": _object({"seed": INT, "batch_size": INT, "lr": NUMBER, "num_epochs": INT,
                             "max_steps": OPTIONAL_INT}, {"weight_decay": NUMBER, "grad_clip": NUMBER}),
    "params": _object({"total": INT, "non_embedding": INT, "mlp": INT}),
    "data": _object({"train": _split("split", "layout", "max_length", "sequences", "tokens"),
                     "val": _split("split", "tokens", "bytes")},
                    {"test": {"anyOf": [_split("split"), {"type": "null"}]},
                                                     "test_skipped": OPTIONAL_STRING, "tokenizer": STRING}),
    "progress": _object({"step": INT}),
    "steps": _list(_object({"step": INT}, {"loss": NUMBER, "grad_norm": NUMBER})),
}, {"stopped_early": {"anyOf": [{"type": "null"}, _object({"step": INT, "best_step": INT, "best_val_loss": NUMBER})]}})
# What the analysis reads of a complete run besides.
COMPLETE_SCHEMA = _object({
    "steps": _list(_object({"step": INT, "loss": NUMBER, "grad_norm": NUMBER})),
    "evals": _list(_object({"step": INT, "val_loss": NUMBER, "val_ppl": NUMBER, "val_bpb": NUMBER},
                           {"train_flops": NUMBER, "train_seconds": NUMBER})),
    "epochs": {**_list(_object({"epoch": INT, "steps": INT, "wall_s": NUMBER, "train_tokens": INT, "val_loss": NUMBER,
                                "val_ppl": NUMBER, "val_bpb": NUMBER},
                               {"partial": BOOL, "train_flops": NUMBER, "train_seconds": NUMBER})), "minItems": 1},
    "dynamics": _list(_object({"epoch": INT, "mlp": _list(_object({"active_fraction": NUMBER, "dead_fraction": NUMBER}))},
                              {"attention": _list(_object({"heads": _list(_object(
                                  {"entropy": NUMBER, "max_entropy": NUMBER, "prev_token": NUMBER}))}))})),
    "samples": _list(_object({"prompts": _list(_object({"prompt": STRING, "greedy": STRING, "sampled": STRING}))})),
    "final": _object({"step": INT, "val": EVAL_METRICS}, {"test": {"anyOf": [EVAL_METRICS, {"type": "null"}]}}),
}) | {"required": ["steps", "epochs", "dynamics", "final"]}  # version 1 has no evals or samples


def value_before_it_was_recorded(key: str, section: dict):
    """What a run whose log predates setting ``key`` did (``section``: the rest of that log section,
    or of the request): the default it ran with, so such a log still matches, and is described, as
    what it was. "<missing>" for a key that has no such default."""
    legacy = {"final_ln": section.get("preset") == "gpt2", "mlp_init": "standard", "dropout": 0.0,
              "tie_embeddings": False, "unembed_bias": "none", "word_type_dropout": 0.0, "unembed_dropout": 0.0, "embed_scale": 1.0,
              "patience": None, "keep": "last", "train_fraction": 1.0}
    return legacy.get(key, "<missing>")


def recorded(section: dict, key: str):
    """``section[key]``, or what a log from before ``key`` existed ran with."""
    return section[key] if key in section else value_before_it_was_recorded(key, section)


def schema_problem(log: dict, schema: dict) -> str | None:
    """The first place where ``log`` breaks ``schema``, as "field $.a.b: reason", or None."""
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(log))
    if error is None:
        return None
    return f"field {error.json_path}: {error.message[:120]}"


class WriteError(Exception):
    """A file could not be written; the message names the file and the OS error, in one line."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file: readable by others, unlike mkstemp's 0600


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    A reader (or a run resumed after a crash) sees the old file or the new one, never half of one.
    On failure the temporary file is removed and the old file is untouched. The content comes whole,
    already serialised, so that every failure is the OS's own error on a plain write (a full disk
    is ENOSPC here, not an error of some serialiser's internals), and the message can say how much
    room the file needs. The folder must exist: one removed under a running job is a fault to
    report, not to paper over.
    """
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as err:  # also KeyboardInterrupt: no partial file is ever left behind
        if tmp is not None and os.path.exists(tmp):  # removed first, so the free space below is true
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise WriteError(f"could not write {path}: {err.strerror or err}{room_needed(err, path, len(data))}") from err
        raise


def room_needed(err: OSError, path: Path, size: int) -> str:
    """For a full disk, how much the file needs and how much is free (after our partial file is gone)."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return ""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return f" (needs {megabytes(size)})"
    return f" (needs {megabytes(size)}, {megabytes(free)} free)"


def megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files that an atomic write of ``path`` left behind when its process was killed."""
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def write_log(log: dict, path: Path) -> None:
    atomic_write(path, (json.dumps(log, indent=1) + "\n").encode())


def read_log(path: Path) -> dict:
    """The log at ``path``; ValueError (with a one-line reason) if it is unreadable or not a log."""
    try:
        log = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"unreadable ({type(err).__name__})") from None
    if not isinstance(log, dict) or "schema_version" not in log:
        raise ValueError("not a train_simple.py log")
    if log["schema_version"] not in REQUIRED_KEYS:
        raise ValueError(f"schema_version {log['schema_version']!r}, expected one of {sorted(REQUIRED_KEYS)}")
    missing = [key for key in REQUIRED_KEYS[log["schema_version"]] if key not in log]
    if missing:
        raise ValueError(f"missing {', '.join(map(repr, missing))}")
    problem = schema_problem(log, LOG_SCHEMA if log["schema_version"] > 1 else {**LOG_SCHEMA, "required": []})
    if problem is None and log["status"] == COMPLETE:
        problem = schema_problem(log, COMPLETE_SCHEMA)
    if problem is not None:
        raise ValueError(problem)
    return with_current_names(log)


OLD_PRESET_NAMES = {"seed": "reference"}  # the study's architecture was "seed" until the name read as a random seed


def with_current_names(log: dict) -> dict:
    """An older log with today's name for its preset, so that it compares, groups and reads as what it was."""
    config = log.get("model_config")
    if isinstance(config, dict) and config.get("preset") in OLD_PRESET_NAMES:
        config["preset"] = OLD_PRESET_NAMES[config["preset"]]
    return log


def is_finished(log: dict) -> bool:
    """A complete run with its final evaluation."""
    return log["status"] == COMPLETE and bool(log["final"]) and bool(log["epochs"])


def failed_non_finite(log: dict) -> bool:
    return str(log["status"]).startswith(f"{FAILED}: {NON_FINITE}")


def last_step(log: dict) -> int:
    """The optimizer steps a run had completed when its log was written."""
    if "progress" in log:
        return int(log["progress"]["step"])
    return int(log["steps"][-1]["step"]) if log["steps"] else 0  # version 1: the last logged step
