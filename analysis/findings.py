"""What a study may claim, as markdown: the runs against the n-gram baselines, and one verdict per
declared comparison with the design's power. Every sentence that states a result is generated
here from a test's outcome, so the report never says more than its tests do.

Runs are analysis.runs.Run objects (``variant``, ``seed``, ``log``, ``metric_at``); no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis.runs import SPLIT_ROLES
from analysis.verdicts import EQUIVALENT, NOT_TESTED, Power, Verdict, common_seeds, judge, power


def split_label(runs: list, metric: str) -> str:
    """"test_loss" -> "loss on the report split `validation:B`": every number says where it is from."""
    role, key = metric.split("_", 1)
    info = runs[0].log["data"].get(role) or {}
    return f"{key} on the {SPLIT_ROLES.get(role, role)} split `{info.get('split', '?')}`"


def baseline_value(baselines: dict, name: str, metric: str) -> float:
    """A baseline's value of ``metric`` (loss, ppl or bpb on val or test), nan where not recorded."""
    role, key = metric.split("_", 1)
    scores = baselines.get(name, {}).get(role)
    if not scores:
        return math.nan
    return math.exp(scores["loss"]) if key == "ppl" else float(scores.get(key, math.nan))


def markdown_baselines(group: list, baselines: dict, metric: str, point: str) -> str:
    """Each arm against the best n-gram baseline on the metric's split, with a warning when none beats it."""
    values = {name: baseline_value(baselines, name, metric) for name in sorted(baselines)}
    values = {name: v for name, v in values.items() if math.isfinite(v)}
    if not values:
        return "These logs hold no n-gram baselines (written before they were recorded)."
    best_name = min(values, key=values.get)
    best = values[best_name]
    lines = [f"**Against the n-gram baselines** ({split_label(group, metric)}, trained on exactly the runs' "
             f"training tokens, scored on the same targets): " + ", ".join(f"{n} {v:.4f}" for n, v in values.items())
             + f". Each arm's mean at the {point} point minus the best baseline ({best_name}):", ""]
    beaten = False
    arms = sorted({r.variant for r in group})
    for arm in arms:
        mean = float(np.nanmean([r.metric_at(metric, point) for r in group if r.variant == arm]))
        gap = mean - best
        beaten |= gap < 0
        verb = f"beats it by {-gap:.4f}" if gap < 0 else f"does **not** beat it (+{gap:.4f})"
        lines.append(f"- {arm}: {mean:.4f}, {verb}")
    if not beaten:
        lines = [f"> **Warning: no arm beats the {best_name} baseline.** These models have learned no more than "
                 f"what counts of short word sequences capture; their differences are not about what the MLP "
                 f"computes.", ""] + lines
    breakdown = markdown_loss_breakdown(group, baselines, metric, point)
    return "\n".join(lines) + (f"\n\n{breakdown}" if breakdown else "")


def markdown_loss_breakdown(group: list, baselines: dict, metric: str, point: str) -> str | None:
    """Where the loss goes, baselines and arms side by side on the metric's split: all targets,
    those of types seen in training and the unseen ones; and for each arm, its interpolation with the
    Kneser-Ney trigram and the gain over the trigram alone. None for logs from before these existed."""
    role = metric.split("_", 1)[0]
    if not baselines.get("trigram_kn", {}).get(role, {}).get("loss_seen"):
        return None

    def cells(values: list[float | None]) -> str:
        return " | ".join("-" if v is None or not math.isfinite(v) else f"{v:.4f}" for v in values)

    def arm_mean(arm: str, key: str) -> float:
        values = [r.metric_at(f"{role}_{key}", point) for r in group if r.variant == arm]
        return float(np.nanmean(values)) if not all(math.isnan(v) for v in values) else math.nan

    unseen = baselines["trigram_kn"][role]["unseen_fraction"]
    lines = [f"**Where the loss goes** ({split_label(group, role + '_loss')}; {100 * unseen:.1f}% of its targets are "
             f"of types never seen as a training target). Interpolated: the model mixed with the Kneser-Ney trigram, "
             f"p = w p_model + (1 - w) p_trigram, w chosen on the selection split; gain: the trigram's loss minus the "
             f"interpolation's, what the model knows that the trigram does not (arms at the {point} point, means "
             f"over seeds):", "",
             "| | all | seen types | unseen types | interpolated with the trigram | gain over the trigram | w |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in sorted(n for n in baselines if isinstance(baselines[n].get(role), dict)):
        scores = baselines[name][role]
        lines.append(f"| {name} | " + cells([scores["loss"], scores.get("loss_seen"), scores.get("loss_unseen")])
                     + " | - | - | - |")
    for arm in sorted({r.variant for r in group}):
        lines.append(f"| {arm} | " + cells([arm_mean(arm, key) for key in ("loss", "loss_seen", "loss_unseen",
                                                                             "interp_loss", "interp_gain",
                                                                             "interp_weight")]) + " |")
    return "\n".join(lines)


def verdict_sentence(v: Verdict, margin: float) -> str:
    if v.verdict == NOT_TESTED:
        shared = f"{v.pairs} shared seed" + ("" if v.pairs == 1 else "s")
        return f"{v.arm} vs {v.against}: not tested ({shared}; a verdict needs 3)"
    interval = f"difference {v.difference:+.4f}, CI [{v.ci_low:+.4f}, {v.ci_high:+.4f}]"
    meaning = {EQUIVALENT: f"equivalent within ±{margin}"}.get(v.verdict, v.verdict)
    return f"{v.arm} vs {v.against}: **{meaning}** ({interval})"


@dataclass(frozen=True)
class Judgement:
    """The verdicts on one metric of a group's declared comparisons, with what they were read from:
    the verdict table and the verdict figure are drawn from this one object."""

    metric: str
    point: str
    margin: float
    alpha: float
    values: dict[tuple[str, int], float]  # (arm, seed) -> the metric at the point
    verdicts: list[Verdict]  # one per comparison (declared, or each arm against the baseline), in order

    @property
    def tested(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.verdict != NOT_TESTED]

    def paired_differences(self, v: Verdict) -> list[float]:
        """Each shared seed's difference, arm minus the arm it is compared with (finite ones only)."""
        differences = [self.values[v.arm, s] - self.values[v.against, s]
                       for s in common_seeds(self.values, v.arm, v.against)]
        return [d for d in differences if math.isfinite(d)]


def judge_group(group: list, comparisons: list[tuple[str, str]], metric: str, point: str, margin: float,
                alpha: float) -> Judgement:
    """Every declared comparison, judged on ``metric`` at ``point`` in this group; one whose arms have
    no shared seeds here (a study in progress) is listed as not tested, never dropped."""
    values = {(r.variant, r.seed): r.metric_at(metric, point) for r in group} if comparisons else {}
    return Judgement(metric, point, margin, alpha, values, judge(values, comparisons, margin, alpha))


def markdown_verdicts(group: list, judgement: Judgement) -> str:
    """The verdict table of a judgement, its sentences and the power statement."""
    j = judgement
    if not j.verdicts:
        return "No comparison to judge: none was declared, and the baseline has no runs in this group."
    lines = [f"**Verdicts** on the {split_label(group, j.metric)} at the {j.point} point (lower is better). Model: "
             f"{j.metric} ~ arm + seed, OLS with pooled error; difference test and two one-sided tests (TOST) against "
             f"±{j.margin}, both Holm-adjusted over the {len(j.verdicts)} declared comparison(s), alpha {j.alpha}; "
             f"CI: {100 * (1 - j.alpha):.0f}%, unadjusted.", "",
             "| comparison | seeds | difference | CI | p difference (Holm) | p equivalence (Holm) | verdict |",
             "|---|---|---|---|---|---|---|"]
    for v in j.verdicts:
        cells = ([f"{v.difference:+.4f}", f"[{v.ci_low:+.4f}, {v.ci_high:+.4f}]", f"{v.p_difference:.4f}",
                  f"{v.p_equivalence:.4f}"] if v.verdict != NOT_TESTED else ["n/a"] * 4)
        lines.append(f"| {v.arm} vs {v.against} | {v.pairs} | " + " | ".join(cells) + f" | {v.verdict} |")
    lines += ["", *(f"- {verdict_sentence(v, j.margin)}" for v in j.verdicts), "", power_statement(
        power(j.values, len(j.verdicts), j.margin, j.alpha), len(j.verdicts), j.margin, j.alpha)]
    return "\n".join(lines)


def power_statement(p: Power | None, n_comparisons: int, margin: float, alpha: float) -> str:
    if p is None:
        return ("**Power**: fewer than 3 seeds (or no residual degrees of freedom): no p-values mean anything here, "
                "and no difference can be established or excluded.")
    seeds = "more than 100,000" if math.isinf(p.seeds_for_margin) else f"{p.seeds_for_margin:.0f}"
    return (f"**Power**: with {p.seeds} seeds and an observed paired SD of {p.paired_sd:.4f}, the smallest difference "
            f"this design detects with 80% power at alpha {alpha}/{n_comparisons} is {p.detectable:.4f}; detecting "
            f"{margin} would need {seeds} seeds. A difference smaller than {p.detectable:.4f} that is not declared "
            f"equivalent is unresolved, not absent.")
