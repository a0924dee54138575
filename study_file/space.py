"""The [search] table of a study file: what is searched (each train_simple.py flag a list of
choices or a {low, high, log} range), on which seed, for how long, and how trials are pruned.

    [search]
    tuning_seed = 1000            # trains every trial; not one of the final study's seeds
    trials = 60                   # complete + pruned trials in all, across resumes and workers
    hours = 12                    # and/or: trial hours in all (the sum of the trials' durations)
    pruner = "hyperband"          # "hyperband" | "successive_halving" | "median" | "none"
    min_evaluations = 2           # the pruner's smallest budget, in evaluations of the selection split
    max_evaluations = 48          # hyperband's largest (default: what the first finished trial reached)
    reduction_factor = 3
    [search.space]
    d_model = [64, 128, 256]      # choices
    lr = {low = 3e-4, high = 1e-2, log = true}
    n_layers = {low = 1, high = 4}          # whole numbers: an integer range
    mlp_ratio = {low = 2.0, high = 4.0}     # d_mlp = round(mlp_ratio * d_model): the one derived key

The study's arms are searched too when there are several (the parameter ``arm``), so the best
configuration is found per arm. The objective is the selection split's loss at the run's best point
(every trial runs with --keep best, so its final validation numbers are those of that point, on the
whole split). Bad input is a StudyError: one line, exit 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PRUNERS = ("hyperband", "successive_halving", "median", "none")
SEARCH_KEYS = {"tuning_seed", "trials", "hours", "pruner", "min_evaluations", "max_evaluations", "reduction_factor",
               "space", "heartbeat_seconds"}
DERIVED = {"mlp_ratio"}  # search-only keys that set a flag from others
# Flags a search may not set: the study sets them per trial (or they would split one trial's files).
NOT_SEARCHED = {"seeds", "activation", "run_name", "output_dir", "resume", "overwrite", "match_params", "keep"}


class StudyError(ValueError):
    """A study file that cannot be run: one line, exit 2."""


def is_number(value) -> bool:
    """A TOML number: an int or a float, not a boolean (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Choice:
    values: tuple


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and not self.log


@dataclass(frozen=True)
class Search:
    space: dict[str, Choice | Range]
    tuning_seed: int
    trials: int | None = None
    hours: float | None = None
    pruner: str = "hyperband"
    min_evaluations: int = 2
    reduction_factor: int = 3
    heartbeat_seconds: int = 60
    max_evaluations: int | None = None  # a trial whose worker stops beating for twice this is retried

    def suggest(self, trial, d_model_default: int) -> dict:
        """The flags of one trial, drawn by Optuna's ``trial`` (a retried trial gets its params back)."""
        params = {}
        for name, dimension in self.space.items():
            if isinstance(dimension, Choice):
                params[name] = trial.suggest_categorical(name, list(dimension.values))
            elif dimension.integer:
                params[name] = trial.suggest_int(name, dimension.low, dimension.high)
            else:
                params[name] = trial.suggest_float(name, dimension.low, dimension.high, log=dimension.log)
        if "mlp_ratio" in params:
            params["d_mlp"] = round(params.pop("mlp_ratio") * params.get("d_model", d_model_default))
        return params


def dimension(name: str, value, where: str) -> Choice | Range:
    if isinstance(value, list):
        if not value:
            raise StudyError(f"{where}: {name} has no choices")
        return Choice(tuple(value))
    if isinstance(value, dict):
        unknown = set(value) - {"low", "high", "log"}
        if unknown or not {"low", "high"} <= set(value):
            raise StudyError(f"{where}: {name} must be a list of choices or {{low, high, log}}, got {value}")
        low, high, log = value["low"], value["high"], bool(value.get("log", False))
        if not all(is_number(v) and math.isfinite(v) for v in (low, high)):
            raise StudyError(f"{where}: {name}'s low and high must be numbers, got {low!r} and {high!r}")
        if low > high:
            raise StudyError(f"{where}: {name} has low {low} > high {high}")
        if low == high:
            raise StudyError(f"{where}: {name} is an empty range ({low} to {high}): give a single value in [train]")
        if log and low <= 0:
            raise StudyError(f"{where}: {name} is a log range, so low must be positive, got {low}")
        return Range(low, high, log)
    raise StudyError(f"{where}: {name} must be a list of choices or {{low, high, log}}, got {value!r}")


def load_search(raw: dict, where: str, known_flags: set[str], final_seeds: list[int]) -> Search:
    """The [search] table ``raw``; ``known_flags``: train_simple.py's flags."""
    unknown = set(raw) - SEARCH_KEYS
    if unknown:
        raise StudyError(f"{where}: [search] has unknown key(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(sorted(SEARCH_KEYS))}")
    for key in ("tuning_seed", "space"):
        if key not in raw:
            raise StudyError(f"{where}: [search] needs {key}")
    if not isinstance(raw["space"], dict) or not raw["space"]:
        raise StudyError(f"{where}: [search.space] is empty")
    space = {}
    for name, value in raw["space"].items():
        if name in NOT_SEARCHED or (name not in known_flags and name not in DERIVED):
            allowed = "the study sets it per trial" if name in NOT_SEARCHED else "not a train_simple.py flag"
            raise StudyError(f"{where}: [search.space] cannot search {name!r} ({allowed})")
        space[name] = dimension(name, value, f"{where}: [search.space]")
    if "mlp_ratio" in space and "d_mlp" in space:
        raise StudyError(f"{where}: [search.space] sets d_mlp twice (d_mlp and mlp_ratio)")
    if raw["tuning_seed"] in final_seeds:
        raise StudyError(f"{where}: tuning_seed {raw['tuning_seed']} is one of the final seeds {final_seeds}")
    if raw.get("trials") is None and raw.get("hours") is None:
        raise StudyError(f"{where}: [search] needs a budget: trials and/or hours")
    if raw.get("pruner", "hyperband") not in PRUNERS:
        raise StudyError(f"{where}: unknown pruner {raw['pruner']!r}; choose one of {', '.join(PRUNERS)}")
    for key in ("trials", "min_evaluations", "max_evaluations", "reduction_factor", "heartbeat_seconds"):
        if key in raw and not (isinstance(raw[key], int) and raw[key] > 0):
            raise StudyError(f"{where}: [search] {key} must be a positive whole number, got {raw[key]!r}")
    if "hours" in raw and not (isinstance(raw["hours"], (int, float)) and raw["hours"] > 0):
        raise StudyError(f"{where}: [search] hours must be positive, got {raw['hours']!r}")
    return Search(space, int(raw["tuning_seed"]), raw.get("trials"), raw.get("hours"), raw.get("pruner", "hyperband"),
                  raw.get("min_evaluations", 2), raw.get("reduction_factor", 3), raw.get("heartbeat_seconds", 60),
                  raw.get("max_evaluations"))
