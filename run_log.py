"""The run log: one JSON file per training run, written by train_simple.py, read by analyze_results.py.

This module is the contract between the two scripts and imports nothing heavier than the standard
library, so the analysis runs without torch. The README documents every key.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

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
NON_FINITE = "non-finite"  # the reason of a run whose loss or gradient stopped being finite


class WriteError(Exception):
    """A file could not be written; the message names the file and the OS error, in one line."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file: readable by others, unlike mkstemp's 0600


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it over ``path``.

    A reader (or a run resumed after a crash) sees the old file or the new one, never half of one.
    On failure the temporary file is removed and the old file is untouched. The folder must exist:
    one removed under a running job is a fault to report, not to paper over.
    """
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        with open(tmp, "wb") as f:  # by name, so that f.name says which file is being written
            write(f)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as err:
        raise WriteError(f"could not write {path}: {err.strerror or err}") from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files that an atomic write of ``path`` left behind when its process was killed."""
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def write_log(log: dict, path: Path) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(log, indent=1) + "\n").encode()))


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
