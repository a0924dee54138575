"""What a study file is: its arms, seeds, comparisons, tuning and ladder, loaded and checked from
TOML with no runner, torch or Optuna in reach (the analysis reads studies through this module too).

The study file lives in its results folder (logs, summary and report go beside it), so a committed
folder carries its declaration, and the commit that added the file before its runs is the
pre-registration. Keys (unknown keys are an error):

    name         "..."                         what the study is called
    baseline     "relu"                        the arm every default comparison is against
    seeds        [1, 2, 3]
    lrs          [1e-3]                        every arm at every lr, unless an arm sets its own lr
    comparisons  [["gelu", "relu"], ...]       the declared comparisons (arm names as below); only these
                                               get verdicts, everything else is exploratory
    metric       "test_loss"                   the primary metric (metrics.summarised_names())
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
                 before the final seeds (study_file/tuning.py); lrs (or each arm's lr) is then the one lr the
                 candidates are multiples of. Or seed, trials, sampler_seed and a [tuning.space]: the same
                 random configurations for every arm (an equal budget), each arm's best taken
    [ladder]     rungs = [{d_model = 128, train_fraction = 0.5}, ...]: the whole study (tuning, arms,
                 seeds, comparisons) at every rung, each a set of [train] flags, in <folder>/<rung name>/

An arm is named as the analysis names it: the activation, with " (matched)" for a matched gated MLP.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from analysis.runs import POINTS
from metrics import summarised_names
from analysis.verdicts import SEEDS, UNCERTAINTIES
from study_file.space import Search, StudyError, is_number, load_search
from study_file.tuning import Candidate, Tuning, load_tuning
from transformer_from_scratch import catalog
from transformer_from_scratch.catalog import SIZES, is_matched, variant_name

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
        return variant_name(self.activation, self.matched)


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
    if any(m not in summarised_names() for m in metrics) or len(set(metrics)) != len(metrics):
        raise StudyError(f"{path}: metric and secondary must be distinct names among {', '.join(summarised_names())}, "
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


def arm_stem(arm: Arm) -> str:
    """activation[_matched]: how an arm's run names begin (its tuning trials': <stem>_trial<k>_seed<seed>)."""
    return f"{arm.activation}{'_matched' if is_matched(arm.activation, arm.matched) else ''}"


def run_name(arm: Arm, lr: float | None, seed: int) -> str:
    """An arm's run: catalog.run_name, the lr only where the arm runs at several."""
    return catalog.run_name(arm.activation, arm.matched, seed, lr)


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
