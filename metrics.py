"""The numbers an evaluation reports, each declared once in METRIC_TABLE: how it accumulates over a
split's batches, how it follows from those sums, and how the toolkit shows it. Everything else is
derived from the table: the evaluation's dict (training/evaluation.py), the log's entries under the
split's role (``val_loss``, ``test_loss``), TensorBoard's scalars, the analysis's ``--metric``
choices, summary.csv's columns and summary.md's table. Adding a metric is one entry here.

Sums are float64 over the whole split; never average the batch means (batches hold different
numbers of scored tokens in the ``lines`` layout).

Beside the plain loss, an evaluation says where the loss goes and what the model knows beyond word
counts:
    loss_seen / loss_unseen / unseen_fraction: the loss on targets whose type occurs as a training
        target, on those whose type never does, and the share of the latter (Mielke & Eisner 2019);
    interp_loss: the model interpolated linearly with the strongest n-gram (modified Kneser-Ney,
        ngrams.py; the Kneser-Ney trigram in logs written before it), (Mikolov 2012),
        p = w p_model + (1 - w) p_ngram, w on a grid of INTERPOLATION_STEPS + 1 values chosen on the
        selection split and applied as it is to the report split; interp_gain = ngram_loss -
        interp_loss, the n-gram's loss on the same targets less the interpolation's (older logs call
        it trigram_loss). A model that adds nothing the n-gram lacks gains nothing; one that learned
        longer-range structure gains even where it is worse alone.

This module imports no torch, so the analysis reads the table too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

# The reference study converted loss to bits per byte assuming 4 characters per token.
STUDY_CHARS_PER_TOKEN = 4.0
INTERPOLATION_STEPS = 100  # the model's weight in the interpolation: 0, 0.01, ..., 1
ROLES = ("val", "test")  # the evaluated splits, by their key in the logs: selection and report


def perplexity(mean_nll_nats: float) -> float:
    return math.exp(mean_nll_nats) if mean_nll_nats < 700 else math.inf


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    return total_nll_nats / (math.log(2) * n_bytes)  # n_bytes: UTF-8 bytes of the targets scored


def study_bits_per_byte(mean_nll_nats: float) -> float:
    """The reference study's approximation: loss / ln 2 / 4 characters per token."""
    return mean_nll_nats / math.log(2) / STUDY_CHARS_PER_TOKEN


class ScoredBatch(Protocol):
    """One batch's scored targets, as a metric's sums see them (float64 and bool tensors)."""

    nll: Any  # the model's NLL of each scored target, nats
    bytes: Any  # the UTF-8 bytes each target stands for
    seen: Any  # whether the target's type occurs as a training target


@dataclass
class Totals:
    """A split's sums (by name, as METRIC_TABLE declares them) and, where the split has the n-gram's
    per-target NLL, the summed NLL of the interpolation at each weight and the weight in use."""

    sums: dict[str, float]
    mixture: list[float] | None = None  # at each weight 0, 1 / INTERPOLATION_STEPS, ..., 1
    chosen: int | None = None  # the index of the weight in use

    def __getitem__(self, name: str) -> float:
        return self.sums[name]

    @property
    def loss(self) -> float:
        return self["nll"] / self["tokens"]


@dataclass(frozen=True)
class Metric:
    """One number an evaluation reports of a split. ``sums``: the per-batch sums it introduces (a
    later metric may read an earlier one's). ``summarised``: the roles whose value summary.csv
    summarises over seeds and ``--metric`` may rank by; ``tabled``: the roles with a column in
    summary.md, headed ``column`` with "{role}" the split's role; ``tensorboard``: its scalar's tag
    under val/ and test/. ``ngram``: present only where the split has the n-gram's NLL."""

    value: Callable[[Totals], float | int | None]
    sums: Mapping[str, Callable[[ScoredBatch], Any]] = field(default_factory=dict)
    summarised: tuple[str, ...] = ()
    tabled: tuple[str, ...] = ()
    column: str = ""
    digits: int = 4
    tensorboard: str | None = None
    ngram: bool = False


def _where_seen(t: Totals, seen: bool) -> float | None:
    nll, tokens = (t["seen_nll"], t["seen_tokens"]) if seen else (t["unseen_nll"], t["tokens"] - t["seen_tokens"])
    return nll / tokens if tokens else None


def _interpolated(t: Totals, index: int) -> float:
    return t.mixture[index] / t["tokens"]


# In the order of the evaluation's dict.
METRIC_TABLE: dict[str, Metric] = {
    "loss": Metric(lambda t: t.loss, sums={"nll": lambda b: b.nll.sum(), "tokens": lambda b: b.nll.numel()},
                   summarised=ROLES, tabled=ROLES, column="{role} loss", tensorboard="loss"),
    "ppl": Metric(lambda t: perplexity(t.loss), summarised=ROLES, tabled=("val",), column="{role} ppl", digits=1),
    "bpb": Metric(lambda t: bits_per_byte(t["nll"], t["bytes"]) if t["bytes"] else math.nan,
                  sums={"bytes": lambda b: b.bytes.sum()}, summarised=ROLES, tabled=ROLES,
                  column="{role} bits/byte", tensorboard="bits_per_byte"),
    # the reference study's own number, reported on its validation split alone
    "bpb_approx": Metric(lambda t: study_bits_per_byte(t.loss), summarised=("val",), tabled=("val",),
                         column="study bits/byte (approx, {role})"),
    "bytes_per_token": Metric(lambda t: t["bytes"] / t["tokens"]),
    "tokens": Metric(lambda t: int(t["tokens"])),
    "bytes": Metric(lambda t: int(t["bytes"])),
    "loss_seen": Metric(lambda t: _where_seen(t, seen=True),
                        sums={"seen_nll": lambda b: b.nll[b.seen].sum(), "seen_tokens": lambda b: b.seen.sum()}),
    "loss_unseen": Metric(lambda t: _where_seen(t, seen=False), sums={"unseen_nll": lambda b: b.nll[~b.seen].sum()}),
    "unseen_fraction": Metric(lambda t: (t["tokens"] - t["seen_tokens"]) / t["tokens"]),
    "interp_weight": Metric(lambda t: t.chosen / INTERPOLATION_STEPS, ngram=True),
    "interp_loss": Metric(lambda t: _interpolated(t, t.chosen), summarised=ROLES, ngram=True),
    "ngram_loss": Metric(lambda t: _interpolated(t, 0), ngram=True),
    "interp_gain": Metric(lambda t: _interpolated(t, 0) - _interpolated(t, t.chosen), ngram=True),
}


def sum_functions() -> dict[str, Callable[[ScoredBatch], Any]]:
    """Every per-batch sum the metrics need, in declaration order."""
    return {name: function for metric in METRIC_TABLE.values() for name, function in metric.sums.items()}


def metrics_of(totals: Totals) -> dict[str, float | int | None]:
    """A split's metrics from its sums; the n-gram's only where the split had its NLL."""
    if totals["tokens"] == 0:
        raise ValueError("no scored tokens: cannot compute metrics of an empty split")
    return {name: metric.value(totals) for name, metric in METRIC_TABLE.items()
            if not metric.ngram or totals.mixture is not None}


def chosen_weight(mixture: list[float], interp_weight: float | None) -> int:
    """The interpolation weight's index: the lowest summed NLL when ``interp_weight`` is None (on the
    selection split), else the weight given (the selection split's)."""
    if interp_weight is None:
        return min(range(len(mixture)), key=mixture.__getitem__)
    return round(interp_weight * INTERPOLATION_STEPS)


def logged_name(role: str, metric: str) -> str:
    """A metric's key in the log's evaluation entries: ("val", "loss") -> "val_loss"."""
    return f"{role}_{metric}"


def role_and_metric(key: str) -> tuple[str, str]:
    """"test_interp_loss" -> ("test", "interp_loss")."""
    role, metric = key.split("_", 1)
    return role, metric


def summarised_names() -> list[str]:
    """The logged names the analysis summarises and may rank by: those every log has, then the
    n-gram's; within each, the selection split's before the report split's, in declaration order."""
    return [logged_name(role, name) for ngram in (False, True) for role in ROLES
            for name, metric in METRIC_TABLE.items() if metric.ngram == ngram and role in metric.summarised]


def tabled_columns(role_names: Mapping[str, str]) -> list[tuple[str, str, int]]:
    """summary.md's metric columns as (logged name, header, digits) for the roles ``role_names``
    names ({"val": "selection"}), role by role, each in declaration order."""
    return [(logged_name(role, name), metric.column.format(role=shown), metric.digits)
            for role, shown in role_names.items() for name, metric in METRIC_TABLE.items() if role in metric.tabled]


def tensorboard_tags() -> dict[str, str]:
    """Each logged name that TensorBoard draws, and its tag: {"val_loss": "val/loss", ...}."""
    return {logged_name(role, name): f"{role}/{metric.tensorboard}"
            for role in ROLES for name, metric in METRIC_TABLE.items() if metric.tensorboard}
