"""Whether a study file was declared before its runs: its sha256 and the commit that holds this text.

A study's declared comparisons are confirmatory only if the file that declared them was fixed before
any run began. Git is the record: the commit that first held the file's present text, and its time,
set against the time each run started. study.py records this in every run's log (``run.study``);
the analysis says in the report's header whether the study was pre-registered, and if not, why not.
Pure Python and git: the analysis reads it without torch.
"""

from __future__ import annotations

import datetime
import hashlib
import subprocess
from pathlib import Path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10,
                          check=True).stdout.strip()


def commit_holding(path: Path) -> tuple[str, str] | None:
    """(commit, its ISO time) of the oldest commit whose version of ``path`` is the file's present
    text, or None: not in a git checkout, not committed, or changed since (a text no commit holds)."""
    folder, name = path.parent, path.name
    try:
        blob = git(folder, "hash-object", name)
        history = git(folder, "log", "--format=%H %cI", "--", name).splitlines()  # newest first
        holding = [line.split() for line in history if git(folder, "rev-parse", f"{line.split()[0]}:./{name}") == blob]
    except (OSError, subprocess.SubprocessError):
        return None
    return (holding[-1][0], holding[-1][1]) if holding else None


def declaration(path: Path) -> dict:
    """What a run's log records of the study file that declared it (``run.study``)."""
    held = commit_holding(path)
    return {"file": str(path), "sha256": sha256_of(path), "commit": held[0] if held else None,
            "committed_at": held[1] if held else None}


def uncommitted_warning(record: dict) -> str | None:
    """One line when the file's present text is in no commit: its runs would not be pre-registered."""
    if record["commit"] is not None:
        return None
    return (f"warning: {record['file']} is not committed as it is now (sha256 {record['sha256'][:12]}): its runs "
            f"are not pre-registered; commit it before they start")


def verdict(records: list[tuple[dict | None, str]], present_sha256: str | None) -> str:
    """The report header's line on pre-registration, from each run's (``run.study`` or None, start
    time) and the study file's sha256 today (None: the analysis was not given the study file)."""
    unrecorded = sum(record is None for record, _ in records)
    if unrecorded:
        return (f"**Not pre-registered**: {unrecorded} of {len(records)} runs carry no record of the study file that "
                f"declared them (not started by study.py, or before it recorded one).")
    texts = {r["sha256"] for r, _ in records}
    if len(texts) > 1:
        return f"**Not pre-registered**: the runs were declared by {len(texts)} different versions of the study file."
    record = records[0][0]
    short = f"sha256 `{record['sha256'][:12]}`"
    if present_sha256 is not None and present_sha256 != record["sha256"]:
        return f"**Not pre-registered as it reads now**: the study file has changed since its runs ({short} then)."
    if any(r["commit"] is None for r, _ in records):
        return f"**Not pre-registered**: the study file ({short}) was in no commit when its runs began."
    record = min((r for r, _ in records), key=lambda r: parse(r["committed_at"]))
    first_start = min(started for _, started in records)
    if parse(record["committed_at"]) > parse(first_start):
        return (f"**Not pre-registered**: the study file ({short}) was committed in `{record['commit'][:10]}` at "
                f"{record['committed_at']}, after its first run began ({first_start}).")
    return (f"Pre-registered: the study file ({short}) was committed in `{record['commit'][:10]}` at "
            f"{record['committed_at']}, unmodified, before its first run began ({first_start}).")


def parse(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp)
