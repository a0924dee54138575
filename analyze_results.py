"""Turn the JSON logs of train_simple.py into comparison tables, figures and a report.

    python analyze_results.py                      # every log in results/
    python analyze_results.py --results_dir results/my_study --baseline gelu --metric val_bpb

Writes report.md (the document to read first), summary.md, summary.csv (for tools), and the figures
verdicts.png (where a declared comparison was tested), training_curves.png, training_dynamics.png and
attention.png. The analysis's life, in the order ``analyze`` reads: read the logs -> group them (runs
are pooled over seeds only when every setting but activation and seed agrees) -> per group, its n-gram
ngrams -> its verdicts on the declared comparisons -> its tables -> its figures -> the lr sweeps
across groups -> the summary and the report. Failed and unfinished runs are listed, not dropped; two
logs of the same run count once. The parts live in analysis/ (runs, stats, verdicts, findings,
tables, figures, report). Needs no torch: logs are read through run_log.py.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import report
from analysis.figures import FIGURE_GUIDE, draw_group_figures, plot_ladder, plot_lr_sweep
from analysis.findings import Judgement, judge_group, markdown_ngrams, markdown_verdicts
from analysis.ladder import RungResult, markdown_ladder
from analysis.runs import POINTS, AnalysisError, Run, describe_group, differences, group_runs, \
    kept_ngrams, load_runs, log_paths
from analysis.tables import NOT_ANALYSED, csv_table, group_table, group_tables, markdown_not_analysed, \
    markdown_sweep, paired_comparisons, sweep_families
from analysis.tuning import markdown_tuning
from analysis.verdicts import SEEDS_AND_ARTICLES, UNCERTAINTIES
from ngrams import ngrams_for, strongest_ngram
from cli import Parser
import preregistration
from metrics import summarised_names
from run_log import WriteError, atomic_write, recorded
from study_file import StudyError, load_study, tuning_candidates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(description="Compare activations from train_simple.py JSON logs.")
    p.add_argument("logs", nargs="*", type=Path,
                   help="log files or folders of them (default: every *.json in --results_dir); the outputs go beside "
                        "the first")
    p.add_argument("--results_dir", type=Path, default=Path("results"), help="folder of run logs")
    p.add_argument("--output_dir", type=Path, default=None, help="where outputs go (default: --results_dir)")
    p.add_argument("--baseline", default="relu", help="variant every other is compared with, paired by seed")
    p.add_argument("--metric", default=None, choices=summarised_names(),
                   help="metric for ranking, verdicts and paired tests (default: test_loss, on the report split, "
                        "when every run has one, else val_loss)")
    p.add_argument("--secondary", nargs="+", default=[], choices=summarised_names(), metavar="METRIC",
                   help="secondary metrics: each gets verdicts of its own on the declared comparisons, labelled "
                        "secondary (a study file's `secondary`)")
    p.add_argument("--strict", action="store_true", help="a malformed or incomplete log is an error, not a warning")
    p.add_argument("--point", choices=POINTS, default="final",
                   help="where each run is read for the verdicts: its end, or its evaluation with the lowest "
                        "selection (validation) loss")
    p.add_argument("--margin", type=float, default=0.02, help="equivalence margin of the verdicts (metric units)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the verdicts (Holm-adjusted)")
    p.add_argument("--uncertainty", choices=UNCERTAINTIES, default=SEEDS_AND_ARTICLES,
                   help="what the verdicts' uncertainty covers: seeds, or seeds and the report split's articles "
                        "(needs logs with per-article losses; older logs fall back to seeds, said in the report)")
    p.add_argument("--no_figures", action="store_true",
                   help="the report and tables without figures: drawing them is most of an analysis's time (a quick "
                        "look at a study in progress, or a machine without a display's fonts to spare)")
    p.add_argument("--pool_precisions", action="store_true",
                   help="pool runs that differ only in precision (--bf16); by default they are never compared")
    p.add_argument("--study", type=Path, default=None,
                   help="a study file (TOML): its declared arms, comparisons, metric, secondary, point, margin and "
                        "alpha replace the flags above, and its output folder --results_dir")
    args = p.parse_args(argv)
    args.comparisons, args.ignore_settings = None, {"train.bf16"} if args.pool_precisions else set()
    args.rung = 0  # a ladder study's rung being analysed (analyze_ladder sets it)
    return args


def apply_study(args: argparse.Namespace) -> tuple[str | None, list[dict]]:
    """A study file's declarations replace the flags: its folder, arms' comparisons, metric, point,
    margin and alpha. Per-arm learning rates (declared or tuned) do not split its runs into groups.
    Returns the table of its lr tuning and the logs of its tuning runs (None and [] without one)."""
    study = load_study(args.study)
    rung = study.rungs[args.rung]
    args.results_dir, args.baseline, args.comparisons = rung.folder, study.baseline, study.comparisons
    args.metric, args.point, args.margin, args.alpha = study.metric, study.point, study.margin, study.alpha
    args.uncertainty = study.uncertainty
    args.secondary = list(study.secondary)
    args.ignore_settings = args.ignore_settings | study.per_arm_settings
    if not study.tuning:
        return None, []
    candidates = tuning_candidates(study, rung)
    return markdown_tuning(candidates, study.tuning), [log for c in candidates if (log := c.log()) is not None]


@dataclass
class GroupAnalysis:
    """One group's part of every output."""

    headline: str  # against the n-gram models, for the report's opening
    summary: list[str]  # its section of summary.md
    section: report.Section
    csv: pd.DataFrame
    primary: Judgement  # its verdicts on the primary metric (a ladder's report reads them)
    ngrams: dict


def analyse_group(i: int, group: list[Run], note: str, ngrams: dict, args: argparse.Namespace,
                  out_dir: Path) -> GroupAnalysis:
    """N-gram models, then verdicts, then tables, then figures, for one group of runs."""
    table = group_table(group, args.metric)
    against_ngrams = markdown_ngrams(group, ngrams, args.metric, args.point)
    arms = sorted({r.variant for r in group})
    implied = [(arm, args.baseline) for arm in arms if arm != args.baseline] if args.baseline in arms else []
    comparisons = args.comparisons or implied  # a study's declared ones, else each arm against the baseline arm
    default = None if args.comparisons else args.baseline
    primary, *secondary = (judge_group(group, comparisons, metric, args.point, args.margin, args.alpha,
                                       args.uncertainty, default) for metric in (args.metric, *args.secondary))
    paired = paired_comparisons(group, args.baseline, args.metric, args.point, primary.n_tests)
    verdicts = "\n\n".join([markdown_verdicts(group, primary),
                             *(f"**Secondary metric `{j.metric}`**, declared as such: " + markdown_verdicts(group, j)
                               for j in secondary)])
    tables = group_tables(group, table, paired, verdicts, args.metric, args.point)
    figures = [] if args.no_figures else draw_group_figures(group, ngrams, args.baseline, out_dir,
                                                           "" if i == 1 else f"_group{i}", primary)
    described = describe_group(group) + "."
    return GroupAnalysis(f"**Group {i}** ({note})\n\n{against_ngrams}",
                         [f"## Group {i}: {note}", "", described, "", tables, ""],
                         report.Section(f"group {i} ({note})", described, group, tables, figures),
                         csv_table(table, paired, args.metric, args.baseline).assign(group=i, group_settings=note),
                         primary, ngrams)


def analyse_sweeps(groups: list[list[Run]], args: argparse.Namespace, out_dir: Path) -> list[tuple[str, list]]:
    """Each lr sweep across groups: its markdown and its figure."""
    sweeps = []
    for i, family in enumerate(sweep_families(groups), start=1):
        name = "lr_sweep.png" if i == 1 else f"lr_sweep{i}.png"
        if not args.no_figures:
            plot_lr_sweep(family, args.metric, out_dir / name)
        figures = [] if args.no_figures else [(name, FIGURE_GUIDE["lr_sweep"])]
        sweeps.append((markdown_sweep(family, args.metric, args.baseline), figures))
    return sweeps


def analyze_ladder(args: argparse.Namespace, study) -> tuple[str, list[Path]]:
    """A ladder study: each rung analysed in its folder as a study of its own, then ladder.md beside the
    study file, the answer across the rungs (analysis/ladder.py)."""
    results, written = [], []
    for i, rung in enumerate(study.rungs):
        _, files, analysed = analyze(argparse.Namespace(**{**vars(args), "rung": i, "logs": []}))
        written += files
        first = analysed[0]
        runs = first.section.runs
        bar = strongest_ngram(first.ngrams)
        bar_loss = first.ngrams.get(bar, {}).get("val", {}).get("loss") if bar else None
        arms = sorted({r.variant for r in runs})
        beats = {arm: bar_loss is not None and float(np.mean([r.metric_at("val_loss", args.point) for r in runs
                                                              if r.variant == arm])) < bar_loss for arm in arms}
        baseline_runs = [r for r in runs if r.variant == study.baseline] or runs
        compute = float(np.mean([r.log["epochs"][-1].get("train_flops", math.nan) for r in baseline_runs]))
        log = runs[0].log
        results.append(RungResult(rung.name, log["model_config"]["d_model"], float(recorded(log["data"], "train_fraction")),
                                  compute, first.primary, beats, bar))
    figure = "" if args.no_figures else \
        f"\n![ladder_effects.png](ladder_effects.png)\n\n{FIGURE_GUIDE['ladder_effects']}\n"
    if not args.no_figures:
        plot_ladder(results, study.folder / "ladder_effects.png")
    text = f"# {study.name}: the ladder\n\n{markdown_ladder(results, study.baseline, study.alpha)}\n{figure}"
    atomic_write(study.folder / "ladder.md", printable(text).encode())
    return text, [study.folder / "ladder.md", *([] if args.no_figures else [study.folder / "ladder_effects.png"]),
                  *written]


def analyze(args: argparse.Namespace) -> tuple[str, list[Path], list[GroupAnalysis]]:
    """Every output, from the logs; the summary's text, the files written (report first) and each group's
    analysis."""
    tuning, tuning_logs = apply_study(args) if args.study else (None, [])
    loaded = load_runs(log_paths(args), args.strict, args.ignore_settings)
    runs = loaded.finished
    if not runs:
        raise AnalysisError(f"no usable logs in {args.results_dir if not args.logs else 'the files given'}")
    logs_folder = args.results_dir if not args.logs else args.logs[0] if args.logs[0].is_dir() else args.logs[0].parent
    out_dir = writable_folder(args.output_dir or logs_folder)
    groups = group_runs(runs)
    if args.metric is None:
        args.metric = "test_loss" if all(r.log["final"].get("test") for r in runs) else "val_loss"
    kept = kept_ngrams(logs_folder)
    analysed = [analyse_group(i, group, note, ngrams_for(group[0].log, kept), args, out_dir)
                for i, (group, note) in enumerate(zip(groups, differences(groups)), start=1)]
    sweeps = analyse_sweeps(groups, args, out_dir)
    headline = "\n\n".join(g.headline for g in analysed)
    declared = preregistration_line([r.log for r in runs] + tuning_logs, args.study)  # a tuning run is declared too
    not_analysed = markdown_not_analysed(loaded)
    md = ["# Activation comparison", "",
          f"{len(runs)} runs in {len(groups)} group(s). Values: mean ± 95% confidence interval over seeds "
          f"(t distribution); rows sorted by {args.metric}, best first. Runs with different settings are never pooled.", "",
          *([f"**Pre-registration**: {declared}", ""] if declared else []),
          f"## {report.HEADLINE}", "", headline, "",
          *([f"## {report.TUNING}", "", tuning, ""] if tuning else []), *(line for g in analysed for line in g.summary),
          *(line for text, _ in sweeps for line in (text, "")),
          *([f"## {NOT_ANALYSED}", "", not_analysed, ""] if not_analysed else [])]
    summary = printable("\n".join(md))
    atomic_write(out_dir / "summary.md", summary.encode())
    document = report.render([g.section for g in analysed], NOT_ANALYSED, not_analysed, sweeps, headline=headline,
                             preregistration=declared, tuning=tuning)
    atomic_write(out_dir / "report.md", printable(document).encode())
    csv = pd.concat([g.csv for g in analysed]).to_csv(index=False, float_format="%.6g")
    atomic_write(out_dir / "summary.csv", printable(csv).encode())
    figures = [out_dir / name for g in analysed for name, _ in g.section.figures] + \
        [out_dir / name for _, files in sweeps for name, _ in files]
    return summary, [out_dir / "report.md", out_dir / "summary.md", out_dir / "summary.csv", *figures], analysed


def preregistration_line(logs: list[dict], study_file: Path | None) -> str | None:
    """Whether the study was declared (committed, unmodified) before its runs (its lr tuning's
    included) began; None when no run was started by study.py and no study file was given (a folder
    of one's own runs)."""
    records = [(log["run"].get("study"), log["run"].get("started", "")) for log in logs]
    if study_file is None and all(record is None for record, _ in records):
        return None
    return preregistration.verdict(records, preregistration.sha256_of(study_file) if study_file else None)


def writable_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / ".write-test", b"")
        (folder / ".write-test").unlink()
    except (OSError, WriteError) as err:
        raise AnalysisError(f"output folder {folder} is not writable: {getattr(err, 'strerror', None) or err}") from None
    return folder


def printable(text: str) -> str:
    """Text that encodes as UTF-8: a file name that is not valid UTF-8 reaches Python as lone
    surrogates, which are spelled out (\\udcff) instead of crashing the write."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def where_written(files: list[Path], ladder: bool) -> str:
    """The closing lines: the report first, then the summaries (a ladder: each rung's report), then the
    figures."""
    drawn = ", ".join(dict.fromkeys(p.name for p in files if p.suffix == ".png"))
    figures = f"figures: {drawn or 'none (--no_figures)'}"
    if ladder:
        rungs = [str(p) for p in files[1:] if p.name == "report.md"]
        return f"report: {files[0]}\nthe rungs' reports: {', '.join(rungs)}\n{figures}"
    return f"report: {files[0]}\nsummary: {files[1]} and {files[2].name}\n{figures}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *_a, **_k: print(f"warning: {message}", file=sys.stderr)
            study = load_study(args.study) if args.study else None
            summary, written, *_ = analyze_ladder(args, study) if study and study.ladder else analyze(args)
            print(summary)
            print(where_written(written, ladder=bool(study and study.ladder)))
    except (AnalysisError, WriteError, StudyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
