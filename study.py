"""A study declared before it runs: one TOML file, its runs, and what its analysis may claim.

    python study.py results/my_study/study.toml --jobs 2        # train every run, then analyse
    python study.py results/my_study/study.toml --list          # the train_simple.py commands only
    python analyze_results.py --study results/my_study/study.toml
    python study.py results/my_search/search.toml --jobs 2      # a file with [search]: run the search

A file with a [search] table (search/space.py documents it) is a search, not a study: its arms are
searched over with its [train] flags fixed, on its tuning seed, and its report says which study the
search allows; seeds, baseline and comparisons are then optional.

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
    point        "final" | "best_selection"    where each run is read
    margin       0.02                          equivalence margin, metric units
    alpha        0.05                          Holm-adjusted over the comparisons
    [[arms]]     activation = "swiglu", matched = true (gated: parameter-matched), lr = 2e-3 (optional)
    [train]      any train_simple.py flag, name = value (true for a switch, a list for several values)

An arm is named as the analysis names it: the activation, with " (matched)" for a matched gated MLP.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from preregistration import declaration, uncommitted_warning
from search.space import Search, StudyError, load_search

ROOT = Path(__file__).resolve().parent
KEYS = {"name", "baseline", "seeds", "lrs", "comparisons", "metric", "point", "margin", "alpha", "arms", "train",
        "search"}
ARM_KEYS = {"activation", "matched", "lr"}
GATED = {"glu", "bilinear", "reglu", "geglu", "swiglu"}  # the registry's gated entries (a test keeps this true)
RUN_FLAGS = {"seeds", "seed", "activation", "lr", "run_name", "output_dir", "resume", "overwrite", "match_params",
             "study_file"}


@dataclass(frozen=True)
class Arm:
    activation: str
    matched: bool = False
    lr: float | None = None

    @property
    def name(self) -> str:
        return f"{self.activation} (matched)" if self.matched and self.activation in GATED else self.activation


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
    point: str = "final"
    margin: float = 0.02
    alpha: float = 0.05
    train: dict = field(default_factory=dict)
    search: Search | None = None

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def per_arm_lr(self) -> bool:
        return any(arm.lr is not None for arm in self.arms)


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
    for pair in comparisons:
        if len(pair) != 2 or not set(pair) <= set(names) or pair[0] == pair[1]:
            raise StudyError(f"{path}: comparison {list(pair)} must name two different arms of {names}")
    lrs = raw.get("lrs", [])
    if any(arm.lr is None for arm in arms) and not lrs and not (search and "lr" in search.space):
        raise StudyError(f"{path}: give lrs, or an lr for every arm")
    clash = RUN_FLAGS & set(raw.get("train", {}))
    if clash:
        raise StudyError(f"{path}: [train] may not set {', '.join(sorted(clash))}: the study sets them per run")
    return Study(path, raw["name"], arms, raw["baseline"], list(raw["seeds"]), list(lrs), comparisons,
                 raw.get("metric", "test_loss"), raw.get("point", "final"), float(raw.get("margin", 0.02)),
                 float(raw.get("alpha", 0.05)), dict(raw.get("train", {})), search)


def flag_args(settings: dict) -> list[str]:
    """train_simple.py arguments for [train]: true -> --flag, a list -> --flag a b, else --flag value."""
    out = []
    for key, value in settings.items():
        if value is True:
            out.append(f"--{key}")
        elif value is not False:
            out += [f"--{key}", *map(str, value if isinstance(value, list) else [value])]
    return out


def run_commands(study: Study, threads: int) -> list[list[str]]:
    """One train_simple.py command per (arm, lr, seed), seed by seed so a study stopped early stays balanced."""
    commands = []
    for seed in study.seeds:
        for arm in study.arms:
            lrs = [arm.lr] if arm.lr is not None else study.lrs
            for lr in lrs:
                lr_part = f"_lr{lr:g}" if len(lrs) > 1 else ""
                name = f"{arm.activation}{'_matched' if arm.matched and arm.activation in GATED else ''}{lr_part}_seed{seed}"
                commands.append([sys.executable, str(ROOT / "train_simple.py"), "--activation", arm.activation,
                                 *(["--match_params"] if arm.matched else []), "--lr", str(lr), "--seeds", str(seed),
                                 "--run_name", name, "--output_dir", str(study.folder), "--threads", str(threads),
                                 "--resume", "--study_file", str(study.path), *flag_args(study.train)])
    return commands


def train_simple_flags() -> set[str]:
    """Every train_simple.py flag (its destinations): what a [search] table may search."""
    from training.settings import build_parser  # imports torch: only where a study is run

    return {action.dest for action in build_parser()._actions}


def trial_run(study: Study, trial, threads: int):
    """One trial of a search: its flags drawn by Optuna (the arm too, when there are several), trained
    on the tuning seed with its best weights kept, in ``<study folder>/trials/``."""
    from search.runner import TrialRun, trial_name
    from training.settings import SIZES

    arms = {arm.name: arm for arm in study.arms}
    arm = arms[trial.suggest_categorical("arm", list(arms))] if len(arms) > 1 else study.arms[0]
    width = study.train.get("d_model") or SIZES[study.train.get("size", "reference")]["d_model"]
    params = study.search.suggest(trial, width)  # a searched d_model, else this one, scales mlp_ratio
    lr = params.pop("lr", arm.lr if arm.lr is not None else (study.lrs or [None])[0])
    name, folder = trial_name(trial), study.folder / "trials"
    command = [sys.executable, str(ROOT / "train_simple.py"), "--activation", arm.activation,
               *(["--match_params"] if arm.matched else []), "--lr", str(lr), "--seeds", str(study.search.tuning_seed),
               "--run_name", name, "--output_dir", str(folder), "--threads", str(threads), "--resume", "--keep", "best",
               "--study_file", str(study.path), *flag_args({**study.train, **params})]
    return TrialRun(name, folder, command)


def search_main(study: Study, args: argparse.Namespace, threads: int) -> int:
    """Run the search (unless --report_only), then write its report beside the study file; 0, or 128 +
    the signal that stopped the search (its trials in flight then queued again)."""
    from search.report import write_search_report
    from search.runner import open_study, run_search, storage_url

    url = args.storage or storage_url(study.folder)
    stopped_by = None
    if not args.report_only:
        stopped_by = run_search(study.name, study.search, url, lambda trial: trial_run(study, trial, threads), args.jobs)
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
    args = p.parse_args(argv)
    if args.jobs < 1:
        print("error: --jobs must be positive", file=sys.stderr)
        return 2
    try:
        study = load_study(args.study, train_simple_flags())
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    warning = None if args.list or args.report_only else uncommitted_warning(declaration(args.study))
    if warning:
        print(warning, file=sys.stderr)
    if study.search is not None:
        return search_main(study, args, threads)
    commands = run_commands(study, threads)
    if args.list:
        print("\n".join(shlex.join(c) for c in commands))
        return 0
    failed = run_all(commands, args.jobs)
    analysed = subprocess.run([sys.executable, str(ROOT / "analyze_results.py"), "--study", str(args.study)]).returncode
    for command in failed:
        print(f"error: failed: {shlex.join(command)} (rerun the study to resume it)", file=sys.stderr)
    return 1 if failed or analysed else 0


def run_all(commands: list[list[str]], jobs: int) -> list[list[str]]:
    """Run the commands, ``jobs`` at a time; the ones that failed."""
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = list(pool.map(lambda command: subprocess.run(command).returncode, commands))
    return [command for command, code in zip(commands, codes) if code]


if __name__ == "__main__":
    sys.exit(main())
