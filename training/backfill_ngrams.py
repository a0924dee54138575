"""n-gram models for logs written before runs recorded them: computed once from the data a log
names (checked by sha256), with the run's own data loading so the tokens are exactly the run's, and
kept in ``ngrams.json`` beside the logs, which analyze_results.py reads.

    python -m training.backfill_ngrams results/old_study/relu_seed1.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ngrams import data_identity
from data_utils import DataError
from run_log import atomic_write, read_log
from training.data import load_data
from training.settings import build_parser


def main(argv: list[str] | None = None) -> int:
    """Compute the n-gram scores of a run's data and add them to a folder's ngrams.json."""
    p = argparse.ArgumentParser(description="n-gram models for logs that predate them: written to "
                                            "<folder>/ngrams.json, which analyze_results.py reads.")
    p.add_argument("log", type=Path, help="a log whose data section says which data (flags are read from it)")
    args = p.parse_args(argv)
    try:
        log = read_log(args.log)
        return backfill(args.log, log)
    except (ValueError, DataError) as err:  # an unreadable log, data that cannot be found
        print(f"error: {args.log}: {err}", file=sys.stderr)
        return 2


def backfill(log_path: Path, log: dict) -> int:
    flags = {**log["run"]["flags"], **{k: log["data"][k] for k in ("layout", "max_length", "train_split",
                                                                   "val_split", "test_split")}}
    parsed = build_parser().parse_args(
        [f"--{k}={v}" for k, v in flags.items() if v is not None and k in ("layout", "max_length", "train_split",
                                                                           "val_split", "test_split", "data_dir",
                                                                           "tokenizer", "cache_dir")])
    data = load_data(parsed)
    identity = data_identity(data.describe({}))
    if identity != data_identity(log["data"]):
        print(f"error: the data found now differs from {log_path}'s (sha256 or tokenizer)", file=sys.stderr)
        return 2
    path = log_path.parent / "ngrams.json"
    kept = json.loads(path.read_text()) if path.exists() else []
    kept = [entry for entry in kept if entry["identity"] != identity] + [{"identity": identity, "ngrams": data.ngrams}]
    atomic_write(path, (json.dumps(kept, indent=1) + "\n").encode())
    print(f"{path}: {json.dumps(data.ngrams)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
