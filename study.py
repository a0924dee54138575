"""A study declared before it runs: one TOML file, its runs, and what its analysis may claim.

    python study.py results/my_study/study.toml --jobs 2        # train every run, then analyse
    python study.py results/my_study/study.toml --list          # the train_simple.py commands only
    python study.py results/pilot/study.toml --plan --plan_margin 0.01   # seeds the next study needs
    python analyze_results.py --study results/my_study/study.toml
    python study.py results/my_search/search.toml --jobs 2      # a file with [search]: run the search

A file with a [search] table (study_file/space.py documents it) is a search, not a study: its arms are
searched over with its [train] flags fixed, on its tuning seed, and its report says which study the
search allows; seeds, baseline and comparisons are then optional.

SIGTERM or Ctrl-C stops a study cleanly: its runs in flight checkpoint, no other starts, and running
it again continues them.

What a study file is, its keys and their checks: study_file/study.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from analysis.tuning import markdown_tuning
from preregistration import declaration, dirty_refusal, git_state, uncommitted_warning
from run_log import EXIT_BAD_INPUT, EXIT_HELD
from study_file import Arm, Candidate, Rung, Study, StudyError, chosen_candidates, load_study, run_name, \
    tuning_candidates, tuning_runs
from training.launch import StopRuns

ROOT = Path(__file__).resolve().parent


def flag_args(settings: dict) -> list[str]:
    """train_simple.py arguments for [train]: true -> --flag, a list -> --flag a b, else --flag value."""
    out = []
    for key, value in settings.items():
        if value is True:
            out.append(f"--{key}")
        elif value is not False:
            out += [f"--{key}", *map(str, value if isinstance(value, list) else [value])]
    return out


def train_command(study: Study, arm: Arm, lr, seed: int, name: str, folder: Path, threads: int,
                  flags: dict | None = None, keep_best: bool = False, allow_dirty: bool = False) -> list[str]:
    """The train_simple.py command of one run of the study: ``flags`` (default: its [train]) after its own."""
    return [sys.executable, str(ROOT / "train_simple.py"), "--activation", arm.activation,
            *(["--match_params"] if arm.matched else []), "--lr", str(lr), "--seeds", str(seed), "--run_name", name,
            "--output_dir", str(folder), "--threads", str(threads), "--resume",
            *(["--keep", "best"] if keep_best else []), *(["--allow_dirty"] if allow_dirty else []),
            "--study_file", str(study.path), *flag_args(study.train if flags is None else flags)]


def run_commands(study: Study, threads: int, tuned: dict[str, dict[str, Candidate]] | None = None,
                 allow_dirty: bool = False) -> list[list[str]]:
    """One train_simple.py command per (rung, arm, lr, seed), rung by rung and seed by seed so a study
    stopped early stays balanced; ``tuned``: per rung, each arm's candidate as its tuning chose it (a
    study with [tuning]), whose lr and flags its final runs take."""
    commands = []
    for rung in study.rungs:
        for seed in study.seeds:
            for arm in study.arms:
                chosen = tuned[rung.name][arm.name] if tuned else None
                lrs = [chosen.lr] if chosen else study.base_lrs(arm)
                flags = {**study.train, **rung.flags, **(chosen.flags if chosen else {})}
                for lr in lrs:
                    name = run_name(arm, lr if len(lrs) > 1 else None, seed)
                    commands.append(train_command(study, arm, lr, seed, name, rung.folder, threads, flags,
                                                  allow_dirty=allow_dirty))
    return commands


def tuning_commands(study: Study, threads: int, allow_dirty: bool = False) -> list[list[str]]:
    """One train_simple.py command per candidate at every rung, keeping its best weights (the objective is
    read there)."""
    return [train_command(study, arm, lr, study.tuning.seed, name, rung.folder / "tuning", threads,
                          {**study.train, **rung.flags, **flags}, keep_best=True, allow_dirty=allow_dirty)
            for rung in study.rungs for arm, lr, flags, name in tuning_runs(study)]


def train_simple_flags() -> set[str]:
    """Every train_simple.py flag (its destinations): what a [search] table may search."""
    from training.settings import (
        build_parser,  # imports torch: only where a study is run
    )

    return {action.dest for action in build_parser()._actions}


def trial_run(study: Study, trial, threads: int, allow_dirty: bool = False):
    """One trial of a search: its flags drawn by Optuna (the arm too, when there are several), trained
    on the tuning seed with its best weights kept, in ``<study folder>/trials/``."""
    from search.runner import TrialRun, trial_name

    arms = {arm.name: arm for arm in study.arms}
    arm = arms[trial.suggest_categorical("arm", list(arms))] if len(arms) > 1 else study.arms[0]
    width = study.width()
    params = study.search.suggest(trial, width)  # a searched d_model, else this one, scales mlp_ratio
    lr = params.pop("lr", (study.base_lrs(arm) or [None])[0])
    name, folder = trial_name(trial), study.folder / "trials"
    return TrialRun(name, folder, train_command(study, arm, lr, study.search.tuning_seed, name, folder, threads,
                                                {**study.train, **params}, keep_best=True, allow_dirty=allow_dirty))


class ProbeTrial:
    """Stands in for an Optuna trial when a search is checked: each parameter at the value given,
    else at its low end (its first choice)."""

    def __init__(self, values: dict) -> None:
        self.values = values

    def suggest_categorical(self, name: str, choices: list):
        return self.values.get(name, choices[0])

    def suggest_int(self, name: str, low: int, high: int) -> int:
        return self.values.get(name, low)

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        return self.values.get(name, low)


def search_probe_commands(study: Study, threads: int) -> list[list[str]]:
    """Commands a search can draw: every arm with each searched flag at each of its choices and at both
    ends of its range (the others at their low ends): what its trials could be refused for."""
    from study_file.space import Choice

    width = study.width()
    probes = [{}] + [{name: value} for name, dim in study.search.space.items()
                     for value in (dim.values if isinstance(dim, Choice) else (dim.low, dim.high))]
    commands = []
    for arm in study.arms:
        for i, probe in enumerate(probes):
            params = study.search.suggest(ProbeTrial(probe), width)
            lr = params.pop("lr", (study.base_lrs(arm) or [None])[0])
            commands.append(train_command(study, arm, lr, study.search.tuning_seed, f"probe{i}", study.folder / "trials",
                                          threads, {**study.train, **params}, keep_best=True))
    return commands


def planned_commands(study: Study, threads: int) -> list[list[str]]:
    """Every train_simple.py command the study can start: its lr tuning's and its final runs' (each arm
    at the lr it starts from, while the tuning has not chosen), or those a search can draw."""
    if study.search is not None:
        return search_probe_commands(study, threads)
    return [*(tuning_commands(study, threads) if study.tuning else []), *run_commands(study, threads)]


def check_runs(study: Study, commands: list[list[str]]) -> None:
    """Each command as train_simple.py would take it, by its own rules (its parser, validate, its run
    specs and model checks): a value a run would refuse is the study's error, before any run starts."""
    from training.settings import (
        UsageError,
        build_parser,
        check_models,
        run_specs,
        validate,
    )

    parser = build_parser()

    def refuse(message: str):
        raise UsageError(parser.suggest(message))

    parser.error = refuse  # one line, raised here, instead of argparse's exit
    for command in commands:
        name = command[command.index("--run_name") + 1]
        try:
            args = parser.parse_args(command[2:])
            validate(args)
            check_models(run_specs(parser, args), export_hf=False)
        except UsageError as err:
            raise StudyError(f"{study.path}: run {name} would be refused: {err}") from None


def search_main(study: Study, args: argparse.Namespace, threads: int) -> int:
    """Run the search (unless --report_only), then write its report beside the study file; 0, or 128 +
    the signal that stopped the search (its trials in flight then queued again)."""
    from search.report import write_search_report
    from search.runner import default_storage, open_optuna_study, run_search

    url = args.storage or default_storage(study.folder)
    stopped_by = None
    if not args.report_only:
        stopped_by = run_search(study.name, study.search, url,
                                lambda trial: trial_run(study, trial, threads, args.allow_dirty), args.jobs)
    report = write_search_report(study.name, open_optuna_study(study.name, study.search, url), [a.name for a in study.arms],
                                 study.folder / "trials", study.folder, figures=not args.no_figures)
    print(f"search report: {report}\nfigures: " + ("none (--no_figures)" if args.no_figures else
                                                 f"{study.folder / 'search_history.png'}, {study.folder / 'search_slices.png'}"))
    return 0 if stopped_by is None else 128 + stopped_by


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run a declared study (every run of its file, then its analysis), or "
                                            "the search a file with a [search] table declares.")
    p.add_argument("study", type=Path, help="the study file (TOML), in the folder its results go to")
    p.add_argument("--jobs", type=int, default=1, help="training processes side by side (threads split between them)")
    p.add_argument("--list", action="store_true", help="print the training commands, one per line, and nothing else")
    p.add_argument("--storage", default=None,
                   help="a search's Optuna storage: an RDB URL (sqlite:///..., postgresql://...) or a journal file's "
                        "path (default: <study folder>/search.journal, or its search.db where a search began on "
                        "SQLite); workers on other machines join the same search by giving the same storage")
    p.add_argument("--report_only", action="store_true", help="a search: write its report from what has run, train nothing")
    p.add_argument("--plan", action="store_true",
                   help="from this finished (pilot) study's runs, print the seeds per arm a next study needs to detect "
                        "--plan_effect and to show equivalence within ±--plan_margin at 80%% power (analysis/plan.py), "
                        "and train nothing")
    p.add_argument("--plan_effect", type=float, default=None, help="the difference to detect (default: the margin)")
    p.add_argument("--plan_margin", type=float, default=None, help="the equivalence margin (default: the study's)")
    p.add_argument("--timing_steps", type=int, default=30,
                   help="with --plan on a ladder or a study not yet run: the steps of each rung's timing run")
    p.add_argument("--no_figures", action="store_true",
                   help="the study's analysis or the search's report without figures (analyze_results.py --no_figures)")
    p.add_argument("--allow_dirty", action="store_true",
                   help="run from a tree with uncommitted code changes, each run storing the change beside its log "
                        "(train_simple.py --allow_dirty); without it such a study is refused before its first run")
    args = p.parse_args(argv)
    if args.jobs < 1:
        print("error: --jobs must be positive", file=sys.stderr)
        return 2
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    try:
        study = load_study(args.study, train_simple_flags())
        check_runs(study, planned_commands(study, threads))
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.list and study.search:
        print("error: --list is for a study: a search draws its trials as it runs (--report_only lists them)",
              file=sys.stderr)
        return 2
    if args.report_only and not study.search:
        print("error: --report_only is for a search: a study's report is analyze_results.py --study FILE",
              file=sys.stderr)
        return 2
    if args.plan:
        return print_plan(study, args)
    trains = not (args.list or args.report_only)
    change = git_state()["code_change"] if trains else ""
    if change and not args.allow_dirty:
        print(f"error: {dirty_refusal(change)}", file=sys.stderr)
        return 2
    warning = uncommitted_warning(declaration(args.study)) if trains else None
    if warning:
        print(warning, file=sys.stderr)
    if study.search is not None:
        try:
            return search_main(study, args, threads)
        except StudyError as err:  # its storage: damaged, or another search's
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        with StopRuns("the study") as stop:
            tuned = None
            if study.tuning is not None:
                tuned = tune(study, args, threads, stop)
                if stop.signum is not None:
                    return stop.exit_code
                if tuned is None:
                    return 0 if args.list else 1
            commands = run_commands(study, threads, tuned, args.allow_dirty)
            if args.list:
                print("\n".join(shlex.join(c) for c in commands))
                return 0
            failed = execute(commands, args.jobs, stop)
            if stop.signum is not None:
                return stop.exit_code
    except RunRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    analysis = [sys.executable, str(ROOT / "analyze_results.py"), "--study", str(args.study)]
    analysed = subprocess.run(analysis + ["--no_figures"] * args.no_figures).returncode
    for command in failed:
        print(f"error: failed: {shlex.join(command)} (rerun the study to resume it)", file=sys.stderr)
    return 1 if failed or analysed else 0


def print_plan(study: Study, args: argparse.Namespace) -> int:
    """The next study's seeds, from this one's finished runs (the largest group of its folder)."""
    from analysis.plan import markdown_plan, plan
    from analysis.runs import folder_logs, group_runs, load_runs

    margin = study.margin if args.plan_margin is None else args.plan_margin
    effect = margin if args.plan_effect is None else args.plan_effect
    if not (margin > 0 and effect > 0):
        print("error: --plan_margin and --plan_effect must be positive", file=sys.stderr)
        return 2
    runs = load_runs(folder_logs(study.folder), strict=False, ignore=study.per_arm_settings).finished
    if runs:
        group = group_runs(runs)[0]
        rows = plan(group, study.comparisons, study.metric, study.point, study.alpha, effect, margin)
        print(markdown_plan(rows, effect, margin, study.alpha, 2 * len(study.comparisons), len({r.seed for r in group})))
    if study.ladder or not runs:
        print(("\n" if runs else "") + markdown_cost(study, args.jobs, args.timing_steps))
    return 0


def timed_run(study: Study, rung: Rung, steps: int, folder: Path, threads: int) -> dict:
    """The log of a short run of the rung's first final run (its first arm and seed, at the lr it starts
    from), ``steps`` steps with nothing but training, in ``folder``: what its cost is measured from."""
    arm, seed = study.arms[0], study.seeds[0]
    lr = (study.base_lrs(arm) or [study.tuning.configurations()[0].get("lr") if study.tuning else None])[0]
    command = train_command(study, arm, lr, seed, "timing", folder, threads, {**study.train, **rung.flags},
                            allow_dirty=True)
    command = [c for c in command if c not in ("--study_file", str(study.path))]  # a timing, not a run of the study
    subprocess.run([*command, "--max_steps", str(steps), "--no-probes", "--no-samples", "--evals_per_epoch", "0",
                    "--test_split", "none", "--checkpoint_every", str(10 * steps)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((folder / "timing.json").read_text())


def markdown_cost(study: Study, jobs: int, steps: int) -> str:
    """The study's runs per rung and their cost, measured: one short run per rung, alone on its share of
    the cores (``jobs`` side by side), its training tokens/s (median of its steps after the first two),
    times the tokens a run trains; evaluations counted at three times the training speed per token (the
    forward pass alone: docs/speed.md), over the selection and report subsets at each evaluation and the
    whole splits at the end."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    rows, total = [], 0.0
    with tempfile.TemporaryDirectory() as scratch:
        for i, rung in enumerate(study.rungs):
            log = timed_run(study, rung, steps, Path(scratch) / str(i), threads)
            speeds = sorted(entry["tokens_per_s"] for entry in log["steps"][2:]) or [log["steps"][-1]["tokens_per_s"]]
            speed = speeds[len(speeds) // 2]
            train = log["data"]["train"]["tokens"] * log["train_config"]["num_epochs"]
            evals = log["train_config"]["num_epochs"] * study.train.get("evals_per_epoch", 1)
            eval_tokens = evals * 2 * (study.train.get("eval_tokens") or log["data"]["val"]["tokens"]) + \
                log["data"]["val"]["tokens"] * 2
            hours = (train + eval_tokens / 3) / speed / 3600
            runs = (len(study.arms) * (study.tuning.trials or len(study.tuning.lr_multipliers)) if study.tuning else 0) \
                + len(study.arms) * len(study.seeds) * max(1, max((len(study.base_lrs(a)) for a in study.arms), default=1))
            total += runs * hours / jobs
            rows.append(f"| {rung.name or 'the study'} | {runs} | {speed:,.0f} | {hours * 60:.1f} | {runs * hours / jobs:.1f} |")
    return "\n".join([f"Cost, measured now on this machine ({steps}-step timing run per rung, {threads} thread(s) each, "
                      f"{jobs} side by side):", "",
                      "| rung | runs (tuning + final) | training tokens/s | minutes per run | hours with --jobs "
                      f"{jobs} |", "|---|---:|---:|---:|---:|", *rows, "",
                      f"**Total: about {total:.1f} hours** of this machine with --jobs {jobs}."])


def tune(study: Study, args: argparse.Namespace, threads: int, stop: StopRuns) -> dict[str, dict[str, Candidate]] | None:
    """Train the tuning's candidates at every rung (under --list: print their commands), then each
    arm's chosen candidate per rung; None (with a line on stderr) while there is no choice."""
    commands = tuning_commands(study, threads, args.allow_dirty)
    if args.list:
        print("\n".join(shlex.join(c) for c in commands))
    else:
        failed = execute(commands, args.jobs, stop)
        if stop.signum is not None:
            return None
        for command in failed:
            print(f"error: failed: {shlex.join(command)}", file=sys.stderr)
    tuned = {}
    for rung in study.rungs:
        candidates = tuning_candidates(study, rung)
        chosen = chosen_candidates(candidates)
        if chosen is None:
            print("the final runs wait for the tuning: a candidate has not finished, or all of an arm's diverged "
                  f"(rerun the study to resume it; logs in {rung.folder / 'tuning'})", file=sys.stderr)
            return None
        if not args.list:
            print(markdown_tuning(candidates, study.tuning))
        tuned[rung.name] = chosen
    return tuned


class RunRefused(Exception):
    """A run exited with train_simple.py's bad-input status: the study stops there."""


def run_name_of(command: list[str]) -> str:
    return command[command.index("--run_name") + 1]


def execute(commands: list[list[str]], jobs: int, stop: StopRuns) -> list[list[str]]:
    """Run the commands, ``jobs`` at a time, until they are done or ``stop`` comes (then the runs in
    flight checkpoint and the rest never start); the ones that failed. A run that refuses its input
    (exit 2, its one line above) starts no other and raises RunRefused once those in flight end; a run
    another process holds (exit 75) is that process's: said, not counted as failed."""
    refused: list[list[str]] = []

    def run(command: list[str]) -> int | None:
        if refused:
            return None
        code = stop.run(command)
        if code == EXIT_BAD_INPUT:
            refused.append(command)
        return code

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = list(pool.map(run, commands))
    if refused:
        raise RunRefused(f"run {run_name_of(refused[0])} refused its settings (its error is above): the study stops "
                         f"here; correct the study file and run it again")
    for command, code in zip(commands, codes):
        if code == EXIT_HELD:
            print(f"note: run {run_name_of(command)} is held by another process (another study.py trains it there)",
                  file=sys.stderr)
    return [command for command, code in zip(commands, codes) if code not in (0, None, EXIT_HELD)]


if __name__ == "__main__":
    sys.exit(main())
