"""Whether a study file was declared before its runs: its sha256 and the commit that holds this text.

A study's declared comparisons are confirmatory only if the file that declared them was fixed before
any run began. Git is the record: the commit that first held the file's present text, and its time,
set against the time each run started. study.py records this in every run's log (``run.study``);
the analysis says in the report's header whether the study was pre-registered, and if not, why not.
The code is declared the same way: a declared study's run starts only from a clean tree (its commit
names the code), or stores its uncommitted change beside its log (``--allow_dirty``).
Pure Python and git: the analysis reads it without torch.
"""

from __future__ import annotations

import datetime
import hashlib
import subprocess
from pathlib import Path

from run_log import atomic_write


CODE_ROOT = Path(__file__).resolve().parent  # the toolkit's checkout


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30,
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


GIT_KEYS = ("git_commit", "git_dirty", "git_diff", "git_diff_sha256")  # what a log records of the code, per segment
CODE = (".", ":(exclude)results")  # git pathspecs of the code: results (logs, reports) are data, not code


def code_change() -> str:
    """The uncommitted change to the code, as a patch: ``git diff HEAD`` outside results/, then each
    untracked file that git does not ignore, as a new file (they can change what runs too)."""
    def patch(*args: str) -> str:  # unstripped: patches end in a newline; exit 1 of --no-index means "differs"
        return subprocess.run(["git", "-C", str(CODE_ROOT), *args], capture_output=True, text=True, timeout=30).stdout

    untracked = git(CODE_ROOT, "ls-files", "--others", "--exclude-standard", "-z", "--", *CODE).split("\0")
    git(CODE_ROOT, "rev-parse", "HEAD")  # outside a checkout: CalledProcessError, as the callers expect
    return patch("diff", "HEAD", "--binary", "--", *CODE) + "".join(
        patch("diff", "--no-index", "--binary", "--", "/dev/null", name) for name in filter(None, untracked))


def git_state() -> dict:
    """The commit this code is at, whether the code differs from it (``git_dirty``: tracked or untracked
    files outside results/), and that difference as a patch (``code_change``, "" when clean); None
    outside a git checkout."""
    try:
        commit = git(CODE_ROOT, "rev-parse", "HEAD") or None
        change = code_change()
        return {"git_commit": commit, "git_dirty": bool(change), "code_change": change}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None, "code_change": ""}


def store_code_change(change: str, output_dir: Path) -> dict:
    """Write a dirty tree's patch beside the logs as code-<sha12>.diff (one file per distinct change);
    what a log records of it: the file's name and its sha256."""
    digest = hashlib.sha256(change.encode()).hexdigest()
    name = f"code-{digest[:12]}.diff"
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(output_dir / name, change.encode())
    return {"git_diff": name, "git_diff_sha256": digest}


def dirty_refusal(change: str) -> str:
    """Why a declared study's run does not start from this tree: one line."""
    files = sorted({line.rsplit(" b/", 1)[-1] for line in change.splitlines() if line.startswith("diff --git ")})
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return (f"refusing to run a declared study from a tree with uncommitted code changes ({shown}): commit them, "
            f"or pass --allow_dirty to store the change beside the log")


def parse(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp)
