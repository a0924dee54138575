"""What a study may claim, as markdown: the runs against the n-gram models, and one verdict per
declared comparison with the design's power. Every sentence that states a result is generated
here from a test's outcome, so the report never says more than its tests do.

Runs are analysis.runs.Run objects (``variant``, ``seed``, ``log``, ``metric_at``); no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis.report import fmt, table
from analysis.runs import SPLIT_ROLES, split_name
from analysis.verdicts import EQUIVALENT, NOT_TESTED, SEEDS, SEEDS_AND_ARTICLES, ArticleLosses, Power, Verdict, \
    common_seeds, judge_by_seeds, judge_by_seeds_and_articles, power
from ngrams import interpolation_partner, logged_ngrams, strongest_ngram
from metrics import logged_name, role_and_metric


def split_label(runs: list, metric: str) -> str:
    """"test_loss" -> "loss on the report split `validation:B`": every number says where it is from."""
    role, key = role_and_metric(metric)
    return f"{key} on the {SPLIT_ROLES.get(role, role)} split `{split_name(runs[0].log, role)}`"


def ngram_value(ngrams: dict, name: str, metric: str) -> float:
    """An n-gram model's value of ``metric`` (loss, ppl or bpb on val or test), nan where not recorded."""
    role, key = role_and_metric(metric)
    scores = ngrams.get(name, {}).get(role)
    if not scores:
        return math.nan
    return math.exp(scores["loss"]) if key == "ppl" else float(scores.get(key, math.nan))


def markdown_ngrams(group: list, ngrams: dict, metric: str, point: str) -> str:
    """Each arm against the best n-gram model on the metric's split, with a warning when none beats it."""
    values = {name: ngram_value(ngrams, name, metric) for name in sorted(ngrams)}
    values = {name: v for name, v in values.items() if math.isfinite(v)}
    if not values:
        return "These logs hold no n-gram models (written before they were recorded)."
    strongest = strongest_ngram(ngrams)
    best_name = strongest if strongest in values else min(values, key=values.get)
    best = values[best_name]
    which = ("the strongest standard n-gram, modified Kneser-Ney with the order chosen on the selection split"
             if best_name == strongest else "the best of these logs' n-gram models; they predate modified Kneser-Ney")
    ranked = sorted(values, key=lambda n: (n != best_name, values[n]))  # the bar first, then the others by loss
    lines = [f"**Against the n-gram models** ({split_label(group, metric)}, trained on exactly the runs' "
             f"training tokens, scored on the same targets): " + ", ".join(f"{n} {values[n]:.4f}" for n in ranked)
             + f". Each arm's mean at the {point} point minus {best_name} ({which}):", ""]
    beaten = False
    arms = sorted({r.variant for r in group})
    for arm in arms:
        mean = float(np.nanmean([r.metric_at(metric, point) for r in group if r.variant == arm]))
        gap = mean - best
        beaten |= gap < 0
        verb = f"beats it by {-gap:.4f}" if gap < 0 else f"does **not** beat it (+{gap:.4f})"
        lines.append(f"- {arm}: {mean:.4f}, {verb}")
    if not beaten:
        lines = [f"> **Warning: no arm beats the {best_name} model.** On its own, no model here predicts better "
                 f"than counts of short word sequences; the verdicts below compare models below that bar and are "
                 f"not read as statements about what the MLP computes (what each adds to an n-gram: the "
                 f"interpolation below).", ""] + lines
    breakdown = markdown_loss_breakdown(group, ngrams, metric, point)
    return "\n".join(lines) + (f"\n\n{breakdown}" if breakdown else "")


def markdown_ngram_scores(log: dict) -> str:
    """The n-gram models one run's log holds, as they score the selection split (all targets, those
    of types seen in training, the unseen ones) and the report split: what a search's report opens with."""
    ngrams = logged_ngrams(log)
    header = ["n-gram", f"selection `{split_name(log, 'val')}`", "seen types", "unseen types",
              f"report `{split_name(log, 'test')}`"]
    rows = []
    for name, scores in ngrams.items():
        val, test = scores.get("val") or {}, scores.get("test") or {}
        rows.append([name, *(fmt(val.get(key), missing="-") for key in ("loss", "loss_seen", "loss_unseen")),
                     fmt(test.get("loss"), missing="-")])
    return table(header, rows, align="lrrrr")


def markdown_loss_breakdown(group: list, ngrams: dict, metric: str, point: str) -> str | None:
    """Where the loss goes, n-gram models and arms side by side on the metric's split: all targets,
    those of types seen in training and the unseen ones; and for each arm, its interpolation with the
    Kneser-Ney trigram and the gain over the trigram alone. None for logs from before these existed."""
    role = role_and_metric(metric)[0]
    partner = interpolation_partner(logged_ngrams(group[0].log))
    if not ngrams.get(partner, {}).get(role, {}).get("loss_seen"):
        return None

    def cells(values: list[float | None]) -> str:
        return " | ".join(fmt(v if v is None or math.isfinite(v) else None, missing="-") for v in values)

    def arm_mean(arm: str, key: str) -> float:
        values = [r.metric_at(logged_name(role, key), point) for r in group if r.variant == arm]
        return float(np.nanmean(values)) if not all(math.isnan(v) for v in values) else math.nan

    unseen = ngrams[partner][role]["unseen_fraction"]
    lines = [f"**Where the loss goes** ({split_label(group, logged_name(role, 'loss'))}; {100 * unseen:.1f}% of its targets are "
             f"of types never seen as a training target). Interpolated: the model mixed with {partner}, "
             f"p = w p_model + (1 - w) p_ngram, w chosen on the selection split; gain: {partner}'s loss minus the "
             f"interpolation's, what the model knows that the n-gram does not (arms at the {point} point, means "
             f"over seeds):", "",
             f"| | all | seen types | unseen types | interpolated with {partner} | gain over {partner} | w |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in sorted(n for n in ngrams if isinstance(ngrams[n].get(role), dict)):
        scores = ngrams[name][role]
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
    meaning = {EQUIVALENT: f"equivalent within ±{margin}"}.get(v.verdict, v.verdict.replace("the margin", f"±{margin}"))
    return f"{v.arm} vs {v.against}: **{meaning}** ({interval})"


def article_losses(group: list, metric: str, point: str) -> ArticleLosses | None:
    """(arm, seed) -> the metric's NLL and targets per article, None unless every run recorded them."""
    losses = {(r.variant, r.seed): r.article_losses_at(metric, point) for r in group}
    return None if not losses or any(v is None for v in losses.values()) else losses


def verdicts_with(uncertainty: str, values: dict, per_article: ArticleLosses | None,
                  comparisons: list[tuple[str, str]], margin: float, alpha: float) -> list[Verdict] | None:
    """The verdicts under one uncertainty; None where seeds+articles has no per-article losses."""
    if uncertainty == SEEDS:
        return judge_by_seeds(values, comparisons, margin, alpha)
    return None if per_article is None else judge_by_seeds_and_articles(per_article, comparisons, margin, alpha)


@dataclass(frozen=True)
class Robustness:
    """What the declared verdicts are checked against, never tests of their own: the other
    uncertainty, each seed left out, and the same procedure on the selection split's other text."""

    other: list[Verdict] | None  # under the uncertainty not declared (None: no per-article losses)
    flips: dict[tuple[str, str], list[int]]  # comparison -> the seeds whose leaving out changes its verdict
    replication_metric: str | None  # the selection split's metric (None: the metric already is one)
    replication: list[Verdict] | None


@dataclass(frozen=True)
class Judgement:
    """The verdicts on one metric of a group's declared comparisons, with what they were read from:
    the verdict table and the verdict figure are drawn from this one object."""

    metric: str
    point: str
    margin: float
    alpha: float
    uncertainty: str  # what the verdicts use: the declared one, or seeds where the logs have no per-article losses
    declared_uncertainty: str
    values: dict[tuple[str, int], float]  # (arm, seed) -> the metric at the point
    verdicts: list[Verdict]  # one per comparison (declared, or each arm against the baseline), in order
    robustness: Robustness | None = None
    baseline_arm: str | None = None  # where the comparisons are the default (none declared): the arm each is against

    @property
    def tested(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.verdict != NOT_TESTED]

    @property
    def n_tests(self) -> int:
        """The family Holm adjusts over: both tests of every comparison."""
        return 2 * len(self.verdicts)

    def paired_differences(self, v: Verdict) -> list[float]:
        """Each shared seed's difference, arm minus the arm it is compared with (finite ones only)."""
        differences = [self.values[v.arm, s] - self.values[v.against, s]
                       for s in common_seeds(self.values, v.arm, v.against)]
        return [d for d in differences if math.isfinite(d)]


def seeds_that_change(verdicts: list[Verdict], uncertainty: str, values: dict, per_article: ArticleLosses | None,
                      comparisons: list[tuple[str, str]], margin: float, alpha: float) -> dict[tuple[str, str], list[int]]:
    """Leave one seed out, each in turn, and judge again: for each comparison, the seeds whose leaving out
    changes its verdict (a verdict that rests on one seed is fragile)."""
    flips = {(v.arm, v.against): [] for v in verdicts}
    for seed in sorted({s for _, s in values}):
        kept_values = {k: x for k, x in values.items() if k[1] != seed}
        kept_articles = None if per_article is None else {k: x for k, x in per_article.items() if k[1] != seed}
        for v, w in zip(verdicts, verdicts_with(uncertainty, kept_values, kept_articles, comparisons, margin, alpha)):
            if v.verdict != NOT_TESTED and w.verdict != v.verdict:
                flips[v.arm, v.against].append(seed)
    return flips


def replication_metric(metric: str) -> str | None:
    """The same metric on the selection split (test_loss -> val_loss); None for a selection metric."""
    role, key = role_and_metric(metric)
    return logged_name("val", key) if role == "test" else None


def judge_group(group: list, comparisons: list[tuple[str, str]], metric: str, point: str, margin: float,
                alpha: float, uncertainty: str = SEEDS, baseline_arm: str | None = None) -> Judgement:
    """Every declared comparison, judged on ``metric`` at ``point`` in this group under the declared
    ``uncertainty``, with its robustness; one whose arms have no shared seeds here (a study in progress)
    is listed as not tested, never dropped. ``baseline_arm``: the comparisons were not declared, they are
    the default (each arm against this one), and the report says so."""
    values = {(r.variant, r.seed): r.metric_at(metric, point) for r in group} if comparisons else {}
    values = {key: value for key, value in values.items() if math.isfinite(value)}  # a metric a log lacks: NaN
    per_article = article_losses(group, metric, point) if comparisons else None
    used = uncertainty if uncertainty == SEEDS or per_article is not None else SEEDS
    verdicts = verdicts_with(used, values, per_article, comparisons, margin, alpha)
    robustness = None
    if any(v.verdict != NOT_TESTED for v in verdicts):
        other = verdicts_with(SEEDS_AND_ARTICLES if used == SEEDS else SEEDS, values, per_article, comparisons, margin,
                              alpha)
        flips = seeds_that_change(verdicts, used, values, per_article, comparisons, margin, alpha)
        again = replication_metric(metric)
        replication = None
        if again is not None:
            again_values = {(r.variant, r.seed): r.metric_at(again, point) for r in group}
            again_articles = article_losses(group, again, point)
            replication = verdicts_with(used if used == SEEDS or again_articles is not None else SEEDS, again_values,
                                        again_articles, comparisons, margin, alpha)
        robustness = Robustness(other, flips, again, replication)
    return Judgement(metric, point, margin, alpha, used, uncertainty, values, verdicts, robustness, baseline_arm)


UNCERTAINTY_WORDS = {SEEDS: "over seeds (two-way model arm + seed, OLS with pooled error, t tests)",
                     SEEDS_AND_ARTICLES: "over seeds and the scored split's articles (a bootstrap resampling both, "
                                         "paired; 10,000 samples)"}


def comparisons_words(j: Judgement) -> str:
    count = len(j.verdicts)
    if j.baseline_arm is None:
        return f"the {count} declared comparison(s)"
    return (f"the {count} comparison(s) of each arm against the baseline arm {j.baseline_arm}: the default, as no "
            f"comparison was declared")


def markdown_verdicts(group: list, judgement: Judgement) -> str:
    """The verdict table of a judgement, its sentences, the power statement and the robustness table."""
    j = judgement
    if not j.verdicts:
        return "No comparison to judge: none was declared, and the baseline has no runs in this group."
    fallback = (f" Asked for: `{j.declared_uncertainty}`; these logs hold no per-article losses (they were written "
                f"before those were recorded), so the verdicts use seeds."
                if j.uncertainty != j.declared_uncertainty else "")
    lines = [f"**Verdicts** on the {split_label(group, j.metric)} at the {j.point} point (lower is better). "
             f"Uncertainty {UNCERTAINTY_WORDS[j.uncertainty]}.{fallback} Two tests per comparison, a difference test "
             f"and two one-sided tests (TOST) against ±{j.margin}, Holm-adjusted together over the {j.n_tests} tests of "
             f"{comparisons_words(j)}, alpha {j.alpha}; CI: {100 * (1 - j.alpha):.0f}%, "
             f"unadjusted. A verdict names both answers: 'better, within the margin' is a difference shown and "
             f"shown to be smaller than ±{j.margin}.", "",
             "| comparison | seeds | difference | CI | p difference (Holm) | p equivalence (Holm) | verdict |",
             "|---|---|---|---|---|---|---|"]
    for v in j.verdicts:
        cells = ([f"{v.difference:+.4f}", f"[{v.ci_low:+.4f}, {v.ci_high:+.4f}]", f"{v.p_difference:.4f}",
                  f"{v.p_equivalence:.4f}"] if v.verdict != NOT_TESTED else ["n/a"] * 4)
        lines.append(f"| {v.arm} vs {v.against} | {v.pairs} | " + " | ".join(cells) + f" | {v.verdict} |")
    lines += ["", *(f"- {verdict_sentence(v, j.margin)}" for v in j.verdicts), "", power_statement(
        power(j.values, j.n_tests, j.margin, j.alpha), j.n_tests, j.margin, j.alpha)]
    if j.robustness is not None:
        lines += ["", markdown_robustness(group, j)]
    return "\n".join(lines)


def short_verdict(v: Verdict | None) -> str:
    if v is None or v.verdict == NOT_TESTED:
        return "not tested"
    return f"{v.difference:+.4f} [{v.ci_low:+.4f}, {v.ci_high:+.4f}] {v.verdict}"


def markdown_robustness(group: list, j: Judgement) -> str:
    """The robustness table: not further tests, and no verdict above changes by it."""
    r = j.robustness
    other = SEEDS_AND_ARTICLES if j.uncertainty == SEEDS else SEEDS
    seeds = sorted({s for _, s in j.values})
    replication = (f"the same procedure on the {split_label(group, r.replication_metric)}, where each run's point was "
                   f"chosen (so its numbers lean its way): a replication on other text, not a second test"
                   if r.replication_metric else None)
    lines = [f"**Robustness of these verdicts** (not further tests: the verdicts above are the study's): the verdict "
             f"under the uncertainty not used ({other}); the seeds whose leaving out (one at a time, of "
             f"{len(seeds)}) changes a verdict" + (f"; and {replication}" if replication else "") + ".", "",
             f"| comparison | verdict ({j.uncertainty}) | {other} | leave one seed out | "
             + ("selection split (replication) |" if replication else ""),
             "|---|---|---|---|" + ("---|" if replication else "")]
    for i, v in enumerate(j.verdicts):
        flips = r.flips[v.arm, v.against]
        held = ("n/a" if v.verdict == NOT_TESTED else "holds without any one seed" if not flips else
                f"changes without seed {', '.join(map(str, flips))}")
        other_cell = short_verdict(r.other[i]) if r.other is not None else "no per-article losses in these logs"
        cells = [f"{v.arm} vs {v.against}", v.verdict, other_cell, held]
        if replication:
            cells.append(short_verdict(r.replication[i]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def power_statement(p: Power | None, n_tests: int, margin: float, alpha: float) -> str:
    if p is None:
        return ("**Power**: fewer than 3 seeds (or no residual degrees of freedom): no p-values mean anything here, "
                "and no difference can be established or excluded.")
    seeds = "more than 10,000" if math.isinf(p.seeds_for_margin) else f"{p.seeds_for_margin:.0f}"
    return (f"**Power**: with {p.seeds} seeds and an observed paired SD of {p.paired_sd:.4f}, the smallest difference "
            f"this design detects with 80% power at alpha {alpha}/{n_tests} (the first Holm step) is {p.detectable:.4f}; "
            f"detecting {margin} would need {seeds} seeds. A difference smaller than {p.detectable:.4f} that is not "
            f"declared equivalent is unresolved, not absent.")
