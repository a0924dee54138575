"""The analysis's tables: one row per activation with mean, spread and confidence interval, the
paired per-seed view, the curves and the inside-the-model table, learning-rate sweeps, and the runs
that could not be analysed. Markdown for the summary and report; DataFrames for the csv."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import pandas as pd

from analysis import report
from analysis.report import fmt
from analysis.runs import SPLIT_ROLES, Loaded, Run, by_variant, evaluations, has_attention, one_machine_alone, step_curve, \
    step_label
from analysis.stats import holm, paired_t_test, summarize
from metrics import logged_name, summarised_names, tabled_columns
from run_log import last_step


def fmt_ci(mean: float, ci95: float, digits: int = 4) -> str:
    """"mean ± CI", or the mean alone where there is no interval (one seed)."""
    return fmt(mean, digits) if math.isnan(ci95) else f"{fmt(mean, digits)} ± {fmt(ci95, digits)}"


def group_table(group: list[Run], metric: str) -> pd.DataFrame:
    """One row per variant: seeds, metric mean/std/CI, parameters, time, throughput."""
    rows = []
    for variant, runs in by_variant(group).items():
        row = {"variant": variant, "seeds": len(runs), "seed_list": " ".join(str(r.seed) for r in sorted(runs, key=lambda r: r.seed))}
        for name in summarised_names():
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


def paired_comparisons(group: list[Run], baseline: str, metric: str, point: str = "final",
                       n_tests: int = 0) -> pd.DataFrame:
    """Each variant minus the baseline, paired by seed, each run read at ``point`` (as the verdicts
    read it); Holm-corrected over the verdicts' family of ``n_tests`` tests (the tests not in this
    table count as p = 1), or over the rows when that is smaller."""
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
        family = list(table["p"]) + [1.0] * max(n_tests - len(table), 0)
        table["p_holm"] = holm(family)[:len(table)]
        table.attrs["n_tests"] = len(family)
    return table


MACHINE_TIME_OMITTED = ("Training seconds and tokens/s are left out: the runs did not each have one machine to "
                        "themselves (they shared its cores, or ran on different machines), so their times do not compare. "
                        "summary.csv keeps them.")


def markdown_table(table: pd.DataFrame, metric: str, times_compare: bool) -> str:
    """The group's table, selection and report splits named by role; machine time only where it compares."""
    roles = ["val", *(["test"] if f"{logged_name('test', 'loss')}_mean" in table else [])]
    columns = tabled_columns({role: SPLIT_ROLES[role] for role in roles})
    header = ["variant", "seeds", *(header for _, header, _ in columns)]
    header += ["params (total / MLP)"] + (["train s", "tokens/s"] if times_compare else []) + [f"{metric} vs best"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cell(row, name: str, digits: int = 4) -> str:
        return fmt_ci(row.get(f"{name}_mean", math.nan), row.get(f"{name}_ci95", math.nan), digits)

    for _, row in table.iterrows():
        cells = [row["variant"], str(row["seeds"]), *(cell(row, name, digits) for name, _, digits in columns)]
        gap = row[f"{metric}_vs_best_pct"]
        cells += [f"{row['params_total']:,} / {row['params_mlp']:,}"]
        cells += [f"{row['train_wall_s_mean']:.0f}", f"{row['train_tokens_per_s_mean']:.0f}"] if times_compare else []
        cells += ["n/a" if math.isnan(gap) else f"+{gap:.2f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ([] if times_compare else ["", MACHINE_TIME_OMITTED]))


def markdown_paired(table: pd.DataFrame, metric: str, max_seeds: int, point: str = "final") -> str:
    if table.empty:
        return "No paired comparison: the baseline is not among these runs."
    where = "" if point == "final" else f" at the {point} point"
    lines = [f"Paired by seed against **{table['baseline'].iloc[0]}** ({metric}{where}, variant minus baseline; "
             f"negative = better than baseline):", "",
             "| variant | pairs | mean difference ± 95% CI | t | p | p (Holm over "
             f"{table.attrs.get('n_tests', len(table))} tests) |", "|---|---|---|---|---|---|"]
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
    trained past its own lowest point (overfitting): its last evaluation, not its final numbers, which
    under --keep best are that lowest point's."""
    key = curve_metric(metric)
    curves = {v: [step_curve(r, key) for r in runs] for v, runs in by_variant(group).items()}
    means = pd.DataFrame({v: pd.concat(c, axis=1).mean(axis=1) for v, c in curves.items()}).T  # rows: variants
    ranks = means.rank(axis=0, method="min")
    rises = {v: summarize([float(c.iloc[-1] - c.min()) for c in cs]) for v, cs in curves.items()}
    header = ["variant"] + [step_label(int(s), group[0]) for s in means.columns] + ["lowest mean at step",
                                                                                     "last − own lowest"]
    lines = [f"The selection split's {key} at every evaluation (mean over seeds; rank in brackets, 1 = best). The last column is "
             f"each run's last evaluation minus its lowest, averaged over seeds: above zero, the run trained past its "
             f"best point (overfitting; a run that kept its best weights reports that point).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in means.index:
        cells = [f"{fmt(means.loc[variant, x])} ({int(ranks.loc[variant, x])})" for x in means.columns]
        rise = fmt_ci(rises[variant].mean, rises[variant].ci95)
        lines.append("| " + " | ".join([variant, *cells, str(int(means.loc[variant].idxmin())), rise]) + " |")
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
    header = ["variant", "best lr", f"{metric} at best lr", "seeds"] + (["report loss at that lr"] if has_test else [])
    header += [f"{metric} at lr {lr:g}" for lr in lrs]
    lines = [f"## Learning-rate sweep: lr {', '.join(f'{lr:g}' for lr in lrs)}", "",
             f"Each activation at the learning rate where its mean {metric} is lowest. **Choosing the best "
             f"lr on the split that ranks them favours every activation by the luck of that choice**, so these numbers "
             "are optimistic" + (", and the report split's loss at the lr chosen is the honest one." if has_test else
                                 "; with no report split there is no unbiased number here.") + " The paired tests "
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


def group_tables(group: list[Run], table: pd.DataFrame, paired: pd.DataFrame, verdicts: str, metric: str,
                 point: str) -> str:
    """A group's tables: the declared verdicts, the table and the per-pair view, then what was not
    declared (curves, inside the model) under "Exploratory"."""
    declared = [verdicts, markdown_table(table, metric, one_machine_alone(group)),
                "Per-pair view: " + markdown_paired(paired, metric, int(table["seeds"].max()), point)]
    exploratory = []
    if all(len(evaluations(r)) > 1 for r in group):
        exploratory.append(markdown_curves(group, metric))
    if has_attention(group):
        exploratory.append(markdown_inside(group))
    parts = declared + (["### Exploratory\n\nNot declared before the runs: patterns to test in a new study, "
                         "not findings.\n\n" + "\n\n".join(exploratory)] if exploratory else [])
    return "\n\n".join(parts)


def csv_table(table: pd.DataFrame, paired: pd.DataFrame, metric: str, baseline: str) -> pd.DataFrame:
    """The group's table for summary.csv, with the paired differences against the baseline arm."""
    if paired.empty:
        return table
    return table.merge(paired[["variant", "mean_diff", "ci95", "p", "p_holm"]].rename(columns={
        "mean_diff": f"{metric}_diff_vs_{baseline}", "ci95": "diff_ci95"}), on="variant", how="left")
