"""The [tuning] table of a study file: each arm's settings, chosen before its final seeds, on an
equal budget for every arm. Either each arm's lr among multiples of one:

    lrs = [4e-3]                  # the lr the candidates are multiples of (or an arm's own lr)
    [tuning]
    seed = 3000                   # trains every candidate; not one of the final seeds
    lr_multipliers = [0.5, 1, 2]  # the candidates: lr x each

or a random search over a space, the same for every arm (and every rung of a ladder):

    [tuning]
    seed = 3000
    trials = 8                    # configurations, drawn once from the space with sampler_seed:
    sampler_seed = 7              # every arm trains exactly the same ones (no pruner)
    [tuning.space]                # as [search.space]: a list of choices or {low, high, log}
    lr = {low = 1e-3, high = 1e-2, log = true}
    weight_decay = {low = 0.01, high = 1.0, log = true}

Equal draws are the fairest equal budget (Melis et al. 2018; Dodge et al. 2019): no arm gets
configurations another did not, and no sampler adapts to one arm's results.

Each arm trains once per candidate on the tuning seed, keeping its best weights, in ``<study
folder>/tuning/``; its lr is the candidate whose run reaches the lowest selection loss at its best
point (the search's objective). One lr for all arms would favour the arm it was tuned for; a choice
on the selection split leaves the report split unseen by every choice. A candidate that diverged
(a non-finite loss) loses; while one is missing or unfinished, there is no choice, and no final run
starts. The choice is read from the tuning logs whenever it is needed, so it cannot go stale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from run_log import failed_non_finite, is_finished, read_log
from study_file.space import Choice, StudyError, dimension, is_number

TUNING_KEYS = {"seed", "lr_multipliers"}
SEARCH_TUNING_KEYS = {"seed", "trials", "sampler_seed", "space"}


@dataclass(frozen=True)
class Tuning:
    seed: int
    lr_multipliers: tuple[float, ...] = ()
    trials: int = 0  # a random search's configurations (0: lr multipliers)
    sampler_seed: int = 0
    space: dict = field(default_factory=dict)  # name -> study_file.space.Choice | Range

    def configurations(self) -> list[dict]:
        """The random search's configurations, drawn once from the space with the sampler seed (log
        ranges uniformly in the log, integer ranges as integers); each value rounded to 6 significant
        digits, as a run name shows it."""
        rng = np.random.default_rng(self.sampler_seed)
        out = []
        for _ in range(self.trials):
            config = {}
            for name, dim in sorted(self.space.items()):
                if isinstance(dim, Choice):
                    config[name] = dim.values[int(rng.integers(len(dim.values)))]
                elif dim.integer:
                    config[name] = int(rng.integers(dim.low, dim.high + 1))
                elif dim.log:
                    config[name] = float(f"{math.exp(rng.uniform(math.log(dim.low), math.log(dim.high))):.6g}")
                else:
                    config[name] = float(f"{rng.uniform(dim.low, dim.high):.6g}")
            out.append(config)
        return out


def load_tuning(raw, where: str, final_seeds: list[int]) -> Tuning:
    """The [tuning] table ``raw``; StudyError (one line) for anything missing or wrong."""
    if not isinstance(raw, dict):
        raise StudyError(f"{where}: [tuning] must be a table")
    if "space" in raw:
        return load_search_tuning(raw, where, final_seeds)
    unknown = set(raw) - TUNING_KEYS
    missing = TUNING_KEYS - set(raw)
    if unknown or missing:
        raise StudyError(f"{where}: [tuning] needs exactly {', '.join(sorted(TUNING_KEYS))}"
                         f"{'; unknown: ' + ', '.join(sorted(unknown)) if unknown else ''}")
    seed, multipliers = raw["seed"], raw["lr_multipliers"]
    if not isinstance(seed, int) or seed in final_seeds:
        raise StudyError(f"{where}: [tuning] seed must be a whole number not among the final seeds {final_seeds}, "
                         f"got {seed!r}")
    if (not isinstance(multipliers, list) or not multipliers or len(set(multipliers)) != len(multipliers)
            or not all(is_number(m) and m > 0 for m in multipliers)):
        raise StudyError(f"{where}: [tuning] lr_multipliers must be distinct positive numbers, got {multipliers!r}")
    return Tuning(seed, tuple(float(m) for m in multipliers))


def load_search_tuning(raw: dict, where: str, final_seeds: list[int]) -> Tuning:
    """[tuning] as a random search over [tuning.space], the same configurations for every arm."""
    if set(raw) != SEARCH_TUNING_KEYS:
        raise StudyError(f"{where}: [tuning] with a space needs exactly {', '.join(sorted(SEARCH_TUNING_KEYS))}")
    seed, trials, sampler_seed, space = raw["seed"], raw["trials"], raw["sampler_seed"], raw["space"]
    if type(seed) is not int or seed in final_seeds:
        raise StudyError(f"{where}: [tuning] seed must be a whole number not among the final seeds {final_seeds}, "
                         f"got {seed!r}")
    if type(trials) is not int or trials < 1 or type(sampler_seed) is not int or sampler_seed < 0:
        raise StudyError(f"{where}: [tuning] trials must be a positive and sampler_seed a non-negative whole number, "
                         f"got {trials!r} and {sampler_seed!r}")
    if not isinstance(space, dict) or not space:
        raise StudyError(f"{where}: [tuning.space] must be a table of at least one flag")
    dims = {name: dimension(name, value, f"{where}: [tuning.space]") for name, value in space.items()}
    return Tuning(seed, (), trials, sampler_seed, dims)


def objective_value(log: dict) -> float:
    """The selection loss at the run's best point: its final validation loss, since every tuning run
    and search trial keeps its best weights (--keep best) and evaluates them on the whole selection split."""
    return float(log["final"]["val"]["loss"])


@dataclass(frozen=True)
class Candidate:
    """One arm's run at one candidate lr (and, in a random search, the other flags its configuration sets)."""

    arm: str
    lr: float
    log_path: Path
    flags: dict = field(default_factory=dict)

    def log(self) -> dict | None:
        """The run's log; None when it is not there yet, or unreadable (rerunning the study trains it again)."""
        try:
            return read_log(self.log_path)
        except ValueError:
            return None

    def objective(self) -> float | None:
        """The selection loss at the run's best point; inf when it diverged; None while it has not finished."""
        log = self.log()
        if log is None:
            return None
        if failed_non_finite(log):
            return math.inf
        return objective_value(log) if is_finished(log) else None


def chosen_lrs(candidates: list[Candidate]) -> dict[str, float] | None:
    """Each arm's lr: its candidate with the lowest objective (the smaller lr on a tie); None until
    every candidate has finished, or when all of an arm's candidates diverged."""
    chosen = chosen_candidates(candidates)
    return None if chosen is None else {arm: c.lr for arm, c in chosen.items()}


def chosen_candidates(candidates: list[Candidate]) -> dict[str, Candidate] | None:
    """Each arm's chosen candidate (its lr and flags), as chosen_lrs chooses."""
    return choose([(c, c.objective()) for c in candidates])


def choose(objectives: list[tuple[Candidate, float | None]]) -> dict[str, Candidate] | None:
    """chosen_candidates, from each candidate's objective as read once."""
    if any(value is None for _, value in objectives):
        return None
    best: dict[str, tuple[float, float, int]] = {}
    for i, (candidate, value) in enumerate(objectives):
        best[candidate.arm] = min(best.get(candidate.arm, (math.inf, math.inf, -1)), (value, candidate.lr, i))
    if any(math.isinf(value) for value, _, _ in best.values()):
        return None
    return {arm: objectives[i][0] for arm, (_, _, i) in best.items()}
