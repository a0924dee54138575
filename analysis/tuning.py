"""The tuning's table in a study's report: each arm's candidates, their selection losses, the one
chosen, and (for a random search) each arm's expected best loss as a function of the number of trials."""

from __future__ import annotations

import math

import numpy as np

from study_file.tuning import Candidate, Tuning, choose


def markdown_tuning(candidates: list[Candidate], tuning: Tuning) -> str:
    """The candidates' table: each arm's lrs, their objectives, and which one was chosen."""
    objectives = [(c, c.objective()) for c in candidates]  # each log read once
    chosen = {arm: c.lr for arm, c in (choose(objectives) or {}).items()}
    if tuning.trials:
        return markdown_search_tuning(objectives, tuning)
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


def markdown_search_tuning(objectives: list[tuple[Candidate, float | None]], tuning: Tuning) -> str:
    """A random search's table: each configuration's selection loss for every arm, the chosen one marked,
    and each arm's expected best selection loss as a function of the number of trials (Dodge et al.
    2019: a ranking that changes along it is a budget artefact)."""
    chosen = choose(objectives) or {}
    arms = list(dict.fromkeys(c.arm for c, _ in objectives))
    configs = list(dict.fromkeys(tuple(sorted({"lr": c.lr, **c.flags}.items())) for c, _ in objectives))
    value = {(c.arm, tuple(sorted({"lr": c.lr, **c.flags}.items()))): v for c, v in objectives}

    def shown(v: float | None, mark: bool) -> str:
        text = "not finished" if v is None else "diverged" if math.isinf(v) else f"{v:.4f}"
        return f"**{text}**" if mark else text

    lines = [f"Each arm trained the same {tuning.trials} configurations, drawn once from the space with sampler seed "
             f"{tuning.sampler_seed}, on the tuning seed {tuning.seed}; the lowest selection loss at the best point "
             f"wins (bold).", "",
             "| configuration | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
    for config in configs:
        cells = [shown(value.get((arm, config)), arm in chosen and
                       tuple(sorted({"lr": chosen[arm].lr, **chosen[arm].flags}.items())) == config) for arm in arms]
        lines.append("| " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in config) + " | "
                     + " | ".join(cells) + " |")
    finished = {arm: [v for (a, _), v in value.items() if a == arm and v is not None and math.isfinite(v)]
                for arm in arms}
    if all(len(v) == tuning.trials for v in finished.values()):
        budgets = sorted({1, 2, tuning.trials // 2, tuning.trials} - {0})
        lines += ["", "Expected best selection loss of n trials (Dodge et al. 2019: n draws with replacement from the "
                      "trials run, so at n near their number it is optimistic, and it never goes below the best seen):",
                  "", "| arm | " + " | ".join(f"n = {n}" for n in budgets) + " |", "|---|" + "---:|" * len(budgets)]
        for arm in arms:
            lines.append(f"| {arm} | " + " | ".join(f"{expected_best(finished[arm], n):.4f}" for n in budgets) + " |")
    if not chosen:
        lines += ["", "No choice yet: a configuration has not finished, or all of an arm's diverged."]
    return "\n".join(lines)


def expected_best(losses: list[float], n: int) -> float:
    """The expected lowest of n trials drawn with replacement from these N trials' losses (Dodge et al.
    2019, eq. 1): with the losses sorted, v_(1) <= ... <= v_(N), the lowest of n draws is v_(i) with
    probability ((N - i + 1) / N)^n - ((N - i) / N)^n. Its bias: the N trials stand for the space, so at
    n near N it is optimistic about what N fresh trials would find, and it never goes below the best seen."""
    values = np.sort(np.asarray(losses, dtype=np.float64))
    count = len(values)
    at_least = ((count - np.arange(count)) / count) ** n  # P(lowest of n >= v_(i)), i = 1..N
    below = np.append(at_least[1:], 0.0)
    return float(np.sum(values * (at_least - below)))
