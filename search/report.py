"""A search's report: the n-gram models first, which study the search allows, the best
configuration per arm (chosen on the selection split, reported on the report split), every trial
(pruned and failed ones listed, never dropped), each flag's importance, and two figures: the
optimisation history and one slice per searched flag.

Reads the Optuna study (states, parameters, values) and each trial's run log; no torch.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from analysis import report  # noqa: E402
from analysis.findings import markdown_ngram_scores  # noqa: E402
from ngrams import logged_ngrams  # noqa: E402
from run_log import read_log  # noqa: E402
from search.runner import run_name_of  # noqa: E402

fmt = functools.partial(report.fmt, missing="-")  # a trial not run that far has no number: "-"
STOP_MARGIN = 0.05  # the study's rule: 0.05 nats below the bigram alone, or a gain over the trigram of 0.05
FIGURE_GUIDE = {
    "search_history": "Each trial's objective (the selection loss at its best point) in the order the trials "
                      "started; crosses: pruned trials at their last reported evaluation; the line: the best so far; "
                      "dotted: the n-gram models on the selection split. Lower is better.",
    "search_slices": "The objective against each searched flag, one panel per flag (complete trials): where a "
                     "flag's panel has a clear low region, the search found its range; a flat cloud means it "
                     "barely matters here.",
}


def trial_rows(optuna_study, trials_folder: Path) -> list[dict]:
    """One row per Optuna trial, joined with its run log (when it has one)."""
    rows = []
    for t in optuna_study.get_trials(deepcopy=False):
        name = t.user_attrs.get("run_name") or run_name_of(t)  # a queued retry has not set it yet
        path = trials_folder / f"{name}.json"
        try:
            log = read_log(path)
        except (OSError, ValueError):
            log = None
        final = (log or {}).get("final") or {}
        rows.append({"number": t.number, "name": name, "state": t.state.name.lower(), "params": dict(t.params),
                     "value": t.value, "last_evaluation": max(t.intermediate_values, default=0),
                     "intermediate": dict(t.intermediate_values), "log": log, "final": final,
                     "failed": t.user_attrs.get("failed"),
                     "hours": (t.datetime_complete - t.datetime_start).total_seconds() / 3600
                     if t.datetime_complete and t.datetime_start else None})
    return rows


def flag_value(value) -> str:
    """A searched flag's value as the trials table shows it: small floats (an lr) in two figures."""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) >= 0.01 else f"{value:.2g}"
    return str(value)


def flags_text(params: dict) -> str:
    return ", ".join(f"{k} {flag_value(v)}" for k, v in sorted(params.items()) if k != "arm")


def ngrams_of(rows: list[dict]) -> dict:
    return next((logged_ngrams(r["log"]) for r in rows if r["log"]), {})


def markdown_ngrams(rows: list[dict]) -> str:
    log = next((r["log"] for r in rows if r["log"]), None)
    return markdown_ngram_scores(log) if log else "No trial has written its log yet: no n-gram models to show."


def best_per_arm(rows: list[dict], arms: list[str]) -> dict[str, dict]:
    complete = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    best = {}
    for arm in arms:
        mine = [r for r in complete if r["params"].get("arm", arms[0]) == arm]
        if mine:
            best[arm] = min(mine, key=lambda r: r["value"])
    return best


def best_overall(best: dict[str, dict]) -> dict:
    """The best configuration of all arms: the lowest objective."""
    return min(best.values(), key=lambda r: r["value"])


def allowed_study(best: dict[str, dict], ngrams: dict) -> str:
    """The search's rule, read on the selection split: which primary metric a study may use."""
    if not best or not ngrams:
        return "Not decided yet: no complete trial."
    bigram = ngrams["bigram_kn"]["val"]["loss"]
    top = best_overall(best)
    gain = top["final"].get("val", {}).get("interp_gain")
    said = (f"The best configuration ({top['name']}) reaches {top['value']:.4f} on the selection split; the "
            f"Kneser-Ney bigram {bigram:.4f}, so the rule's bar is {bigram - STOP_MARGIN:.4f}.")
    if top["value"] <= bigram - STOP_MARGIN:
        return said + " **It clears it: the study's primary metric is the plain loss** (the gain over the trigram secondary)."
    if gain is not None and gain >= STOP_MARGIN:
        return said + (f" It does not clear it, but its gain over the trigram is {gain:.4f} >= {STOP_MARGIN}: **the "
                       f"study's primary metric is the gain over the trigram** (what the model knows that word counts "
                       f"do not), the plain loss secondary.")
    return said + (f" It does not clear it, and its gain over the trigram is {fmt(gain)} < {STOP_MARGIN}: **the search "
                   f"allows no study**; the finding is what it covered and where it fell short.")


def markdown_best(best: dict[str, dict]) -> str:
    if not best:
        return "No trial is complete yet."
    lines = ["| arm | trial | flags | selection loss (best point) | its step | report loss there | gain over the "
             "trigram, selection / report |", "|---|---|---|---:|---:|---:|---|"]
    for arm, r in best.items():
        val, test = r["final"].get("val", {}), r["final"].get("test", {})
        lines.append(f"| {arm} | {r['name']} | {flags_text(r['params'])} | {fmt(r['value'])} | {r['final'].get('step')} "
                     f"| {fmt(test.get('loss'))} | {fmt(val.get('interp_gain'))} / {fmt(test.get('interp_gain'))} |")
    return "\n".join(lines)


# A trial's own flags, which a study sets per run (and --threads, which is the machine's, not the model's).
PER_RUN_FLAGS = {"activation", "match_params", "lr", "seeds", "run_name", "output_dir", "threads", "resume",
                 "study_file"}


def command_flags(command: list[str]) -> dict:
    """train_simple.py's flags in a logged command, in order: a switch -> True, one value -> it as typed,
    several (a --weight_decay sweep) -> their list; study.flag_args turns such a dict back into arguments."""
    values: dict[str, list] = {}
    for token in command[1:]:
        if token.startswith("--"):
            name = token[2:]
            values[name] = []
        else:
            values[name].append(toml_value(token))
    return {name: logged_value(given) for name, given in values.items()}


def logged_value(given: list):
    if not given:
        return True  # a switch
    return given[0] if len(given) == 1 else given


def toml_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def toml_literal(value) -> str:
    """A flag's value as TOML writes it (a JSON string is a TOML basic string)."""
    return "true" if value is True else json.dumps(value)


def study_declaration(best: dict[str, dict]) -> str:
    """The best configuration's flags as a study file's lrs and [train] table, read off its trial's
    logged command: what a study of this configuration declares, with no flag copied by hand."""
    if not best:
        return "No trial is complete yet."
    top = best_overall(best)
    flags = command_flags(top["log"]["run"]["command"])
    table = "\n".join(f"{name} = {toml_literal(value)}" for name, value in flags.items() if name not in PER_RUN_FLAGS)
    return (f"From {top['name']} ({top['params'].get('arm', next(iter(best)))}), as a study file declares it; its "
            f"arms, seeds, [tuning] and comparisons are the study's own. `keep = \"best\"` makes each run's final "
            f"numbers those of its best point, evaluated on the whole splits: read them at the `final` point.\n\n"
            f"```toml\nlrs = [{toml_literal(flags['lr'])}]\n\n[train]\n{table}\n```")


def how_it_ended(row: dict) -> str:
    log = row["log"]
    if row["state"] == "pruned":
        return f"pruned after {row['last_evaluation']} evaluations"
    if row["state"] == "complete" and log and log.get("stopped_early"):
        return f"stopped early at step {log['stopped_early']['step']}"
    if row["state"] == "fail":
        return f"failed ({row['failed']})" if row.get("failed") else "failed"
    if row["state"] == "waiting":
        return "queued to run again"
    return row["state"]


def markdown_trials(rows: list[dict]) -> str:
    lines = ["| trial | arm | flags | objective | best step | report loss there | how it ended | hours |",
             "|---|---|---|---:|---:|---:|---|---:|"]
    for r in rows:
        value = r["value"] if r["state"] == "complete" else (r["intermediate"].get(r["last_evaluation"]) if r["intermediate"] else None)
        lines.append(f"| {r['name']} | {r['params'].get('arm', '-')} | {flags_text(r['params'])} | {fmt(value)} | "
                     f"{r['final'].get('step', '-')} | {fmt(r['final'].get('test', {}).get('loss'))} | {how_it_ended(r)} | "
                     f"{fmt(r['hours'], 2)} |")
    return "\n".join(lines) + "\n\nObjective: the selection loss at the best point (complete trials); for a pruned " \
                              "trial its last reported evaluation (a screening result, not a final number)."


def markdown_importance(optuna_study) -> str:
    import optuna

    complete = [t for t in optuna_study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 3:
        return "Flag importance: needs at least 3 complete trials."
    try:
        importance = optuna.importance.get_param_importances(
            optuna_study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError) as err:
        return f"Flag importance: not computed ({err})."
    ranked = sorted(importance.items(), key=lambda item: (-round(item[1], 2), item[0]))  # ties by name: stable
    cells = ", ".join(f"{name} {value:.2f}" for name, value in ranked)
    return (f"Flag importance (Optuna's PED-ANOVA, Watanabe et al. 2023, over the {len(complete)} complete trials: how "
            f"much each flag's distribution differs between the best trials and all of them, normalised to sum to 1; "
            f"exploratory, with this few trials): {cells}.")


def plot_history(rows: list[dict], ngrams: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    pruned = [r for r in rows if r["state"] == "pruned" and r["intermediate"]]
    ax.scatter([r["number"] for r in done], [r["value"] for r in done], label="complete", color="C0")
    ax.scatter([r["number"] for r in pruned], [r["intermediate"][r["last_evaluation"]] for r in pruned], marker="x",
               label="pruned (last evaluation)", color="C3")
    best, best_so_far = math.inf, []
    for r in sorted(done, key=lambda r: r["number"]):
        best = min(best, r["value"])
        best_so_far.append((r["number"], best))
    if best_so_far:
        ax.step(*zip(*best_so_far), where="post", color="C0", label="best so far")
    for i, name in enumerate(("bigram_kn", "trigram_kn")):
        loss = ngrams.get(name, {}).get("val", {}).get("loss")
        if loss is not None:
            ax.axhline(loss, linestyle=":", color=f"C{4 + i}", label=f"{name} (selection split)")
    ax.set_xlabel("trial")
    ax.set_ylabel("selection loss at the best point (nats)")
    ax.set_title("Optimisation history")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_slices(rows: list[dict], path: Path) -> None:
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    names = sorted({k for r in rows for k in r["params"]})
    if not names:
        return
    columns = min(4, len(names))
    fig, axes = plt.subplots(math.ceil(len(names) / columns), columns, figsize=(3.2 * columns, 2.6 * math.ceil(len(names) / columns)),
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        points = [(r["params"][name], r["value"]) for r in done if name in r["params"]]
        if points and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in points):
            ax.scatter(*zip(*points), s=12)
            if all(x > 0 for x, _ in points) and max(x for x, _ in points) / min(x for x, _ in points) > 20:
                ax.set_xscale("log")
        elif points:
            labels = sorted({str(x) for x, _ in points})
            ax.scatter([labels.index(str(x)) for x, _ in points], [y for _, y in points], s=12)
            ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.remove()  # no empty panels
    fig.supylabel("selection loss at the best point")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_search_report(title: str, optuna_study, arms: list[str], trials_folder: Path, out_dir: Path,
                        figures: bool = True) -> Path:
    """report.md and (unless not ``figures``) the two figures in ``out_dir``; the report's path."""
    from run_log import atomic_write

    rows = trial_rows(optuna_study, trials_folder)
    ngrams = ngrams_of(rows)
    best = best_per_arm(rows, arms)
    if figures:
        plot_history(rows, ngrams, out_dir / "search_history.png")
        plot_slices(rows, out_dir / "search_slices.png")
    counts = {state: sum(r["state"] == state for r in rows)
              for state in ("complete", "pruned", "fail", "running", "waiting")}
    text = "\n\n".join([
        f"# Search: {title}",
        f"{len(rows)} trials: {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed, "
        f"{counts['running']} running or stopped with their worker, {counts['waiting']} queued to run again (retries "
        f"of stopped or stale trials, under their names). Every trial trains on the tuning seed; the "
        f"objective is the selection split's loss at the run's best point; each configuration is chosen on the "
        f"selection split and reported on the report split.",
        "## First: the n-gram models", markdown_ngrams(rows),
        "## Which study the search allows", allowed_study(best, ngrams),
        "## The best configuration per arm", markdown_best(best),
        "## The best configuration, as a study declares it", study_declaration(best),
        "## Every trial", markdown_trials(rows),
        "## What mattered (exploratory)", markdown_importance(optuna_study),
        *(["## Figures", *(f"![{name}]({name}.png)\n\n{guide}" for name, guide in FIGURE_GUIDE.items())]
          if figures else []),
    ]) + "\n"
    path = out_dir / "report.md"
    atomic_write(path, text.encode())
    return path
