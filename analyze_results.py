"""Turn the JSON logs of train_simple.py into comparison tables and figures.

    python analyze_results.py                      # every log in results/
    python analyze_results.py --results_dir results/my_study --baseline gelu --metric val_bpb

Writes report.md (the document to read first), summary.md, summary.csv (for tools), and the figures
training_curves.png, training_dynamics.png and attention.png. Runs are pooled over
seeds only when their model, training and data settings agree (apart from activation and seed);
different settings form separate groups. With several seeds per activation the table gives
mean ± std and a 95% confidence interval, and every activation is compared with the baseline
paired by seed (paired t-test, Holm-corrected across activations). Runs with several evaluations
also get the validation metric at each (do the curves cross? does a run end past its best?), and
runs with probes a table of MLP and attention statistics at the end. Failed and unfinished runs are
listed, not dropped; two logs of the same run count once. Needs no torch: logs are read through
run_log.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import report  # noqa: E402
from cli import Parser  # noqa: E402
from study import StudyError, load_study  # noqa: E402
from baselines import baselines_for  # noqa: E402
from findings import markdown_baselines, markdown_verdicts  # noqa: E402
from run_log import WriteError, atomic_write, is_finished, last_step, read_log  # noqa: E402
from stats import holm, paired_t_test, summarize, t_half_width  # noqa: E402

METRICS = ("val_loss", "val_ppl", "val_bpb", "val_bpb_approx", "test_loss", "test_ppl", "test_bpb", "val_interp_loss",
           "test_interp_loss")
POINTS = ("final", "best_selection")
KEPT_BASELINES = "baselines.json"  # baselines of logs that predate them, kept beside them (baselines.py)
# Settings that identify a variant or a repetition rather than a different experiment.
NOT_GROUPING = {"act_fn", "match_params", "d_hidden", "training_flops_per_token", "activation", "seed", "command"}
FIGURE_GUIDE = {
    "training_curves": "Training loss per logged step (top left); validation loss (dotted: the n-gram baselines), "
                       "perplexity and exact bits per byte at each evaluation; and each activation's validation loss "
                       "minus the baseline arm's, paired by seed (bottom middle: what the comparison is about). "
                       "Lower is better; bands are 95% confidence intervals over seeds, as in the tables.",
    "training_dynamics": "Gradient norm before clipping, and per MLP layer the units that never fire on the probe set "
                         "and the mean fraction firing per token: how each activation uses its units.",
    "attention": "Entropy of attention on the probe set (nats; dotted: spreading evenly over all visible keys): the "
                 "mean over heads, then the heads ranked by entropy within each run (head indices mean nothing "
                 "across seeds). Lower means more focused; lines that part show an activation changing attention.",
    "training_compute": "Validation loss against training FLOPs (and machine seconds, drawn only when every run had "
                        "one machine to itself): an activation that wins only because it spends more compute (an "
                        "unmatched gated MLP costs 1.5x the MLP FLOPs) loses its lead here.",
    "lr_sweep": "Final validation metric against the learning rate: where each activation's curve bottoms out is its "
                "best lr, and a flat bottom means the comparison does not hinge on the lr chosen.",
}


class AnalysisError(Exception):
    """No usable logs, a bad log under --strict, or an unwritable output folder: one line, exit code 2."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(description="Compare activations from train_simple.py JSON logs.")
    p.add_argument("logs", nargs="*", type=Path, help="log files (default: every *.json in --results_dir)")
    p.add_argument("--results_dir", type=Path, default=Path("results"), help="folder of run logs")
    p.add_argument("--output_dir", type=Path, default=None, help="where outputs go (default: --results_dir)")
    p.add_argument("--baseline", default="relu", help="variant every other is compared with, paired by seed")
    p.add_argument("--metric", default=None, choices=METRICS,
                   help="metric for ranking, verdicts and paired tests (default: test_loss, on the report split, "
                        "when every run has one, else val_loss)")
    p.add_argument("--strict", action="store_true", help="a malformed or incomplete log is an error, not a warning")
    p.add_argument("--point", choices=POINTS, default="final",
                   help="where each run is read for the verdicts: its end, or its evaluation with the lowest "
                        "selection (validation) loss")
    p.add_argument("--margin", type=float, default=0.02, help="equivalence margin of the verdicts (metric units)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdicts (Holm-adjusted)")
    p.add_argument("--pool_precisions", action="store_true",
                   help="pool runs that differ only in precision (--bf16); by default they are never compared")
    p.add_argument("--study", type=Path, default=None,
                   help="a study file (TOML): its declared arms, comparisons, metric, point, margin and alpha "
                        "replace the flags above, and its output folder --results_dir")
    args = p.parse_args(argv)
    args.comparisons, args.ignore_settings = None, {"train.bf16"} if args.pool_precisions else set()
    return args


def apply_study(args: argparse.Namespace) -> None:
    """A study file's declarations replace the flags: its folder, arms' comparisons, metric, point,
    margin and alpha. Per-arm learning rates do not split its runs into groups."""
    study = load_study(args.study)
    args.results_dir, args.baseline, args.comparisons = study.folder, study.baseline, study.comparisons
    args.metric, args.point, args.margin, args.alpha = study.metric, study.point, study.margin, study.alpha
    if study.per_arm_lr:
        args.ignore_settings = args.ignore_settings | {"train.lr"}


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class Run:
    path: Path
    log: dict
    variant: str  # activation, "(matched)" for parameter-matched gated MLPs
    seed: int
    group_key: str
    settings: dict  # the grouping settings, flattened

    def metric(self, name: str) -> float:
        split, key = name.split("_", 1)
        value = (self.log["final"].get(split) or {}).get(key)  # None: not measured (or an older log)
        return float(value) if value is not None else math.nan

    def metric_at(self, name: str, point: str) -> float:
        """``name`` at the run's end, or at its evaluation with the lowest selection (val) loss: a
        point chosen on the selection split, read (for a test_* metric) on the report split. A run
        that --patience stopped early is read at its best point either way: its end is past it (its
        final numbers already are the best point's when it kept those weights, --keep best)."""
        stopped = self.log.get("stopped_early") and self.log["final"].get("kept") != "best"
        if point == "final" and not stopped:
            return self.metric(name)
        entries = [e for e in evaluations(self) if math.isfinite(e.get("val_loss", math.nan))]
        if not entries:
            return math.nan
        value = min(entries, key=lambda e: e["val_loss"]).get(name)
        return float(value) if value is not None else math.nan


def flatten(prefix: str, obj, out: dict) -> dict:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in NOT_GROUPING:
                flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = obj
    return out


def grouping_settings(log: dict) -> dict:
    data = {role: {k: info.get(k) for k in ("split", "sha256", "layout", "max_length")} if info else None
            for role, info in log["data"].items() if role in ("train", "val", "test")}
    return flatten("", {"model": log["model_config"], "train": log["train_config"], "data": data}, {})


def variant_name(log: dict) -> str:
    cfg = log["model_config"]
    matched = cfg.get("match_params") and cfg.get("d_hidden") != cfg.get("d_mlp")
    return f"{cfg['act_fn']} (matched)" if matched else cfg["act_fn"]


def load_run(path: Path, ignore: set[str] = frozenset()) -> Run:
    """The run in a log file; ValueError (one line) if it is not a readable train_simple.py log.
    ``ignore``: settings that do not split runs into groups here (a study's per-arm lr)."""
    log = read_log(path)
    try:
        settings = {k: v for k, v in grouping_settings(log).items() if k not in ignore}
        return Run(path, log, variant_name(log), int(log["train_config"]["seed"]), json.dumps(settings, sort_keys=True),
                   settings)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"malformed ({type(err).__name__}: {err})") from None


@dataclass
class Loaded:
    finished: list[Run]  # complete runs, each (settings, activation, seed) once
    unfinished: list[Run]  # failed, interrupted or still running: listed, never pooled
    skipped: list[tuple[Path, str]]  # logs that could not be used, and why: listed too


def load_runs(paths: list[Path], strict: bool, ignore: set[str] = frozenset()) -> Loaded:
    loaded, seen = Loaded([], [], []), {}
    for path in paths:
        try:
            if not path.is_file():  # a FIFO would block the read forever; a folder is no log
                raise ValueError("not a regular file")
            run = load_run(path, ignore)
        except ValueError as err:
            if strict:
                raise AnalysisError(f"{path}: {err}") from None
            warnings.warn(f"skipping {path}: {err}", stacklevel=2)
            loaded.skipped.append((path, str(err)))
            continue
        if not is_finished(run.log):
            if strict:
                raise AnalysisError(f"{path}: status {run.log['status']!r}")
            loaded.unfinished.append(run)
            continue
        key = (run.group_key, run.variant, run.seed)
        if key in seen:  # a copied or renamed log is the same run, not another seed
            reason = f"repeats the run in {seen[key].name} (same settings, activation and seed): counted once"
            warnings.warn(f"{path} {reason}", stacklevel=2)
            loaded.skipped.append((path, reason))
            continue
        seen[key] = path
        loaded.finished.append(run)
    return loaded


def log_paths(args: argparse.Namespace) -> list[Path]:
    if args.logs:
        return args.logs
    if not args.results_dir.is_dir():
        raise AnalysisError(f"results folder {args.results_dir} does not exist")
    return sorted(p for p in args.results_dir.glob("*.json") if p.name != KEPT_BASELINES)


# ---------------------------------------------------------------------------------------------
# Tables


def varying_settings(settings: list[dict]) -> list[str]:
    """The setting names whose values differ between these groups' settings."""
    return sorted(k for k in set().union(*settings) if len({repr(s.get(k)) for s in settings}) > 1)


def group_runs(runs: list[Run]) -> list[list[Run]]:
    """Runs with the same settings, pooled; largest group first, then in order of the settings that
    vary (numbers by value), so a sweep reads lr 1e-4, 3e-4, 1e-3, ... and not in file-name order."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.group_key].append(run)
    varying = varying_settings([group[0].settings for group in groups.values()])

    def order(group: list[Run]) -> tuple:
        values = [group[0].settings.get(k) for k in varying]
        return -len(group), [(0, v, "") if isinstance(v, (int, float)) else (1, 0, repr(v)) for v in values]

    return sorted(groups.values(), key=order)


def differences(groups: list[list[Run]]) -> list[str]:
    """For each group, its values of the settings that vary between groups: what tells it apart.

    Every group is named the same way, so no group (say, lr 1e-3 in a sweep) passes for the reference.
    """
    settings = [group[0].settings for group in groups]
    varying = varying_settings(settings)
    return [", ".join(f"{k}={s.get(k)!r}" for k in varying) or "all runs" for s in settings]


def fmt(value: float, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def fmt_ci(mean: float, ci95: float, digits: int = 4) -> str:
    """"mean ± CI", or the mean alone where there is no interval (one seed)."""
    return fmt(mean, digits) if math.isnan(ci95) else f"{fmt(mean, digits)} ± {fmt(ci95, digits)}"


def group_table(group: list[Run], metric: str) -> pd.DataFrame:
    """One row per variant: seeds, metric mean/std/CI, parameters, time, throughput."""
    rows = []
    for variant, runs in by_variant(group).items():
        row = {"variant": variant, "seeds": len(runs), "seed_list": " ".join(str(r.seed) for r in sorted(runs, key=lambda r: r.seed))}
        for name in METRICS:
            values = [r.metric_at(name, "final") for r in runs]
            if all(math.isnan(v) for v in values):
                continue
            s = summarize(values)
            row[f"{name}_mean"], row[f"{name}_std"], row[f"{name}_ci95"] = s.mean, s.std, s.ci95
        params = runs[0].log["params"]
        row["params_total"], row["params_mlp"] = params["total"], params["mlp"]
        walls = [sum(e["wall_s"] for e in r.log["epochs"]) for r in runs]
        tokens = [sum(e["train_tokens"] for e in r.log["epochs"]) for r in runs]
        row["train_wall_s_mean"] = float(np.mean(walls))
        row["train_tokens_per_s_mean"] = float(np.mean([t / w for t, w in zip(tokens, walls)]))
        row["steps"] = runs[0].log["final"]["step"]
        rows.append(row)
    table = pd.DataFrame(rows)
    if f"{metric}_mean" not in table:  # no run of this group has the metric at all
        table[f"{metric}_mean"] = math.nan
    table = table.sort_values(f"{metric}_mean", kind="stable", na_position="last").reset_index(drop=True)
    best = table[f"{metric}_mean"].min()  # NaN (a missing or non-finite metric) is never the best
    table[f"{metric}_vs_best_pct"] = (table[f"{metric}_mean"] - best) / abs(best) * 100
    return table


def paired_comparisons(group: list[Run], baseline: str, metric: str, point: str = "final") -> pd.DataFrame:
    """Each variant minus the baseline, paired by seed, each run read at ``point`` (as the verdicts
    read it); Holm-corrected across variants."""
    by_variant: dict[str, dict[int, float]] = defaultdict(dict)
    for run in group:
        by_variant[run.variant][run.seed] = run.metric_at(metric, point)
    if baseline not in by_variant:
        return pd.DataFrame()
    rows = []
    for variant in sorted(v for v in by_variant if v != baseline):
        seeds = sorted(set(by_variant[variant]) & set(by_variant[baseline]))
        if not seeds:
            continue
        test = paired_t_test([by_variant[variant][s] for s in seeds], [by_variant[baseline][s] for s in seeds])
        rows.append({"variant": variant, "baseline": baseline, "pairs": test.n, "mean_diff": test.mean_diff,
                     "ci95": test.ci95, "t": test.t, "p": test.p})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_holm"] = holm(list(table["p"]))
    return table


def markdown_table(table: pd.DataFrame, metric: str) -> str:
    has_test = "test_loss_mean" in table
    header = ["variant", "seeds", "val loss", "val ppl", "val bits/byte", "study bits/byte (approx)"]
    header += ["test loss", "test bits/byte"] if has_test else []
    header += ["params (total / MLP)", "train s", "tokens/s", f"{metric} vs best"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(row, name: str, digits: int = 4) -> str:
        return fmt_ci(row.get(f"{name}_mean", math.nan), row.get(f"{name}_ci95", math.nan), digits)

    for _, row in table.iterrows():
        cells = [row["variant"], str(row["seeds"]), cell(row, "val_loss"), cell(row, "val_ppl", 1),
                 cell(row, "val_bpb"), cell(row, "val_bpb_approx")]
        cells += [cell(row, "test_loss"), cell(row, "test_bpb")] if has_test else []
        gap = row[f"{metric}_vs_best_pct"]
        cells += [f"{row['params_total']:,} / {row['params_mlp']:,}", f"{row['train_wall_s_mean']:.0f}",
                  f"{row['train_tokens_per_s_mean']:.0f}", "n/a" if math.isnan(gap) else f"+{gap:.2f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_paired(table: pd.DataFrame, metric: str, max_seeds: int, point: str = "final") -> str:
    if table.empty:
        return "No paired comparison: the baseline is not among these runs."
    where = "" if point == "final" else f" at the {point} point"
    lines = [f"Paired by seed against **{table['baseline'].iloc[0]}** ({metric}{where}, variant minus baseline; "
             f"negative = better than baseline):", "",
             "| variant | pairs | mean difference ± 95% CI | t | p | p (Holm) |", "|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['variant']} | {r['pairs']} | {fmt(r['mean_diff'])} ± {fmt(r['ci95'])} | {fmt(r['t'], 2)} "
                     f"| {fmt(r['p'], 4)} | {fmt(r['p_holm'], 4)} |")
    if max_seeds < 2:
        lines += ["", "Only one seed per activation: no confidence interval or significance can be claimed."]
    return "\n".join(lines)


def curve_metric(metric: str) -> str:
    """The validation metric that every evaluation records, for curves: the ranking metric if it is one."""
    return metric if metric in ("val_loss", "val_ppl", "val_bpb") else "val_loss"


def markdown_curves(group: list[Run], metric: str) -> str:
    """The validation metric at every evaluation (mean over seeds, rank in brackets), the pairs of
    activations whose order changes at any evaluation (do the curves cross?), and how far each run
    ended above its own lowest point (overfitting)."""
    key = curve_metric(metric)
    curves = {v: [validation_curve(r, key) for r in runs] for v, runs in by_variant(group).items()}
    means = pd.DataFrame({v: pd.concat(c, axis=1).mean(axis=1) for v, c in curves.items()}).T  # rows: variants
    ranks = means.rank(axis=0, method="min")
    rises = {v: summarize([float(c.iloc[-1] - c.min()) for c in cs]) for v, cs in curves.items()}
    header = ["variant"] + [f"epoch {x:.3g}" for x in means.columns] + ["lowest mean at epoch", "final − own lowest"]
    lines = [f"Validation {key} at every evaluation (mean over seeds; rank in brackets, 1 = best). The last column is "
             f"each run's final value minus its lowest, averaged over seeds: above zero, the run ended past its best "
             f"point (overfitting).", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in means.index:
        cells = [f"{fmt(means.loc[variant, x])} ({int(ranks.loc[variant, x])})" for x in means.columns]
        rise = fmt_ci(rises[variant].mean, rises[variant].ci95)
        lines.append("| " + " | ".join([variant, *cells, f"{means.loc[variant].idxmin():.3g}", rise]) + " |")
    crossing = [f"{a} / {b}" for i, a in enumerate(means.index) for b in means.index[i + 1:]
                if np.sign(means.loc[a] - means.loc[b]).nunique() > 1]
    lines += ["", f"{len(crossing)} of {len(means) * (len(means) - 1) // 2} pairs of activations change order at "
                  f"least once between evaluations (their mean curves cross)"
                  + (f": {', '.join(crossing)}." if crossing else ".")]
    return "\n".join(lines)


def markdown_inside(group: list[Run]) -> str:
    """Per activation and layer, at the last probe (mean over seeds): MLP units active per token and never
    active, mean attention entropy as a fraction of uniform, and the strongest previous-token head."""
    variants = by_variant(group)
    n_layers = group[0].log["model_config"]["n_layers"]

    def at_end(run: Run, layer: int) -> dict[str, float]:
        last = run.log["dynamics"][-1]
        mlp, heads = last["mlp"][layer], last["attention"][layer]["heads"]
        return {"active": mlp["active_fraction"], "dead": mlp["dead_fraction"],
                "entropy": float(np.mean([h["entropy"] / h["max_entropy"] for h in heads])),
                "prev": max(h["prev_token"] for h in heads)}

    names = {"active": "MLP active per token", "dead": "MLP never active", "entropy": "attention entropy / uniform",
             "prev": "top previous-token head"}
    header = ["variant"] + [f"L{layer} {name}" for layer in range(n_layers) for name in names.values()]
    lines = ["Inside the model at the end of training, on the probe set (mean over seeds; L0 = first layer). "
             "\"Active\" as in the dynamics figure; entropy is the heads' mean, 1 = attention spread evenly; "
             "the previous-token column is the largest share any head puts on the previous token.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, runs in variants.items():
        cells = [fmt(float(np.mean([at_end(r, layer)[name] for r in runs])), 3)
                 for layer in range(n_layers) for name in names]
        lines.append("| " + " | ".join([variant, *cells]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Figures


# The activation registry's order (transformer_from_scratch.ACTIVATIONS; a test keeps the two equal),
# so that an activation has the same colour in every figure of every study.
ACTIVATION_ORDER = ("relu", "gelu", "gelu_tanh", "silu", "relu2", "leaky_relu2", "glu", "bilinear", "reglu",
                    "geglu", "swiglu")
PALETTE = [*plt.get_cmap("tab10").colors, (0.0, 0.0, 0.0)]


def variant_colors(variants: list[str]) -> dict[str, tuple]:
    """One colour per activation, fixed by its place in the registry ("(matched)" keeps its colour)."""
    def index(variant: str) -> int:
        name = variant.split(" ")[0]
        return ACTIVATION_ORDER.index(name) if name in ACTIVATION_ORDER else len(ACTIVATION_ORDER)
    return {v: PALETTE[index(v) % len(PALETTE)] for v in variants}


def mean_band(series: list[pd.Series]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, half-width of the 95% t confidence interval over the series; 0 for one series): the
    same quantity as the tables' ±."""
    frame = pd.concat(series, axis=1)
    n = frame.notna().sum(axis=1).to_numpy()
    std = frame.std(axis=1, ddof=1).fillna(0).to_numpy()
    half = np.array([t_half_width(s, k) if k > 1 else 0.0 for s, k in zip(std, n)])
    return frame.index.to_numpy(), frame.mean(axis=1).to_numpy(), half


def plot_band(ax, runs: list[Run], extract, color, label: str, marker: str | None = None, linestyle: str = "-") -> None:
    series = [extract(r) for r in runs]
    series = [s for s in series if len(s)]
    if not series:
        return
    x, mean, std = mean_band(series)
    ax.plot(x, mean, color=color, label=label, marker=marker, markersize=4, linestyle=linestyle)
    if len(series) > 1:
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def step_loss(run: Run, window: int = 5) -> pd.Series:
    steps = pd.Series({s["step"]: s["loss"] for s in run.log["steps"]}, dtype=float)
    return steps.rolling(window, min_periods=1).mean()


def epoch_metric(run: Run, key: str) -> pd.Series:
    return pd.Series({e["epoch"]: e[key] for e in run.log["epochs"]}, dtype=float)


def evaluations(run: Run) -> list[dict]:
    """Every validation pass of a run, within epochs (--eval_every) and at epoch ends, by step."""
    return sorted([*run.log.get("evals", []), *run.log["epochs"]], key=eval_step)


def eval_step(entry: dict) -> int:
    return entry["steps"] if "steps" in entry else entry["step"]


def validation_curve(run: Run, key: str) -> pd.Series:
    """A validation metric over training, in epochs (fractions within an epoch), evaluations included."""
    train = run.log["data"]["train"]
    per_epoch = math.ceil(train["sequences"] / run.log["train_config"]["batch_size"])
    return pd.Series({eval_step(e) / per_epoch: e[key] for e in evaluations(run)}, dtype=float)


def has_evals(group: list[Run]) -> bool:
    return any(r.log.get("evals") for r in group)


def compute_curve(run: Run, x_key: str) -> tuple[pd.Series, pd.Series]:
    """(x, validation loss), both indexed by step, x being cumulative training FLOPs or seconds."""
    entries = evaluations(run)
    return (pd.Series({eval_step(e): e[x_key] for e in entries}, dtype=float),
            pd.Series({eval_step(e): e["val_loss"] for e in entries}, dtype=float))


def has_compute(group: list[Run]) -> bool:
    return all("train_flops" in e for r in group for e in evaluations(r))


def one_machine_alone(group: list[Run]) -> bool:
    """Whether every run ran on the same machine, alone on it (all its cores): only then do seconds compare."""
    facts = {(r.log["run"].get("cpu"), r.log["run"].get("device"), r.log["run"].get("threads"),
              r.log["run"].get("cpu_count")) for r in group}
    return len(facts) == 1 and next(iter(facts))[2] == next(iter(facts))[3]


def plot_compute(group: list[Run], path: Path) -> None:
    """Validation loss against cumulative training FLOPs, and against machine seconds when those compare."""
    variants = by_variant(group)
    colors = variant_colors(list(variants))
    panels = [("train_flops", "training FLOPs (matmul, forward + backward)")]
    if one_machine_alone(group):
        panels.append(("train_seconds", "machine seconds of training (one machine, alone; evaluations excluded)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False, constrained_layout=True)
    axes = axes[0]
    for ax, (x_key, label) in zip(axes, panels):
        for variant, runs in variants.items():
            curves = [compute_curve(r, x_key) for r in runs]
            x = pd.concat([c[0] for c in curves], axis=1).mean(axis=1)
            y = pd.concat([c[1] for c in curves], axis=1).mean(axis=1)
            ax.plot(x.to_numpy(), y.to_numpy(), color=colors[variant], marker="o", markersize=3, label=variant)
        ax.set(xlabel=label, ylabel="validation loss (nats/token)")
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log")
    axes[0].legend(fontsize=9)
    fig.suptitle("Validation loss at equal training compute (mean over seeds at each evaluation)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def by_variant(group: list[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = defaultdict(list)
    for run in group:
        out[run.variant].append(run)
    return dict(sorted(out.items()))


def epoch_axis_label(group: list[Run]) -> str:
    partial = [e for r in group for e in r.log["epochs"] if e.get("partial")]
    if partial:
        return f"epoch (last one partial: stopped at step {max(e['steps'] for e in partial)})"
    return "epoch"


def plot_per_epoch(ax, variants: dict[str, list[Run]], colors: dict, series_of, group: list[Run],
                   style: str = "-", marker: str = "o", offset: float = 0.0, label_suffix: str = "") -> None:
    """A per-epoch quantity: lines over epochs (band: ± 1 std over seeds), or, when every run has a
    single epoch, one point per activation with a ± 1 std error bar."""
    single = all(len(r.log["epochs"]) == 1 for r in group)
    for i, (variant, runs) in enumerate(variants.items()):
        label = variant + label_suffix
        if single:
            _, mean, std = mean_band([series_of(r) for r in runs])
            ax.errorbar([i + offset], mean, yerr=std if len(runs) > 1 else None, color=colors[variant],
                        marker=marker, linestyle="none", capsize=4, markersize=6, label=label)
        else:
            plot_band(ax, runs, series_of, colors[variant], label, marker=marker, linestyle=style)
    if single:
        ax.set_xticks(range(len(variants)), list(variants), rotation=15)
        ax.set_xlim(-0.6, len(variants) - 0.4)
        steps = max(e["steps"] for r in group for e in r.log["epochs"])
        ax.set_xlabel(f"after {steps} steps (error bar: ± 1 std over seeds)")
    else:
        ax.set_xlabel(epoch_axis_label(group))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def fixed_settings(group: list[Run]) -> str:
    """The settings every run of a figure shares, for its title."""
    log = group[0].log
    cfg, train = log["model_config"], log["train_config"]
    return (f"lr {train['lr']:g}, preset {cfg['preset']}, d_model {cfg['d_model']}, d_mlp {cfg['d_mlp']}, "
            f"{cfg['n_layers']} layers, {log['data']['train']['layout']}, batch {train['batch_size']}")


def paired_difference(runs: list[Run], baseline_runs: list[Run], key: str) -> list[pd.Series]:
    """Per seed both arms have: the arm's validation curve minus the baseline arm's."""
    base = {r.seed: validation_curve(r, key) for r in baseline_runs}
    return [validation_curve(r, key) - base[r.seed] for r in runs if r.seed in base]


def plot_curves(group: list[Run], path: Path, baselines: dict | None = None, baseline_arm: str = "relu") -> None:
    variants = by_variant(group)
    colors = variant_colors(list(variants))
    fig, axes = plt.subplots(2, 3, figsize=(17, 8.5), constrained_layout=True)
    panels = [("val_loss", "validation loss (nats/token; dotted: n-gram baselines)"),
              ("val_ppl", "validation perplexity"), ("val_bpb", "validation bits per byte (exact)")]
    for variant, runs in variants.items():
        plot_band(axes[0, 0], runs, step_loss, colors[variant], variant)
    axes[0, 0].set(title="training loss (nats/token)", xlabel="optimizer step (moving average of 5 logged steps)")
    axes[0, 0].legend(fontsize=9)
    for ax, (key, title) in zip([axes[0, 1], axes[0, 2], axes[1, 0]], panels):
        if has_evals(group):  # evaluations within epochs: real curves
            for variant, runs in variants.items():
                plot_band(ax, runs, lambda r, k=key: validation_curve(r, k), colors[variant], variant, marker="o")
            ax.set_xlabel("epoch (evaluations within epochs included)")
        else:
            plot_per_epoch(ax, variants, colors, lambda r, k=key: epoch_metric(r, k), group)
        ax.set_title(title)
    for name, scores in sorted((baselines or {}).items()):
        if "val" in scores:  # the n-gram baselines on the same targets: the line a model must get under
            axes[0, 1].axhline(scores["val"]["loss"], color="gray", linestyle=":", linewidth=1)
            axes[0, 1].annotate(name, (1, scores["val"]["loss"]), xycoords=("axes fraction", "data"), ha="right",
                                va="bottom", fontsize=8, color="gray")
    ax = axes[1, 1]
    if has_evals(group) and baseline_arm in variants:
        for variant, runs in variants.items():
            if variant != baseline_arm:
                diffs = paired_difference(runs, variants[baseline_arm], "val_loss")
                if diffs:
                    x, mean, half = mean_band(diffs)
                    ax.plot(x, mean, color=colors[variant], marker="o", markersize=3, label=variant)
                    ax.fill_between(x, mean - half, mean + half, color=colors[variant], alpha=0.2, linewidth=0)
        ax.axhline(0, color=colors[baseline_arm], linewidth=1)
        ax.set(title=f"validation loss minus {baseline_arm}, paired by seed", xlabel="epoch")
    else:
        ax.set_axis_off()
    axes[1, 2].set_axis_off()
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    n_seeds = max(len(r) for r in variants.values())
    band = "band: 95% CI over seeds" if n_seeds > 1 else "one seed: no band"
    fig.suptitle(f"Training curves per activation (mean over up to {n_seeds} seeds; {band})\n{fixed_settings(group)}")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def attention_entropy(run: Run, layer: int, rank: int | None) -> pd.Series:
    """Per epoch: the attention entropy of the layer's head ranked ``rank`` by entropy within this run
    (0: the most focused), or the mean over its heads (rank None). Ranks, not head indices: head 2 of
    one seed has nothing to do with head 2 of another, so only a within-run statistic can be averaged."""
    values = {}
    for d in run.log["dynamics"]:
        entropies = sorted(h["entropy"] for h in d["attention"][layer]["heads"])
        values[d["epoch"]] = entropies[rank] if rank is not None else float(np.mean(entropies))
    return pd.Series(values, dtype=float)


def has_attention(group: list[Run]) -> bool:
    return all(d.get("attention") for r in group for d in r.log["dynamics"])


def plot_attention(group: list[Run], path: Path) -> None:
    """Small multiples: a row per layer; the mean over heads, then each head; a line per activation."""
    variants = by_variant(group)
    colors = variant_colors(list(variants))
    layers = group[0].log["dynamics"][0]["attention"]
    n_layers, n_heads = len(layers), len(layers[0]["heads"])
    fig, axes = plt.subplots(n_layers, n_heads + 1, figsize=(3.3 * (n_heads + 1), 3.0 * n_layers), squeeze=False,
                             sharey=True, constrained_layout=True)
    for layer in range(n_layers):
        for col, head in enumerate([None, *range(n_heads)]):
            ax = axes[layer, col]
            plot_per_epoch(ax, variants, colors, lambda r, l=layer, h=head: attention_entropy(r, l, h), group)
            ax.axhline(layers[layer]["heads"][0]["max_entropy"], color="gray", linestyle=":", linewidth=1)
            ax.set_title(f"layer {layer}, {'mean over heads' if head is None else f'head ranked {head} by entropy'}",
                         fontsize=10)
            ax.grid(alpha=0.3)
        axes[layer, 0].set_ylabel("attention entropy (nats)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Attention entropy on the probe set per activation (mean over seeds; dotted: uniform attention)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_dynamics(group: list[Run], path: Path) -> None:
    variants = by_variant(group)
    colors = variant_colors(list(variants))
    n_layers = group[0].log["model_config"]["n_layers"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5), constrained_layout=True)
    for variant, runs in variants.items():
        plot_band(axes[0], runs, lambda r: pd.Series({s["step"]: s["grad_norm"] for s in r.log["steps"]}, dtype=float)
                  .rolling(5, min_periods=1).mean(), colors[variant], variant)
    markers, styles = "osD^v", ["-", "--", ":", "-."]
    for layer in range(n_layers):
        offset = 0.3 * (layer - (n_layers - 1) / 2) / max(n_layers - 1, 1)
        for ax, key in ((axes[1], "dead_fraction"), (axes[2], "active_fraction")):
            plot_per_epoch(ax, variants, colors,
                           lambda r, k=key, l=layer: pd.Series({d["epoch"]: d["mlp"][l][k] for d in r.log["dynamics"]},
                                                                 dtype=float),
                           group, style=styles[layer % 4], marker=markers[layer % 5], offset=offset,
                           label_suffix=f", layer {layer}")
    axes[0].set(title="gradient norm before clipping", xlabel="optimizer step (moving average of 5)", ylabel="L2 norm")
    axes[1].set(title="MLP units never active on the probe set", ylabel="fraction of units")
    axes[2].set(title="MLP units active per token (mean)", ylabel="fraction of units")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=9)
    handles, labels = axes[1].get_legend_handles_labels()
    layer_keys = [i for i, label in enumerate(labels) if label.startswith(labels[0].split(",")[0] + ",")]
    axes[1].legend([handles[i] for i in layer_keys], [labels[i].split(", ")[1] for i in layer_keys],
                   fontsize=9, title="marker")
    fig.suptitle("Training dynamics per activation (\"active\": gate pre-activation > 0; see docs/model.md)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Entry point


def sweep_families(groups: list[list[Run]]) -> list[list[list[Run]]]:
    """Groups whose settings differ only in the learning rate, as one sweep each (two rates or more),
    the groups in the order of their learning rate."""
    families: dict[str, list[list[Run]]] = defaultdict(list)
    for group in groups:
        families[json.dumps({k: v for k, v in group[0].settings.items() if k != "train.lr"}, sort_keys=True)].append(group)
    return [sorted(f, key=lambda g: g[0].log["train_config"]["lr"]) for f in families.values() if len(f) > 1]


def sweep_table(family: list[list[Run]], metric: str) -> pd.DataFrame:
    """One row per (variant, lr): the metric's mean and 95% CI over seeds (and the test loss, if any)."""
    rows = []
    for group in family:
        lr = group[0].log["train_config"]["lr"]
        for variant, runs in by_variant(group).items():
            s = summarize([r.metric(metric) for r in runs])
            rows.append({"variant": variant, "lr": lr, "seeds": s.n, "mean": s.mean, "ci95": s.ci95,
                         "test_loss": float(np.mean([r.metric("test_loss") for r in runs]))})
    return pd.DataFrame(rows)


def best_lrs(table: pd.DataFrame) -> pd.DataFrame:
    """Each variant's row at its best (lowest mean) learning rate; NaN never wins."""
    ranked = table.sort_values(["variant", "mean", "lr"], na_position="last", kind="stable")
    return ranked.groupby("variant", sort=True).head(1).set_index("variant")


def paired_at_best(family: list[list[Run]], best: pd.DataFrame, baseline: str, metric: str) -> pd.DataFrame:
    """Each variant at its own best lr minus the baseline at its own, paired by seed; Holm-corrected."""
    values = {(r.variant, r.log["train_config"]["lr"], r.seed): r.metric(metric) for g in family for r in g}
    if baseline not in best.index:
        return pd.DataFrame()
    rows = []
    for variant in [v for v in best.index if v != baseline]:
        mine, base = best.loc[variant, "lr"], best.loc[baseline, "lr"]
        seeds = sorted({s for (v, lr, s) in values if (v, lr) == (variant, mine)}
                       & {s for (v, lr, s) in values if (v, lr) == (baseline, base)})
        if seeds:
            test = paired_t_test([values[variant, mine, s] for s in seeds], [values[baseline, base, s] for s in seeds])
            rows.append({"variant": f"{variant} (lr {mine:g})", "baseline": f"{baseline} (lr {base:g})", "pairs": test.n,
                         "mean_diff": test.mean_diff, "ci95": test.ci95, "t": test.t, "p": test.p})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_holm"] = holm(list(table["p"]))
    return table


def markdown_sweep(family: list[list[Run]], metric: str, baseline: str) -> str:
    table = sweep_table(family, metric)
    best = best_lrs(table)
    lrs = sorted(table["lr"].unique())
    has_test = not table["test_loss"].isna().all()
    header = ["variant", "best lr", f"{metric} at best lr", "seeds"] + (["test loss at that lr"] if has_test else [])
    header += [f"{metric} at lr {lr:g}" for lr in lrs]
    lines = [f"## Learning-rate sweep: lr {', '.join(f'{lr:g}' for lr in lrs)}", "",
             "Each activation at the learning rate where its mean validation metric is lowest. **Choosing the best "
             "lr on the validation split favours every activation by the luck of that choice**, so these numbers are "
             "optimistic" + (", and the test loss at the chosen lr is the honest one." if has_test else
                             "; with no distinct test split there is no unbiased number here.") + " The paired tests "
             "at each shared lr are in the groups above (one group per lr).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, row in best.iterrows():
        at = {r["lr"]: r for _, r in table[table["variant"] == variant].iterrows()}
        cells = [variant, f"{row['lr']:g}", fmt_ci(row["mean"], row["ci95"]), str(int(row["seeds"]))]
        cells += [fmt(row["test_loss"])] if has_test else []
        cells += [fmt(at[lr]["mean"]) if lr in at else "n/a" for lr in lrs]
        lines.append("| " + " | ".join(cells) + " |")
    at_edge = sorted(v for v, row in best.iterrows() if row["lr"] in (lrs[0], lrs[-1]))
    if at_edge:
        lines += ["", f"At the edge of the range tried: {', '.join(at_edge)}. Their best lr may lie beyond it, so "
                      f"their best is not established."]
    paired = paired_at_best(family, best, baseline, metric)
    lines += ["", "At each activation's own best lr:", "",
              markdown_paired(paired, metric, int(table["seeds"].max())) if not paired.empty
              else f"No paired comparison: the baseline {baseline} is not in the sweep."]
    return "\n".join(lines)


def plot_lr_sweep(family: list[list[Run]], metric: str, path: Path) -> None:
    """The final metric against the learning rate (log axis): mean over seeds, band: 95% CI."""
    table = sweep_table(family, metric)
    colors = variant_colors(list(table["variant"].unique()))
    fig, ax = plt.subplots(figsize=(7.5, 5), constrained_layout=True)
    for variant, rows in table.groupby("variant", sort=True):
        rows = rows.sort_values("lr")
        ax.plot(rows["lr"], rows["mean"], marker="o", color=colors[variant], label=variant)
        ci = rows["ci95"].fillna(0).to_numpy()
        ax.fill_between(rows["lr"], rows["mean"] - ci, rows["mean"] + ci, color=colors[variant], alpha=0.15, linewidth=0)
    ax.set(xscale="log", xlabel="peak learning rate", ylabel=f"final {metric}",
           title="Learning-rate sweep (mean over seeds; band: 95% CI)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


NOT_ANALYSED = "Failed and unfinished runs, skipped logs"


def markdown_not_analysed(loaded: Loaded) -> str | None:
    """The runs that did not finish and the logs that could not be used (the section's body), or None."""
    parts = []
    if loaded.unfinished:
        rows = [[run.variant, run.seed, last_step(run.log), run.log["status"], run.path.name]
                for run in sorted(loaded.unfinished, key=lambda r: (r.variant, r.seed, str(r.path)))]
        parts.append("Not in any table or figure above: their numbers would describe a run that did not finish.\n\n"
                     + report.table(["variant", "seed", "step", "status", "log"], rows))
    if loaded.skipped:
        parts.append("Logs skipped, not read at all:\n\n"
                     + report.table(["log", "why"], [[path.name, why] for path, why in loaded.skipped]))
    return "\n\n".join(parts) or None


def describe_group(group: list[Run]) -> str:
    log = group[0].log
    data, train = log["data"], {**log["train_config"], "layout": log["data"]["train"]["layout"]}
    return (f"trained on `{data['train']['split']}` ({data['train']['tokens']:,} scored tokens per epoch), "
            f"evaluated on `{data['val']['split']}` ({data['val']['tokens']:,} tokens, {data['val']['bytes']:,} bytes)"
            f"{', tested on `' + data['test']['split'] + '`' if data.get('test') else ''}"
            f"{' (no test: ' + data['test_skipped'] + ')' if data.get('test_skipped') else ''}; "
            f"{train['layout']} layout, batch {train['batch_size']}, lr {train['lr']}, "
            f"{log['final']['step']} steps (num_epochs {train['num_epochs']}, max_steps {train['max_steps']}), "
            f"preset {log['model_config']['preset']}")


def kept_baselines(folder: Path) -> list[dict]:
    """The baselines kept beside logs that predate them (baselines.py writes baselines.json)."""
    path = folder / KEPT_BASELINES
    try:
        kept = json.loads(path.read_text()) if path.is_file() else []
    except (OSError, ValueError) as err:
        warnings.warn(f"ignoring {path}: {err}", stacklevel=2)
        return []
    return [e for e in kept if isinstance(e, dict) and {"identity", "baselines"} <= set(e)] if isinstance(kept, list) else []


def writable_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / ".write-test", b"")
        (folder / ".write-test").unlink()
    except (OSError, WriteError) as err:
        raise AnalysisError(f"output folder {folder} is not writable: {getattr(err, 'strerror', None) or err}") from None
    return folder


def analyze(args: argparse.Namespace) -> str:
    if args.study:
        apply_study(args)
    loaded = load_runs(log_paths(args), args.strict, args.ignore_settings)
    runs = loaded.finished
    if not runs:
        raise AnalysisError(f"no usable logs in {args.results_dir if not args.logs else 'the files given'}")
    logs_folder = args.results_dir if not args.logs else args.logs[0].parent
    out_dir = writable_folder(args.output_dir or logs_folder)
    groups = group_runs(runs)
    notes = differences(groups)
    kept = kept_baselines(logs_folder)
    if args.metric is None:
        args.metric = "test_loss" if all(r.log["final"].get("test") for r in runs) else "val_loss"
    md = []  # the groups' and sweeps' sections; the summary's opening is added at the end
    csv_tables, sections, headline = [], [], []
    for i, (group, note) in enumerate(zip(groups, notes), start=1):
        table = group_table(group, args.metric)
        paired = paired_comparisons(group, args.baseline, args.metric, args.point)
        baselines = baselines_for(group[0].log, kept)
        against_baselines = markdown_baselines(group, baselines, args.metric, args.point)
        arms = sorted({r.variant for r in group})
        comparisons = args.comparisons or [(arm, args.baseline) for arm in arms if arm != args.baseline]
        declared = [markdown_verdicts(group, comparisons, args.metric, args.point, args.margin, args.alpha),
                    markdown_table(table, args.metric),
                    "Per-pair view: " + markdown_paired(paired, args.metric, int(table["seeds"].max()), args.point)]
        exploratory = []
        if all(len(evaluations(r)) > 1 for r in group):
            exploratory.append(markdown_curves(group, args.metric))
        if has_attention(group):
            exploratory.append(markdown_inside(group))
        parts = declared + ([f"### Exploratory\n\nNot declared before the runs: patterns to test in a new study, "
                             f"not findings.\n\n" + "\n\n".join(exploratory)] if exploratory else [])
        tables = "\n\n".join(parts)
        headline.append(f"**Group {i}** ({note})\n\n{against_baselines}")
        md += [f"## Group {i}: {note}", "", describe_group(group) + ".", "", tables, ""]
        suffix = "" if i == 1 else f"_group{i}"
        figures = {"training_curves": functools.partial(plot_curves, baselines=baselines, baseline_arm=args.baseline),
                   "training_dynamics": plot_dynamics}
        if has_attention(group):
            figures["attention"] = plot_attention
        if has_compute(group):
            figures["training_compute"] = plot_compute
        for name, plot in figures.items():
            plot(group, out_dir / f"{name}{suffix}.png")
        sections.append(report.Section(f"group {i} ({note})", describe_group(group) + ".", group, tables,
                                       [(f"{name}{suffix}.png", FIGURE_GUIDE[name]) for name in figures]))
        if not paired.empty:
            table = table.merge(paired[["variant", "mean_diff", "ci95", "p", "p_holm"]].rename(columns={
                "mean_diff": f"{args.metric}_diff_vs_{args.baseline}", "ci95": "diff_ci95"}), on="variant", how="left")
        csv_tables.append(table.assign(group=i, group_settings=note))
    sweeps = []
    for i, family in enumerate(sweep_families(groups), start=1):
        name = "lr_sweep.png" if i == 1 else f"lr_sweep{i}.png"
        plot_lr_sweep(family, args.metric, out_dir / name)
        sweeps.append((markdown_sweep(family, args.metric, args.baseline), [(name, FIGURE_GUIDE["lr_sweep"])]))
        md += [sweeps[-1][0], ""]
    headline = "\n\n".join(headline)
    not_analysed = markdown_not_analysed(loaded)
    md = ["# Activation comparison", "",
          f"{len(runs)} runs in {len(groups)} group(s). Values: mean ± 95% confidence interval over seeds "
          f"(t distribution); rows sorted by {args.metric}, best first. Runs with different settings are never pooled.", "",
          f"## {report.HEADLINE}", "", headline, "", *md,
          *([f"## {NOT_ANALYSED}", "", not_analysed, ""] if not_analysed else [])]
    summary = printable("\n".join(md))
    atomic_write(out_dir / "summary.md", summary.encode())
    document = report.render(sections, NOT_ANALYSED, not_analysed, sweeps, headline=headline)
    atomic_write(out_dir / "report.md", printable(document).encode())
    csv = pd.concat(csv_tables).to_csv(index=False, float_format="%.6g")
    atomic_write(out_dir / "summary.csv", printable(csv).encode())
    return summary


def printable(text: str) -> str:
    """Text that encodes as UTF-8: a file name that is not valid UTF-8 reaches Python as lone
    surrogates, which are spelled out (\\udcff) instead of crashing the write."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *_a, **_k: print(f"warning: {message}", file=sys.stderr)
            print(analyze(args))
    except (AnalysisError, WriteError, StudyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
