"""The analysis's input: run logs read and checked (run_log.py), and runs grouped so that only runs
with the same settings are ever pooled. A group's runs differ only in activation and seed; every
other setting splits them (a sweep's lr, a precision, a data split)."""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metrics import logged_name, role_and_metric
from run_log import is_finished, last_step, read_log
from transformer_from_scratch.catalog import describe_model_size, variant_name


POINTS = ("final", "best_selection")


# What each evaluated split is for, by its key in the logs: the keys stay val_*/test_* (old logs read
# as they are), every output names the role and the split (in a run trained on `test`, "test" is
# validation half B).
SPLIT_ROLES = {"train": "training", "val": "selection", "test": "report"}


def split_name(log: dict, role: str) -> str:
    """The split a run read in ``role`` ("val", "test"), as its log names it ("validation:A"); "?"
    where the log has none."""
    return ((log.get("data") or {}).get(role) or {}).get("split", "?")


KEPT_NGRAMS = "ngrams.json"  # ngrams of logs that predate them, kept beside them (ngrams.py)


# Settings that identify a variant or a repetition rather than a different experiment.
NOT_GROUPING = {"act_fn", "match_params", "d_hidden", "training_flops_per_token", "activation", "seed", "command"}


class AnalysisError(Exception):
    """No usable logs, a bad log under --strict, or an unwritable output folder: one line, exit code 2."""


@dataclass
class Run:
    path: Path
    log: dict
    variant: str  # activation, "(matched)" for parameter-matched gated MLPs
    seed: int
    group_key: str
    settings: dict  # the grouping settings, flattened

    def metric(self, name: str) -> float:
        split, key = role_and_metric(name)
        value = (self.log["final"].get(split) or {}).get(key)  # None: not measured (or an older log)
        return float(value) if value is not None else math.nan

    def metric_at(self, name: str, point: str) -> float:
        """``name`` at the run's end, or at its evaluation with the lowest selection (val) loss: a
        point chosen on the selection split, read (for a test_* metric) on the report split."""
        if self.reads_final(point):
            return self.metric(name)
        value = self.best_evaluation().get(name)
        return float(value) if value is not None else math.nan

    def article_losses_at(self, name: str, point: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The NLL summed per article and the targets per article behind a loss metric (``*_loss``) at
        ``point``, where the log recorded them (None in logs from before, or for another metric)."""
        split, key = role_and_metric(name)
        if key != "loss":
            return None
        if self.reads_final(point):
            entry = self.log["final"].get(split) or {}
            nll, tokens = entry.get("article_nll"), entry.get("article_tokens")
        else:
            best = self.best_evaluation()
            nll, tokens = best.get(logged_name(split, "article_nll")), best.get(logged_name(split, "article_tokens"))
        if nll is None or tokens is None:
            return None
        return np.asarray(nll, dtype=np.float64), np.asarray(tokens, dtype=np.int64)

    def reads_final(self, point: str) -> bool:
        """Whether ``point`` is read from the run's final numbers. A run that --patience stopped early
        is read at its best point either way: its end is past it (its final numbers already are the
        best point's when it kept those weights, --keep best)."""
        stopped = self.log.get("stopped_early") and self.log["final"].get("kept") != "best"
        return point == "final" and not stopped

    def best_evaluation(self) -> dict:
        """The evaluation with the lowest selection (val) loss; {} where none is finite."""
        entries = [e for e in evaluations(self) if math.isfinite(e.get("val_loss", math.nan))]
        return min(entries, key=lambda e: e["val_loss"]) if entries else {}


def flatten(prefix: str, obj, out: dict) -> dict:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in NOT_GROUPING:
                flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = obj
    return out


def grouping_settings(log: dict) -> dict:
    data = {role: {k: info.get(k) for k in ("split", "sha256", "layout", "max_length")} if info else None
            for role, info in log["data"].items() if role in ("train", "val", "test")}
    return flatten("", {"model": log["model_config"], "train": log["train_config"], "data": data}, {})


def load_run(path: Path, ignore: set[str] = frozenset()) -> Run:
    """The run in a log file; ValueError (one line) if it is not a readable train_simple.py log.
    ``ignore``: settings that do not split runs into groups here (a study's per-arm lr)."""
    log = read_log(path)
    try:
        settings = {k: v for k, v in grouping_settings(log).items() if k not in ignore}
        model = log["model_config"]
        return Run(path, log, variant_name(model["act_fn"], model.get("match_params", False)),
                   int(log["train_config"]["seed"]), json.dumps(settings, sort_keys=True), settings)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"malformed ({type(err).__name__}: {err})") from None


@dataclass
class Loaded:
    finished: list[Run]  # complete runs, each (settings, activation, seed) once
    unfinished: list[Run]  # failed, interrupted or still running: listed, never pooled
    skipped: list[tuple[Path, str]]  # logs that could not be used, and why: listed too


def load_runs(paths: list[Path], strict: bool, ignore: set[str] = frozenset()) -> Loaded:
    loaded, seen = Loaded([], [], []), {}
    for path in paths:
        try:
            if not path.is_file():  # a FIFO would block the read forever; a folder is no log
                raise ValueError("not a regular file")
            run = load_run(path, ignore)
        except ValueError as err:
            if strict:
                raise AnalysisError(f"{path}: {err}") from None
            warnings.warn(f"skipping {path}: {err}", stacklevel=2)
            loaded.skipped.append((path, str(err)))
            continue
        if not is_finished(run.log):
            if strict:
                raise AnalysisError(f"{path}: status {run.log['status']!r}")
            loaded.unfinished.append(run)
            continue
        broken = non_finite_final(run.log)
        if broken:
            if strict:
                raise AnalysisError(f"{path}: {broken}")
            warnings.warn(f"skipping {path}: {broken}", stacklevel=2)
            loaded.skipped.append((path, broken))
            continue
        key = (run.group_key, run.variant, run.seed)
        if key in seen:  # a copied or renamed log is the same run, not another seed
            reason = f"repeats the run in {seen[key].name} (same settings, activation and seed): counted once"
            warnings.warn(f"{path} {reason}", stacklevel=2)
            loaded.skipped.append((path, reason))
            continue
        seen[key] = path
        loaded.finished.append(run)
    return loaded


def non_finite_final(log: dict) -> str | None:
    """Why a complete log's final numbers cannot be analysed (a loss that is not a finite number), or None."""
    for role in ("val", "test"):
        loss = (log["final"].get(role) or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            return f"marked complete, but its final {SPLIT_ROLES[role]} loss is {loss}: not analysed"
    return None


def log_paths(args: argparse.Namespace) -> list[Path]:
    """The logs to read: the files given (a folder stands for its logs), else --results_dir's."""
    if args.logs:
        return [p for given in args.logs for p in (folder_logs(given) if given.is_dir() else [given])]
    if not args.results_dir.is_dir():
        raise AnalysisError(f"results folder {args.results_dir} does not exist")
    return folder_logs(args.results_dir)


def folder_logs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.json") if p.name != KEPT_NGRAMS)


def evaluations(run: Run) -> list[dict]:
    """Every validation pass of a run, within epochs (--eval_every) and at epoch ends, by step."""
    return sorted([*run.log.get("evals", []), *run.log["epochs"]], key=eval_step)


def eval_step(entry: dict) -> int:
    return entry["steps"] if "steps" in entry else entry["step"]


def by_variant(group: list[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = defaultdict(list)
    for run in group:
        out[run.variant].append(run)
    return dict(sorted(out.items()))


def kept_ngrams(folder: Path) -> list[dict]:
    """The ngrams kept beside logs that predate them (ngrams.py writes ngrams.json)."""
    path = folder / KEPT_NGRAMS
    try:
        kept = json.loads(path.read_text()) if path.is_file() else []
    except (OSError, ValueError) as err:
        warnings.warn(f"ignoring {path}: {err}", stacklevel=2)
        return []
    return [e for e in kept if isinstance(e, dict) and {"identity", "ngrams"} <= set(e)] if isinstance(kept, list) else []


def varying_settings(settings: list[dict]) -> list[str]:
    """The setting names whose values differ between these groups' settings."""
    return sorted(k for k in set().union(*settings) if len({repr(s.get(k)) for s in settings}) > 1)


def group_runs(runs: list[Run]) -> list[list[Run]]:
    """Runs with the same settings, pooled; largest group first, then in order of the settings that
    vary (numbers by value), so a sweep reads lr 1e-4, 3e-4, 1e-3, ... and not in file-name order."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.group_key].append(run)
    varying = varying_settings([group[0].settings for group in groups.values()])

    def order(group: list[Run]) -> tuple:
        values = [group[0].settings.get(k) for k in varying]
        return -len(group), [(0, v, "") if isinstance(v, (int, float)) else (1, 0, repr(v)) for v in values]

    return sorted(groups.values(), key=order)


def differences(groups: list[list[Run]]) -> list[str]:
    """For each group, its values of the settings that vary between groups: what tells it apart.

    Every group is named the same way, so no group (say, lr 1e-3 in a sweep) passes for the reference.
    """
    settings = [group[0].settings for group in groups]
    varying = varying_settings(settings)
    return [", ".join(f"{k}={s.get(k)!r}" for k in varying) or "all runs" for s in settings]


def describe_group(group: list[Run]) -> str:
    log = group[0].log
    data, train = log["data"], {**log["train_config"], "layout": log["data"]["train"]["layout"]}
    return (f"trained on `{data['train']['split']}` ({data['train']['tokens']:,} scored tokens per epoch), "
            f"selection split `{data['val']['split']}` ({data['val']['tokens']:,} tokens, {data['val']['bytes']:,} bytes)"
            f"{', report split `' + data['test']['split'] + '`' if data.get('test') else ''}"
            f"{' (no report split: ' + data['test_skipped'] + ')' if data.get('test_skipped') else ''}; "
            f"{train['layout']} layout, batch {train['batch_size']}, {lr_text(group)}, "
            f"{training_length(group)} (num_epochs {train['num_epochs']}, max_steps {train['max_steps']}), "
            f"{model_text(log['model_config'])}{kept_text(group)}")


def lr_text(group: list[Run], spec: str = "") -> str:
    """The group's lr: one value, or each arm's where a study gave the arms their own."""
    lrs = {r.variant: r.log["train_config"]["lr"] for r in sorted(group, key=lambda r: r.variant)}
    if len(set(lrs.values())) == 1:
        return f"lr {format(next(iter(lrs.values())), spec)}"
    return "lr per arm: " + ", ".join(f"{arm} {lr:{spec or 'g'}}" for arm, lr in lrs.items())


def training_length(group: list[Run]) -> str:
    """The steps the runs trained: one count, or the range where some stopped early."""
    trained = sorted({last_step(r.log) for r in group})
    return f"{trained[0]} steps" if len(trained) == 1 else f"{trained[0]}-{trained[-1]} steps"


def kept_text(group: list[Run]) -> str:
    """Where the runs' final numbers come from, when not from their last step."""
    if all(r.log["final"].get("kept") == "best" for r in group):
        return "; each run's final numbers are its best selection point's (`--keep best`)"
    return ""


def fixed_settings(group: list[Run]) -> str:
    """The settings every run of a figure shares, for its title."""
    log = group[0].log
    cfg, train = log["model_config"], log["train_config"]
    return (f"{lr_text(group, 'g')}, {model_text(cfg)}, {log['data']['train']['layout']}, "
            f"batch {train['batch_size']}")


def model_text(model_config: dict) -> str:
    """The model's size (named where it is one of train_simple.py's --size, so that a small model is never
    called the reference one), and its architecture preset where it is not the study's."""
    preset = model_config.get("preset", "reference")
    return describe_model_size(model_config) + ("" if preset == "reference" else f", preset {preset}")


def steps_per_epoch(run: Run) -> int:
    return math.ceil(run.log["data"]["train"]["sequences"] / run.log["train_config"]["batch_size"])


def step_curve(run: Run, key: str) -> pd.Series:
    """A metric of every evaluation (val_* or test_*), by step; NaN where an evaluation lacks it."""
    return pd.Series({eval_step(e): e.get(key, math.nan) for e in evaluations(run)}, dtype=float)


def validation_curve(run: Run, key: str) -> pd.Series:
    """A metric of every evaluation over training, in epochs (fractions within an epoch)."""
    curve = step_curve(run, key)
    return pd.Series(curve.to_numpy(), index=curve.index / steps_per_epoch(run), dtype=float)


def step_label(step: int, run: Run) -> str:
    """"step 554 (epoch 2)" at an epoch's end, "step 556" within one: steps never round to one another."""
    epoch = {e["steps"]: e["epoch"] for e in run.log["epochs"] if not e.get("partial")}.get(step)
    return f"step {step}" + (f" (epoch {epoch})" if epoch is not None else "")


def one_machine_alone(group: list[Run]) -> bool:
    """Whether every run ran on the same machine, alone on it (all its cores): only then do seconds
    compare. A log that does not say how it ran does not compare."""
    facts = {(r.log["run"].get("cpu"), r.log["run"].get("device"), r.log["run"].get("threads"),
              r.log["run"].get("cpu_count")) for r in group}
    if len(facts) != 1:
        return False
    _, _, threads, cores = facts.pop()
    return threads is not None and threads == cores


def has_attention(group: list[Run]) -> bool:
    return has_probes(group) and all(d.get("attention") for r in group for d in r.log["dynamics"])


def has_probes(group: list[Run]) -> bool:
    """Whether every run probed its model (train_simple.py --no-probes skips it)."""
    return all(r.log["dynamics"] for r in group)
