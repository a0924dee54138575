"""A study declared before it runs: one TOML file, its runs, and what its analysis may claim.

    python study.py results/my_study/study.toml --jobs 2        # train every run, then analyse
    python study.py results/my_study/study.toml --list          # the train_simple.py commands only
    python study.py results/pilot/study.toml --plan --plan_margin 0.01   # seeds the next study needs
    python analyze_results.py --study results/my_study/study.toml
    python study.py results/my_search/search.toml --jobs 2      # a file with [search]: run the search

A file with a [search] table (search/space.py documents it) is a search, not a study: its arms are
searched over with its [train] flags fixed, on its tuning seed, and its report says which study the
search allows; seeds, baseline and comparisons are then optional.

SIGTERM or Ctrl-C stops a study cleanly: its runs in flight checkpoint, no other starts, and running
it again continues them.

The study file lives in its results folder (logs, summary and report go beside it), so a committed
folder carries its declaration, and the commit that added the file before its runs is the
pre-registration. Keys (unknown keys are an error):

    name         "..."                         what the study is called
    baseline     "relu"                        the arm every default comparison is against
    seeds        [1, 2, 3]
    lrs          [1e-3]                        every arm at every lr, unless an arm sets its own lr
    comparisons  [["gelu", "relu"], ...]       the declared comparisons (arm names as below); only these
                                               get verdicts, everything else is exploratory
    metric       "test_loss"                   the primary metric (a METRICS name of analyze_results)
    secondary    ["test_interp_loss"]          secondary metrics: verdicts of their own, each Holm-adjusted
                                               over the comparisons, labelled secondary
    point        "final" | "best_selection"    where each run is read
    margin       0.02                          equivalence margin, metric units
    alpha        0.05                          Holm-adjusted over both tests of every comparison
    uncertainty  "seeds+articles" | "seeds"    what the verdicts' uncertainty covers (analysis/verdicts.py);
                                               a file without the key was written before it existed and
                                               is read as "seeds", as such studies were analysed: new
                                               files say "seeds+articles"
    [[arms]]     activation = "swiglu", matched = true (gated: parameter-matched), lr = 2e-3 (optional)
    [train]      any train_simple.py flag, name = value (true for a switch, a list for several values)
    [tuning]     seed = 3000, lr_multipliers = [0.5, 1, 2]: each arm's lr tuned on the selection split
                 before the final seeds (search/tuning.py); lrs (or each arm's lr) is then the one lr the
                 candidates are multiples of. Or seed, trials, sampler_seed and a [tuning.space]: the same
                 random configurations for every arm (an equal budget), each arm's best taken
    [ladder]     rungs = [{d_model = 128, train_fraction = 0.5}, ...]: the whole study (tuning, arms,
                 seeds, comparisons) at every rung, each a set of [train] flags, in <folder>/<rung name>/

An arm is named as the analysis names it: the activation, with " (matched)" for a matched gated MLP.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from analysis.runs import METRICS, POINTS
from analysis.verdicts import SEEDS, UNCERTAINTIES
from preregistration import declaration, dirty_refusal, git_state, uncommitted_warning
from search.space import Search, StudyError, load_search
from search.tuning import Candidate, Tuning, chosen_candidates, load_tuning, markdown_tuning
from run_log import EXIT_BAD_INPUT, EXIT_HELD
from training.signals import StopRuns
from transformer_from_scratch.catalog import SIZES, is_gated

ROOT = Path(__file__).resolve().parent
KEYS = {"name", "baseline", "seeds", "lrs", "comparisons", "metric", "secondary", "point", "margin", "alpha", "arms",
        "train", "search", "tuning", "uncertainty", "ladder"}
ARM_KEYS = {"activation", "matched", "lr"}
RUN_FLAGS = {"seeds", "seed", "activation", "lr", "run_name", "output_dir", "resume", "overwrite", "match_params",
             "study_file"}


@dataclass(frozen=True)
class Arm:
    activation: str
    matched: bool = False
    lr: float | None = None

    @property
    def name(self) -> str:
        return f"{self.activation} (matched)" if self.matched and is_gated(self.activation) else self.activation


@dataclass(frozen=True)
class Rung:
    """One point of a ladder: its [train] flags over the study's, and the folder its runs go to (a study
    without a ladder is one rung, named "", in the study's own folder)."""

    name: str
    flags: dict
    folder: Path


def rung_name(flags: dict) -> str:
    """d_model128_train_fraction0.5: the rung's flags, as its folder's name."""
    return "_".join(f"{key}{value:g}" if isinstance(value, float) else f"{key}{value}" for key, value in flags.items())


@dataclass(frozen=True)
class Study:
    path: Path
    name: str
    arms: list[Arm]
    baseline: str
    seeds: list[int]
    lrs: list[float]
    comparisons: list[tuple[str, str]]
    metric: str = "test_loss"
    secondary: tuple[str, ...] = ()
    point: str = "final"
    margin: float = 0.02
    alpha: float = 0.05
    train: dict = field(default_factory=dict)
    search: Search | None = None
    tuning: Tuning | None = None
    uncertainty: str = SEEDS  # a file without the key predates it: its studies were analysed over seeds
    ladder: tuple[dict, ...] = ()  # [ladder] rungs: each a table of [train] flags

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def rungs(self) -> list[Rung]:
        if not self.ladder:
            return [Rung("", {}, self.folder)]
        return [Rung(rung_name(flags), flags, self.folder / rung_name(flags)) for flags in self.ladder]

    @property
    def per_arm_lr(self) -> bool:
        return self.tuning is not None or any(arm.lr is not None for arm in self.arms)

    @property
    def per_arm_settings(self) -> set[str]:
        """The settings each arm may have its own of (its lr, its tuned flags): they do not split its runs
        into groups in the analysis."""
        tuned = {f"train.{name}" for name in self.tuning.space} if self.tuning else set()
        return ({"train.lr"} if self.per_arm_lr else set()) | tuned

    def base_lrs(self, arm: Arm) -> list[float]:
        return [arm.lr] if arm.lr is not None else self.lrs

    def width(self) -> int:
        """The runs' d_model: [train]'s, else its size's (what a search scales mlp_ratio by)."""
        return self.train.get("d_model") or SIZES[self.train.get("size", "reference")]["d_model"]


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_flag_value(value) -> bool:
    """What a [train] value may be: a switch, a finite number, a string, or a non-empty list of those."""
    if isinstance(value, list):
        return bool(value) and all(is_flag_value(v) and not isinstance(v, list) for v in value)
    return isinstance(value, (bool, str)) or (is_number(value) and math.isfinite(value))


def check_values(raw: dict, path: Path) -> None:
    """The study-level values a TOML file can get wrong in type or range (what only a run checks, the
    seeds' range, an lr, an activation, a [train] flag, check_runs asks train_simple.py's own rules)."""
    def need(ok: bool, what: str, value) -> None:
        if not ok:
            raise StudyError(f"{path}: {what}, got {value!r}")

    need(isinstance(raw["name"], str) and bool(raw["name"].strip()), "name must be a non-empty string", raw["name"])
    for key in ("baseline", "metric", "point", "uncertainty"):
        if key in raw:
            need(isinstance(raw[key], str), f"{key} must be a string", raw[key])
    seeds = raw.get("seeds", [])
    need(isinstance(seeds, list) and all(type(s) is int for s in seeds), "seeds must be a list of whole numbers", seeds)
    need(len(set(seeds)) == len(seeds), "each seed must be listed once (a repeated seed would count twice in the "
                                        "verdicts)", seeds)
    need("search" in raw or bool(seeds), "seeds must not be empty", seeds)
    lrs = raw.get("lrs", [])
    need(isinstance(lrs, list) and all(is_number(lr) for lr in lrs), "lrs must be a list of numbers", lrs)
    need(len(set(lrs)) == len(lrs), "each lr must be listed once", lrs)
    if "margin" in raw:
        need(is_number(raw["margin"]) and math.isfinite(raw["margin"]) and raw["margin"] > 0,
             "margin must be a positive finite number", raw["margin"])
    if "alpha" in raw:
        need(is_number(raw["alpha"]) and 0 < raw["alpha"] < 1, "alpha must be a number between 0 and 1", raw["alpha"])
    secondary = raw.get("secondary", [])
    need(isinstance(secondary, list) and all(isinstance(m, str) for m in secondary), "secondary must be a list of "
                                                                                      "metric names", secondary)
    comparisons = raw.get("comparisons", [])
    need(isinstance(comparisons, list) and all(isinstance(c, list) and all(isinstance(a, str) for a in c)
                                               for c in comparisons), "comparisons must be a list of [arm, arm]",
         comparisons)
    need(isinstance(raw["arms"], list) and bool(raw["arms"]), "arms must be a non-empty list of [[arms]] tables",
         raw["arms"])
    for arm in raw["arms"]:
        if isinstance(arm, dict):
            need(isinstance(arm.get("activation"), str), "an arm's activation must be a string", arm.get("activation"))
            need(isinstance(arm.get("matched", False), bool), "an arm's matched must be true or false",
                 arm.get("matched"))
            need("lr" not in arm or is_number(arm["lr"]), "an arm's lr must be a number", arm.get("lr"))
    train = raw.get("train", {})
    need(isinstance(train, dict), "[train] must be a table", train)
    for key, value in train.items():
        need(is_flag_value(value), f"[train] {key} must be true/false, a finite number, a string or a list of them",
             value)


def load_ladder(raw, path: Path, is_search: bool) -> tuple[dict, ...]:
    """[ladder] rungs = [{flag = value, ...}, ...]: two or more distinct tables of [train] flags."""
    if raw is None:
        return ()
    if is_search:
        raise StudyError(f"{path}: [ladder] belongs to a study; a search searches one configuration space")
    rungs = raw.get("rungs") if isinstance(raw, dict) and set(raw) == {"rungs"} else None
    if (not isinstance(rungs, list) or len(rungs) < 2 or not all(isinstance(r, dict) and r for r in rungs)
            or not all(is_flag_value(v) for r in rungs for v in r.values())):
        raise StudyError(f"{path}: [ladder] needs rungs = [two or more tables of train_simple.py flags], got {raw!r}")
    if len({rung_name(r) for r in rungs}) != len(rungs):
        raise StudyError(f"{path}: [ladder] declares a rung twice ({[rung_name(r) for r in rungs]})")
    return tuple(dict(r) for r in rungs)


def load_study(path: Path, known_flags: set[str] | None = None) -> Study:
    """The study in ``path``; StudyError (one line) for anything missing, unknown or inconsistent.
    ``known_flags``: train_simple.py's flags, which a [search] table may search (unchecked when None)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise StudyError(f"cannot read study file {path}: {err}") from None
    unknown = set(raw) - KEYS
    if unknown:
        raise StudyError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(KEYS))}")
    is_search = "search" in raw
    missing = {"name", "arms", *(() if is_search else ("baseline", "seeds"))} - set(raw)
    if missing:
        raise StudyError(f"{path}: missing {', '.join(sorted(missing))}")
    check_values(raw, path)
    arms = []
    for arm in raw["arms"]:
        if not isinstance(arm, dict) or "activation" not in arm or set(arm) - ARM_KEYS:
            raise StudyError(f"{path}: each [[arms]] needs activation and may set only {sorted(ARM_KEYS)}, got {arm}")
        arms.append(Arm(arm["activation"], bool(arm.get("matched", False)), arm.get("lr")))
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise StudyError(f"{path}: an arm is declared twice ({names})")
    search = None
    if is_search:
        if not isinstance(raw["search"], dict):
            raise StudyError(f"{path}: [search] must be a table")
        search = load_search(raw["search"], str(path), known_flags if known_flags is not None else
                             set(raw["search"].get("space", {})), list(raw.get("seeds", [])))
        raw.setdefault("baseline", names[0])
        raw.setdefault("seeds", [])
    if raw["baseline"] not in names:
        raise StudyError(f"{path}: baseline {raw['baseline']!r} is not one of the arms {names}")
    default = [[name, raw["baseline"]] for name in names if name != raw["baseline"]]
    comparisons = [tuple(pair) for pair in raw.get("comparisons", default)]
    if len(set(comparisons)) != len(comparisons):
        raise StudyError(f"{path}: a comparison is declared twice ({[list(c) for c in comparisons]})")
    for pair in comparisons:
        if len(pair) != 2 or not set(pair) <= set(names) or pair[0] == pair[1]:
            raise StudyError(f"{path}: comparison {list(pair)} must name two different arms of {names}")
    lrs = raw.get("lrs", [])
    tuned_lr = isinstance(raw.get("tuning"), dict) and "lr" in (raw["tuning"].get("space") or {})
    if any(arm.lr is None for arm in arms) and not lrs and not (search and "lr" in search.space) and not tuned_lr:
        raise StudyError(f"{path}: give lrs, or an lr for every arm")
    if is_search and "tuning" in raw:
        raise StudyError(f"{path}: [tuning] belongs to a study; a search tunes lr in [search.space]")
    tuning = load_tuning(raw["tuning"], str(path), list(raw["seeds"])) if "tuning" in raw else None
    if tuning and not tuning.trials and any(arm.lr is None for arm in arms) and len(lrs) != 1:
        raise StudyError(f"{path}: [tuning] multiplies one lr: give lrs = [one value], or an lr for every arm")
    metrics = [raw.get("metric", "test_loss"), *raw.get("secondary", [])]
    if any(m not in METRICS for m in metrics) or len(set(metrics)) != len(metrics):
        raise StudyError(f"{path}: metric and secondary must be distinct names among {', '.join(METRICS)}, "
                         f"got {metrics}")
    if raw.get("point", "final") not in POINTS:
        raise StudyError(f"{path}: point must be one of {', '.join(POINTS)}, got {raw['point']!r}")
    if raw.get("uncertainty", SEEDS) not in UNCERTAINTIES:
        raise StudyError(f"{path}: uncertainty must be one of {', '.join(UNCERTAINTIES)}, got {raw['uncertainty']!r}")
    ladder = load_ladder(raw.get("ladder"), path, is_search)
    clash = RUN_FLAGS & set(raw.get("train", {})).union(*ladder)
    if clash:
        raise StudyError(f"{path}: [train] may not set {', '.join(sorted(clash))}: the study sets them per run")
    return Study(path, raw["name"], arms, raw["baseline"], list(raw["seeds"]), list(lrs), comparisons,
                 metrics[0], tuple(metrics[1:]), raw.get("point", "final"), float(raw.get("margin", 0.02)),
                 float(raw.get("alpha", 0.05)), dict(raw.get("train", {})), search, tuning, raw.get("uncertainty", SEEDS),
                 ladder)


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


def arm_stem(arm: Arm) -> str:
    """activation[_matched]: how an arm's run names begin."""
    return f"{arm.activation}{'_matched' if arm.matched and is_gated(arm.activation) else ''}"


def run_name(arm: Arm, lr: float | None, seed: int) -> str:
    """activation[_matched][_lr<lr>]_seed<seed>; the lr only where an arm runs at several."""
    return f"{arm_stem(arm)}{'' if lr is None else f'_lr{lr:g}'}_seed{seed}"


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


def tuning_runs(study: Study) -> list[tuple[Arm, float, dict, str]]:
    """(arm, candidate lr, its other tuned flags, run name) of every run of the study's [tuning] (at each
    rung alike), arm by arm: the lr multiples (each rounded to the 6 significant digits its run name
    shows: 0.0041 x 3 is 0.0123, not 0.012300000000000002), or the random search's configurations, the
    same for every arm."""
    tuning = study.tuning
    if tuning.trials:
        runs = []
        for arm in study.arms:
            for k, config in enumerate(tuning.configurations()):
                flags = dict(config)
                lr = flags.pop("lr", study.base_lrs(arm)[0] if study.base_lrs(arm) else None)
                runs.append((arm, lr, flags, f"{arm_stem(arm)}_trial{k}_seed{tuning.seed}"))
        return runs
    return [(arm, lr, {}, run_name(arm, lr, tuning.seed)) for arm in study.arms
            for lr in (float(f"{study.base_lrs(arm)[0] * m:.6g}") for m in tuning.lr_multipliers)]


def tuning_candidates(study: Study, rung: Rung) -> list[Candidate]:
    """The tuning's candidates at a rung, their logs in ``<rung folder>/tuning/``."""
    return [Candidate(arm.name, lr, rung.folder / "tuning" / f"{name}.json", flags)
            for arm, lr, flags, name in tuning_runs(study)]


def tuning_commands(study: Study, threads: int, allow_dirty: bool = False) -> list[list[str]]:
    """One train_simple.py command per candidate at every rung, keeping its best weights (the objective is
    read there)."""
    return [train_command(study, arm, lr, study.tuning.seed, name, rung.folder / "tuning", threads,
                          {**study.train, **rung.flags, **flags}, keep_best=True, allow_dirty=allow_dirty)
            for rung in study.rungs for arm, lr, flags, name in tuning_runs(study)]


def train_simple_flags() -> set[str]:
    """Every train_simple.py flag (its destinations): what a [search] table may search."""
    from training.settings import build_parser  # imports torch: only where a study is run

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
    from search.space import Choice

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
    from training.settings import UsageError, build_parser, check_models, run_specs, validate

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
    from search.runner import open_study, run_search, storage_url

    url = args.storage or storage_url(study.folder)
    stopped_by = None
    if not args.report_only:
        stopped_by = run_search(study.name, study.search, url,
                                lambda trial: trial_run(study, trial, threads, args.allow_dirty), args.jobs)
    report = write_search_report(study.name, open_study(study.name, study.search, url), [a.name for a in study.arms],
                                 study.folder / "trials", study.folder)
    print(f"search report: {report}\nfigures: {study.folder / 'search_history.png'}, "
          f"{study.folder / 'search_slices.png'}")
    return 0 if stopped_by is None else 128 + stopped_by


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run a declared study (every run of its file, then its analysis), or "
                                            "the search a file with a [search] table declares.")
    p.add_argument("study", type=Path, help="the study file (TOML), in the folder its results go to")
    p.add_argument("--jobs", type=int, default=1, help="training processes side by side (threads split between them)")
    p.add_argument("--list", action="store_true", help="print the training commands, one per line, and nothing else")
    p.add_argument("--storage", default=None,
                   help="a search's Optuna storage URL (default: sqlite:///<study folder>/search.db); workers on "
                        "other machines join the same search by giving the same URL")
    p.add_argument("--report_only", action="store_true", help="a search: write its report from what has run, train nothing")
    p.add_argument("--plan", action="store_true",
                   help="from this finished (pilot) study's runs, print the seeds per arm a next study needs to detect "
                        "--plan_effect and to show equivalence within ±--plan_margin at 80%% power (analysis/plan.py), "
                        "and train nothing")
    p.add_argument("--plan_effect", type=float, default=None, help="the difference to detect (default: the margin)")
    p.add_argument("--plan_margin", type=float, default=None, help="the equivalence margin (default: the study's)")
    p.add_argument("--timing_steps", type=int, default=30,
                   help="with --plan on a ladder or a study not yet run: the steps of each rung's timing run")
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
            failed = run_all(commands, args.jobs, stop)
            if stop.signum is not None:
                return stop.exit_code
    except RunRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    analysed = subprocess.run([sys.executable, str(ROOT / "analyze_results.py"), "--study", str(args.study)]).returncode
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
        failed = run_all(commands, args.jobs, stop)
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


def run_all(commands: list[list[str]], jobs: int, stop: StopRuns) -> list[list[str]]:
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
