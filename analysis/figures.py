"""The analysis's figures (matplotlib, files only): the verdicts, training curves with the n-gram models,
dynamics, attention, compute-matched curves and lr sweeps. One colour per activation in every
figure, fixed by the activation registry's order; bands are 95% confidence intervals over seeds."""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.findings import Judgement, split_label  # noqa: E402
from analysis.runs import SPLIT_ROLES, Run, by_variant, evaluations, eval_step, fixed_settings, has_attention, \
    has_probes, one_machine_alone, split_name, validation_curve  # noqa: E402
from analysis.stats import t_half_width  # noqa: E402
from analysis.tables import sweep_table  # noqa: E402
from metrics import logged_name  # noqa: E402
from transformer_from_scratch.catalog import display_rank  # noqa: E402


FIGURE_GUIDE = {
    "ladder_effects": "Each declared comparison at every rung of the ladder: its estimate (dot) and confidence interval "
                      "(bar) as that rung's verdict table gives them, the equivalence margin (grey band) and zero. An "
                      "effect that keeps its side of zero at every rung transfers in sign; whether it changes with "
                      "width or data is the interaction tests' to say, not the eye's.",
    "verdicts": "The declared comparisons on the primary metric: each difference, first arm minus second (left of zero "
                "the first is better), as the verdicts' two-way model estimates it (diamond; bar: its confidence "
                "interval, unadjusted, as in the verdict table), each seed's paired difference (dots) and the "
                "equivalence margin (grey band). The verdict beside each row is the Holm-adjusted tests', not read "
                "off the bar.",
    "training_curves": "Training loss per logged step; the loss on the selection split and on the report split (the "
                       "primary metric) at each evaluation, each with the n-gram models on its own targets (dotted, "
                       "named with their split); and each activation's report loss minus the baseline arm's, paired "
                       "by seed: what the comparison is about. Lower is better; bands are 95% confidence intervals "
                       "over seeds, as in the tables (none with one seed).",
    "metric_panels": "The reference study's four panels per activation: training loss per logged step, and for each "
                     "evaluated split (a row each: selection, then report) its loss, perplexity and bits per byte at "
                     "each evaluation, with the n-gram models on the same targets (dotted; an n-gram above the "
                     "curves is named in the margin, not drawn). The same numbers as the tables, in the units "
                     "the seed study reported.",
    "training_dynamics": "Gradient norm before clipping, and per MLP layer the units that never fire on the probe set "
                         "and the mean fraction firing per token: how each activation uses its units.",
    "attention": "Entropy of attention on the probe set (nats; dotted: spreading evenly over all visible keys): the "
                 "mean over heads, then the heads from most to least focused (lowest to highest entropy) within each "
                 "run (head indices mean nothing across seeds). Lower means more focused; lines that part show an activation changing attention.",
    "training_compute": "Selection loss against training FLOPs (and machine seconds, drawn only when every run had "
                        "one machine to itself): an activation that wins only because it spends more compute (an "
                        "unmatched gated MLP costs 1.5x the MLP FLOPs) loses its lead here.",
    "lr_sweep": "Final validation metric against the learning rate: where each activation's curve bottoms out is its "
                "best lr, and a flat bottom means the comparison does not hinge on the lr chosen.",
}


# Distinct colours in display order (the catalog's): tab10, black, then tab20's light shades; an
# activation past them gets one spread around the hue circle, never a colour already taken.
PALETTE = [*plt.get_cmap("tab10").colors, (0.0, 0.0, 0.0), *plt.get_cmap("tab20").colors[1::2]]


def activation_colour(name: str) -> tuple:
    """An activation's colour in every figure of every study, fixed by its place in the catalog."""
    rank = display_rank(name)
    if rank < len(PALETTE):
        return PALETTE[rank]
    return plt.get_cmap("hsv")((rank - len(PALETTE)) * 0.618034 % 1.0)[:3]


def variant_colors(variants: list[str]) -> dict[str, tuple]:
    """One colour per activation ("(matched)" keeps its activation's colour)."""
    return {v: activation_colour(v.split(" ")[0]) for v in variants}


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


def has_evals(group: list[Run]) -> bool:
    return any(r.log.get("evals") for r in group)


def compute_curve(run: Run, x_key: str) -> tuple[pd.Series, pd.Series]:
    """(x, validation loss), both indexed by step, x being cumulative training FLOPs or seconds."""
    entries = evaluations(run)
    return (pd.Series({eval_step(e): e[x_key] for e in entries}, dtype=float),
            pd.Series({eval_step(e): e["val_loss"] for e in entries}, dtype=float))


def has_compute(group: list[Run]) -> bool:
    return all("train_flops" in e for r in group for e in evaluations(r))


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
        ax.set(xlabel=label, ylabel=f"loss on the {role_and_split(group, 'val')} (nats/token)")
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log")
    axes[0].legend(fontsize=9)
    fig.suptitle(f"Selection loss at equal training compute ({seeds_count(variants)} at each evaluation)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def epoch_axis_label(group: list[Run]) -> str:
    partial = [e for r in group for e in r.log["epochs"] if e.get("partial")]
    if partial:
        return f"epoch (last one partial: stopped at step {max(e['steps'] for e in partial)})"
    return "epoch"


def seeds_count(variants: dict[str, list[Run]]) -> str:
    """"one seed", "mean over 3 seeds" or "mean over 2-3 seeds": never "up to 1 seeds"."""
    counts = sorted({len(runs) for runs in variants.values()})
    if counts == [1]:
        return "one seed"
    return f"mean over {counts[0] if len(counts) == 1 else f'{counts[0]}-{counts[-1]}'} seeds"


def seeds_phrase(variants: dict[str, list[Run]], spread: str) -> str:
    """"mean over 3 seeds; band: 95% CI over seeds", or "one seed: no band" (``spread``: band or error bar)."""
    counted = seeds_count(variants)
    return f"one seed: no {spread}" if counted == "one seed" else f"{counted}; {spread}: 95% CI over seeds"


def plot_per_epoch(ax, variants: dict[str, list[Run]], colors: dict, series_of, group: list[Run],
                   style: str = "-", marker: str = "o", offset: float = 0.0, label_suffix: str = "") -> None:
    """A per-epoch quantity: lines over epochs (band: 95% CI over seeds), or, when every run has a
    single epoch, one point per activation with its 95% CI as an error bar."""
    single = all(len(r.log["epochs"]) == 1 for r in group)
    for i, (variant, runs) in enumerate(variants.items()):
        label = variant + label_suffix
        if single:
            _, mean, half = mean_band([series_of(r) for r in runs])
            ax.errorbar([i + offset], mean, yerr=half if len(runs) > 1 else None, color=colors[variant],
                        marker=marker, linestyle="none", capsize=4, markersize=6, label=label)
        else:
            plot_band(ax, runs, series_of, colors[variant], label, marker=marker, linestyle=style)
    if single:
        ax.set_xticks(range(len(variants)), list(variants), rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(variants) - 0.4)
        steps = max(e["steps"] for r in group for e in r.log["epochs"])
        ax.set_xlabel(f"after {steps} steps ({seeds_phrase(variants, 'error bar')})")
    else:
        ax.set_xlabel(epoch_axis_label(group))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def paired_difference(runs: list[Run], baseline_runs: list[Run], key: str) -> list[pd.Series]:
    """Per seed both arms have: the arm's curve of ``key`` minus the baseline arm's."""
    base = {r.seed: validation_curve(r, key) for r in baseline_runs}
    return [validation_curve(r, key) - base[r.seed] for r in runs if r.seed in base]


def role_and_split(group: list[Run], role: str) -> str:
    """"report split validation:B": the role and the split, as every label names them."""
    return f"{SPLIT_ROLES[role]} split {split_name(group[0].log, role)}"


def label_ngrams(ax, values: dict[str, float], split: str) -> None:
    """The n-gram models as dotted lines, labelled in the right margin (never over the curves or
    the title), the labels kept 3.5% of the axis apart and the stack centred on the lines it names.
    The y range opens downwards to show an n-gram below the curves; one above them (the unigram) is
    not drawn: its label says "above"."""
    if not values:
        return
    low, high = ax.get_ylim()
    low = min(low, min(values.values()) - 0.05 * (high - low))
    ax.set_ylim(low, high)
    ordered = sorted(values.items(), key=lambda kv: kv[1])
    gap, targets = 0.035 * (high - low), [min(value, high) for _, value in ordered]
    placed = []
    for target in targets:
        placed.append(target if not placed else max(target, placed[-1] + gap))
    shift = min(max(np.mean(targets) - np.mean(placed), low - placed[0]), high - placed[-1])
    for (name, value), y in zip(ordered, placed):
        inside = value <= high
        if inside:
            ax.axhline(value, color="gray", linestyle=":", linewidth=1)
        text = f"{name} ({split})" if inside else f"{name} ({split}) {value:.3g}, above"
        ax.annotate(text, (1.01, y + shift), xycoords=("axes fraction", "data"), ha="left", va="center",
                    fontsize=8, color="dimgray", annotation_clip=False)


def evaluated_roles(group: list[Run]) -> list[str]:
    """The split roles every run evaluated: the selection split, and the report split where there is one."""
    return ["val"] + (["test"] if all(r.log["data"].get("test") for r in group) else [])


def curve_panels(group: list[Run], baseline_arm: str) -> list[tuple[str, str, str]]:
    """(what, key, role) of each evaluation panel: the selection loss, the report loss (the primary
    metric, where there is a report split), and the paired difference on it against the baseline arm."""
    roles = evaluated_roles(group)
    panels = [("loss", logged_name(role, "loss"), role) for role in roles]
    if baseline_arm in {r.variant for r in group} and len({r.variant for r in group}) > 1:
        panels.append(("paired", logged_name(roles[-1], "loss"), roles[-1]))
    return panels


def plot_curves(group: list[Run], path: Path, ngrams: dict | None = None, baseline_arm: str = "relu") -> None:
    fig = curves_figure(group, ngrams or {}, baseline_arm)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves_figure(group: list[Run], ngrams: dict, baseline_arm: str) -> plt.Figure:
    """Training loss, then the loss of each evaluated split with its n-gram models, then each arm
    minus the baseline arm on the report split, paired by seed: every panel has lines in it."""
    variants = by_variant(group)
    colors = variant_colors(list(variants))
    panels = curve_panels(group, baseline_arm)
    columns = 2 if len(panels) == 3 else len(panels) + 1
    rows = 2 if len(panels) == 3 else 1
    fig, axes = plt.subplots(rows, columns, figsize=(7 * columns, 4.6 * rows), squeeze=False, constrained_layout=True)
    axes = list(axes.flat)
    for variant, runs in variants.items():
        plot_band(axes[0], runs, step_loss, colors[variant], variant)
    axes[0].set(title="training loss (nats/token)", xlabel="optimizer step (moving average of 5 logged steps)")
    axes[0].legend(fontsize=9)
    for ax, (what, key, role) in zip(axes[1:], panels):
        split = role_and_split(group, role)
        if what == "paired":
            for variant, runs in variants.items():
                diffs = paired_difference(runs, variants[baseline_arm], key) if variant != baseline_arm else []
                if diffs:
                    x, mean, half = mean_band(diffs)
                    ax.plot(x, mean, color=colors[variant], marker="o", markersize=3, label=variant)
                    ax.fill_between(x, mean - half, mean + half, color=colors[variant], alpha=0.2, linewidth=0)
            ax.axhline(0, color=colors[baseline_arm], linewidth=1)
            ax.set(title=f"loss minus {baseline_arm}'s, paired by seed ({split})", xlabel="epoch",
                   ylabel="nats/token")
            ax.legend(fontsize=8)
        else:
            plot_evaluations(ax, variants, colors, key, group)
            ax.set_title(f"loss on the {split} (nats/token)" + ("\nthe primary metric" if role == "test" else ""))
        if what == "loss":
            label_ngrams(ax, {name: s[role]["loss"] for name, s in ngrams.items() if s.get(role)},
                            SPLIT_ROLES[role])
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"Training curves per activation ({seeds_phrase(variants, 'band')}; dotted: n-gram models on the "
                 f"same targets)\n{fixed_settings(group)}")
    return fig


def plot_evaluations(ax, variants: dict[str, list[Run]], colors: dict, key: str, group: list[Run]) -> None:
    """A metric of the evaluations (``val_loss``, ``test_bpb``, ...) over training: at every evaluation
    where the logs have them, else at each epoch's end."""
    if has_evals(group):
        for variant, runs in variants.items():
            plot_band(ax, runs, lambda r: validation_curve(r, key), colors[variant], variant, marker="o")
        ax.set_xlabel("epoch (evaluations within epochs included)")
    else:
        plot_per_epoch(ax, variants, colors, lambda r: epoch_metric(r, key), group)


# The reference study's four panels, one row per evaluated split: (log key suffix, title, n-gram value).
METRIC_PANELS = (("loss", "loss (nats/token)", lambda scores: scores["loss"]),
                 ("ppl", "perplexity", lambda scores: float(np.exp(scores["loss"]))),
                 ("bpb", "bits per byte", lambda scores: scores["bpb"]))


def plot_metric_panels(group: list[Run], path: Path, ngrams: dict | None = None) -> None:
    fig = metric_panels_figure(group, ngrams or {})
    fig.savefig(path, dpi=110)
    plt.close(fig)


def metric_panels_figure(group: list[Run], ngrams: dict) -> plt.Figure:
    """The reference study's figure: training loss, then loss, perplexity and bits per byte of each
    evaluated split (a row per split: selection, then report), each with the n-gram models."""
    variants = by_variant(group)
    colors = variant_colors(list(variants))
    roles = evaluated_roles(group)
    fig, axes = plt.subplots(len(roles), 4, figsize=(24, 4.6 * len(roles)), squeeze=False, constrained_layout=True)
    for variant, runs in variants.items():
        plot_band(axes[0][0], runs, step_loss, colors[variant], variant)
    axes[0][0].set(title="training loss (nats/token)", xlabel="optimizer step (moving average of 5 logged steps)")
    axes[0][0].legend(fontsize=9)
    for row, role in zip(axes, roles):
        for ax, (suffix, title, ngram_value) in zip(row[1:], METRIC_PANELS):
            plot_evaluations(ax, variants, colors, logged_name(role, suffix), group)
            ax.set_title(f"{title} on the {role_and_split(group, role)}")
            label_ngrams(ax, {name: ngram_value(s[role]) for name, s in ngrams.items() if s.get(role)},
                            SPLIT_ROLES[role])
    for row in axes[1:]:
        row[0].axis("off")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(f"The reference study's panels per activation ({seeds_phrase(variants, 'band')}; dotted: n-gram "
                 f"models on the same targets)\n{fixed_settings(group)}")
    return fig


def attention_entropy(run: Run, layer: int, rank: int | None) -> pd.Series:
    """Per epoch: the attention entropy of the layer's head ranked ``rank`` by entropy within this run
    (0: the most focused), or the mean over its heads (rank None). Ranks, not head indices: head 2 of
    one seed has nothing to do with head 2 of another, so only a within-run statistic can be averaged."""
    values = {}
    for d in run.log["dynamics"]:
        entropies = sorted(h["entropy"] for h in d["attention"][layer]["heads"])
        values[d["epoch"]] = entropies[rank] if rank is not None else float(np.mean(entropies))
    return pd.Series(values, dtype=float)


def head_title(rank: int | None, n_heads: int) -> str:
    """A panel's head, by how focused it is within its run: "most focused head", "2nd most focused", ..."""
    if rank is None:
        return "mean over heads"
    if rank == 0:
        return "most focused head"
    if rank == n_heads - 1:
        return "least focused head"
    return f"{rank + 1}{ {2: 'nd', 3: 'rd'}.get(rank + 1, 'th')} most focused head"


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
            plot_per_epoch(ax, variants, colors, lambda r, at=layer, h=head: attention_entropy(r, at, h), group)
            ax.axhline(layers[layer]["heads"][0]["max_entropy"], color="gray", linestyle=":", linewidth=1)
            ax.set_title(f"layer {layer}, {head_title(head, n_heads)}", fontsize=10)
            ax.grid(alpha=0.3)
        axes[layer, 0].set_ylabel("attention entropy (nats)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Attention entropy on the probe set per activation ({seeds_phrase(variants, 'band')}; dotted: "
                 f"uniform attention)\nheads ranked by entropy within each run")
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
                           lambda r, k=key, at=layer: pd.Series(
                               {d["epoch"]: d["mlp"][at][k] for d in r.log["dynamics"]}, dtype=float),
                           group, style=styles[layer % 4], marker=markers[layer % 5], offset=offset,
                           label_suffix=f", layer {layer}")
    axes[0].set(title="gradient norm before clipping", xlabel="optimizer step (moving average of 5)", ylabel="L2 norm")
    axes[1].set(title="MLP units never active on the probe set", ylabel="fraction of units")
    axes[2].set(title="MLP units active per token (mean)", ylabel="fraction of units")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=9)
    layer_keys = [Line2D([], [], color="dimgray", marker=markers[layer % 5], linestyle=styles[layer % 4])
                  for layer in range(n_layers)]  # the layer is the marker; colour is the activation, as elsewhere
    axes[1].legend(layer_keys, [f"layer {layer}" for layer in range(n_layers)], fontsize=9, title="marker")
    fig.suptitle(f"Training dynamics per activation ({seeds_phrase(variants, 'band')}; \"active\": gate pre-activation "
                 f"> 0; see docs/model.md)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def plot_verdicts(group: list[Run], path: Path, judgement: Judgement) -> None:
    fig = verdicts_figure(group, judgement)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdicts_figure(group: list[Run], judgement: Judgement) -> plt.Figure:
    """One row per tested comparison, the first declared on top: the model's estimate with its CI,
    the seeds' paired differences, the ±margin band and zero, the verdict written at the right."""
    tested, j = judgement.tested, judgement
    colors = variant_colors([v.arm for v in tested])
    fig, ax = plt.subplots(figsize=(8.5, 1.6 + 0.6 * len(tested)), constrained_layout=True)
    ax.axvspan(-j.margin, j.margin, color="0.88", zorder=0, label=f"equivalence margin ±{j.margin}")
    ax.axvline(0, color="0.3", linewidth=1)
    for row, v in enumerate(tested):
        y = len(tested) - 1 - row
        seeds = j.paired_differences(v)
        ax.plot(seeds, [y] * len(seeds), "o", color=colors[v.arm], alpha=0.4, markersize=4)
        ax.errorbar([v.difference], [y], xerr=[[v.difference - v.ci_low], [v.ci_high - v.difference]], fmt="D",
                    color=colors[v.arm], capsize=4, markersize=7)
        ax.annotate(v.verdict, xy=(1.02, y), xycoords=("axes fraction", "data"), va="center", fontsize=10)
    ax.set_yticks(range(len(tested)), [f"{v.arm} − {v.against}" for v in reversed(tested)])
    ax.set_ylim(-0.6, len(tested) - 0.4)
    split = split_label(group, j.metric).replace("`", "")
    ax.set_xlabel(f"difference in {split} at the {j.point} point (lower is better)")
    ax.set_title(f"Declared comparisons: estimate and {100 * (1 - j.alpha):.0f}% CI (diamond, bar), each seed's paired "
                 f"difference (dots)\nverdicts: Holm over the {j.n_tests} tests of {len(j.verdicts)} comparison(s), alpha "
                 f"{j.alpha}; uncertainty: {j.uncertainty}", fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return fig


def draw_group_figures(group: list[Run], ngrams: dict, baseline_arm: str, folder: Path, suffix: str,
                       judgement: Judgement | None = None) -> list[tuple[str, str]]:
    """Every figure a group has data for, drawn into ``folder``; (file name, how to read it) of each.
    The verdict figure comes first (the claims), where a declared comparison was tested."""
    figures = {"verdicts": functools.partial(plot_verdicts, judgement=judgement)} if judgement and judgement.tested else {}
    figures["training_curves"] = functools.partial(plot_curves, ngrams=ngrams, baseline_arm=baseline_arm)
    figures["metric_panels"] = functools.partial(plot_metric_panels, ngrams=ngrams)
    if has_probes(group):
        figures["training_dynamics"] = plot_dynamics
    if has_attention(group):
        figures["attention"] = plot_attention
    if has_compute(group):
        figures["training_compute"] = plot_compute
    for name, plot in figures.items():
        plot(group, folder / f"{name}{suffix}.png")
    return [(f"{name}{suffix}.png", FIGURE_GUIDE[name]) for name in figures]


def plot_ladder(results: list, path: Path) -> None:
    """Each declared comparison's estimate and CI at every rung of a ladder (analysis.ladder.RungResult),
    the ±margin band and zero: whether an effect keeps its sign and size as width and data grow."""
    comparisons = [(v.arm, v.against) for v in results[0].judgement.verdicts]
    colors = variant_colors([a for a, _ in comparisons])
    margin = results[0].judgement.margin
    fig, ax = plt.subplots(figsize=(8.5, 4.5), constrained_layout=True)
    ax.axhspan(-margin, margin, color="0.88", zorder=0, label=f"equivalence margin ±{margin}")
    ax.axhline(0, color="0.3", linewidth=1)
    width = 0.6 / max(len(comparisons), 1)
    for i, (a, b) in enumerate(comparisons):
        x = np.arange(len(results)) + (i - (len(comparisons) - 1) / 2) * width
        verdicts = [r.judgement.verdicts[i] for r in results]
        y = np.array([v.difference for v in verdicts])
        low, high = np.array([v.ci_low for v in verdicts]), np.array([v.ci_high for v in verdicts])
        ax.errorbar(x, y, yerr=[y - low, high - y], fmt="o-", color=colors[a], capsize=3, label=f"{a} − {b}",
                    linestyle=":" if b != results[0].judgement.verdicts[0].against else "-")
    ax.set_xticks(range(len(results)), [r.name.replace("_train_fraction", "\ntrain_fraction") for r in results],
                  fontsize=8)
    j = results[0].judgement
    ax.set_ylabel(f"difference in {j.metric} at the {j.point} point\n(lower: the first arm is better)")
    ax.set_title(f"Declared comparisons across the ladder: estimate and {100 * (1 - j.alpha):.0f}% CI per rung "
                 f"(uncertainty: {j.uncertainty})", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
