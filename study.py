"""A study declared before it runs: one TOML file, its runs, and what its analysis may claim.

    python study.py results/my_study/study.toml --jobs 2        # train every run, then analyse
    python study.py results/my_study/study.toml --list          # the train_simple.py commands only
    python analyze_results.py --study results/my_study/study.toml

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

ROOT = Path(__file__).resolve().parent
KEYS = {"name", "baseline", "seeds", "lrs", "comparisons", "metric", "point", "margin", "alpha", "arms", "train"}
ARM_KEYS = {"activation", "matched", "lr"}
GATED = {"glu", "bilinear", "reglu", "geglu", "swiglu"}  # the registry's gated entries (a test keeps this true)
RUN_FLAGS = {"seeds", "seed", "activation", "lr", "run_name", "output_dir", "resume", "overwrite", "match_params"}


class StudyError(ValueError):
    """A study file that cannot be run: one line, exit 2."""


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

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def per_arm_lr(self) -> bool:
        return any(arm.lr is not None for arm in self.arms)


def load_study(path: Path) -> Study:
    """The study in ``path``; StudyError (one line) for anything missing, unknown or inconsistent."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise StudyError(f"cannot read study file {path}: {err}") from None
    unknown = set(raw) - KEYS
    if unknown:
        raise StudyError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(KEYS))}")
    missing = {"name", "arms", "baseline", "seeds"} - set(raw)
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
    if raw["baseline"] not in names:
        raise StudyError(f"{path}: baseline {raw['baseline']!r} is not one of the arms {names}")
    default = [[name, raw["baseline"]] for name in names if name != raw["baseline"]]
    comparisons = [tuple(pair) for pair in raw.get("comparisons", default)]
    for pair in comparisons:
        if len(pair) != 2 or not set(pair) <= set(names) or pair[0] == pair[1]:
            raise StudyError(f"{path}: comparison {list(pair)} must name two different arms of {names}")
    lrs = raw.get("lrs", [])
    if any(arm.lr is None for arm in arms) and not lrs:
        raise StudyError(f"{path}: give lrs, or an lr for every arm")
    clash = RUN_FLAGS & set(raw.get("train", {}))
    if clash:
        raise StudyError(f"{path}: [train] may not set {', '.join(sorted(clash))}: the study sets them per run")
    return Study(path, raw["name"], arms, raw["baseline"], list(raw["seeds"]), list(lrs), comparisons,
                 raw.get("metric", "test_loss"), raw.get("point", "final"), float(raw.get("margin", 0.02)),
                 float(raw.get("alpha", 0.05)), dict(raw.get("train", {})))


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
                                 "--resume", *flag_args(study.train)])
    return commands


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run a declared study: every run of its file, then its analysis.")
    p.add_argument("study", type=Path, help="the study file (TOML), in the folder its results go to")
    p.add_argument("--jobs", type=int, default=1, help="training processes side by side (threads split between them)")
    p.add_argument("--list", action="store_true", help="print the training commands, one per line, and nothing else")
    args = p.parse_args(argv)
    try:
        study = load_study(args.study)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print("error: --jobs must be positive", file=sys.stderr)
        return 2
    commands = run_commands(study, max(1, (os.cpu_count() or 1) // args.jobs))
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
