"""The [tuning] table of a study file: each arm's learning rate, chosen before its final seeds.

    lrs = [4e-3]                  # the lr the candidates are multiples of (or an arm's own lr)
    [tuning]
    seed = 3000                   # trains every candidate; not one of the final seeds
    lr_multipliers = [0.5, 1, 2]  # the candidates: lr x each

Each arm trains once per candidate on the tuning seed, keeping its best weights, in ``<study
folder>/tuning/``; its lr is the candidate whose run reaches the lowest selection loss at its best
point (the search's objective). One lr for all arms would favour the arm it was tuned for; a choice
on the selection split leaves the report split unseen by every choice. A candidate that diverged
(a non-finite loss) loses; while one is missing or unfinished, there is no choice, and no final run
starts. The choice is read from the tuning logs whenever it is needed, so it cannot go stale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from run_log import failed_non_finite, is_finished, read_log
from search.runner import objective_value
from search.space import StudyError

TUNING_KEYS = {"seed", "lr_multipliers"}


@dataclass(frozen=True)
class Tuning:
    seed: int
    lr_multipliers: tuple[float, ...]


def load_tuning(raw, where: str, final_seeds: list[int]) -> Tuning:
    """The [tuning] table ``raw``; StudyError (one line) for anything missing or wrong."""
    if not isinstance(raw, dict):
        raise StudyError(f"{where}: [tuning] must be a table")
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
            or not all(isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0 for m in multipliers)):
        raise StudyError(f"{where}: [tuning] lr_multipliers must be distinct positive numbers, got {multipliers!r}")
    return Tuning(seed, tuple(float(m) for m in multipliers))


@dataclass(frozen=True)
class Candidate:
    """One arm's run at one candidate lr."""

    arm: str
    lr: float
    log_path: Path

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
    return choose([(c, c.objective()) for c in candidates])


def choose(objectives: list[tuple[Candidate, float | None]]) -> dict[str, float] | None:
    """chosen_lrs, from each candidate's objective as read once."""
    if any(value is None for _, value in objectives):
        return None
    best: dict[str, tuple[float, float]] = {}
    for candidate, value in objectives:
        best[candidate.arm] = min(best.get(candidate.arm, (math.inf, math.inf)), (value, candidate.lr))
    if any(math.isinf(value) for value, _ in best.values()):
        return None
    return {arm: lr for arm, (_, lr) in best.items()}


def markdown_tuning(candidates: list[Candidate], tuning: Tuning) -> str:
    """The candidates' table: each arm's lrs, their objectives, and which one was chosen."""
    objectives = [(c, c.objective()) for c in candidates]  # each log read once
    chosen = choose(objectives) or {}
    lines = [f"Each arm's lr was chosen on the selection split before its final seeds: every candidate trained "
             f"once on the tuning seed {tuning.seed}, and the lowest selection loss at its best point wins.", "",
             "| arm | lr | selection loss (best point) | chosen |", "|---|---:|---:|---|"]
    for candidate, value in objectives:
        shown = "not finished" if value is None else "diverged" if math.isinf(value) else f"{value:.4f}"
        lines.append(f"| {candidate.arm} | {candidate.lr:g} | {shown} | "
                     f"{'yes' if chosen.get(candidate.arm) == candidate.lr else ''} |")
    if not chosen:
        lines += ["", "No choice yet: a candidate has not finished, or all of an arm's candidates diverged."]
    return "\n".join(lines)
