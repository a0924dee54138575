"""report.md: one self-contained document a reader opens first, composed from the run logs and the
tables and figures analyze_results.py has already made (no torch, no training code).

Sections: what was run (settings, data, commit, machine), results (tables with CIs, paired tests),
failed runs, figures (each with a sentence on how to read it), text samples side by side, a model
card and a data card filled from the logs, and the compute spent.
"""

from __future__ import annotations

import datetime
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from analysis.runs import SPLIT_ROLES
from run_log import recorded
from transformer_from_scratch.catalog import describe_model_size

HEADLINE = "First: do the transformers beat the n-gram models?"  # the section every report opens with
TUNING = "Learning rate per arm, tuned on the selection split"
WIKITEXT_LICENCE = "CC BY-SA 3.0 (WikiText-2, Merity et al. 2016, arXiv:1609.07843)"
# The code's own licence is MIT (LICENSE); the data and the tokenizer keep theirs, named in the data card.


@dataclass
class Section:
    """One group of runs with the same settings, as analyze_results.py rendered it."""

    title: str
    description: str
    runs: list  # analysis.runs.Run: .log, .variant, .seed, .path
    tables: str  # the results table and the paired tests, in markdown
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name, how to read it)


def fmt(value: float | None, digits: int = 4, missing: str = "n/a") -> str:
    """A number as every table shows it, ``digits`` decimals; ``missing`` where there is none (None or
    NaN; a search report, and a table whose blanks are by design, say "-")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return f"{value:.{digits}f}"


def cell(text) -> str:
    """Text fit for one markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip() or " "


def table(header: list[str], rows: list[list], align: str = "") -> str:
    """A markdown table; ``align``: "l" or "r" per column (numbers read best right-aligned), left where unsaid."""
    rule = ["---:" if side == "r" else "---" for side in align.ljust(len(header), "l")]
    lines = ["| " + " | ".join(header) + " |", "|" + "".join(f"{r}|" for r in rule)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def first_per_variant(runs: list) -> dict[str, object]:
    """Each variant's run with the lowest seed, variants sorted by name."""
    chosen: dict[str, object] = {}
    for run in sorted(runs, key=lambda r: (r.variant, r.seed)):
        chosen.setdefault(run.variant, run)
    return chosen


def count(n: int, noun: str) -> str:
    """"1 run", "2 runs": the report reads as prose."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def machine_of(run: dict) -> str:
    """Where a run ran, as exactly as its log says (older logs name no CPU class)."""
    cpu = run.get("cpu") or run.get("platform", "unknown")
    cpu_class = run.get("cpu_class") or "class not recorded"
    flags = f"; {' '.join(run['cpu_flags'])}" if run.get("cpu_flags") else ""
    threads = count(run["threads"], "thread") if run.get("threads") else "threads unknown"
    return f"{cpu} ({cpu_class}{flags}), device {run.get('device', '?')}, {threads}"


def runs_by_arm(runs: list) -> str:
    """"relu seeds 1, 2; gelu seed 3": which runs, compactly."""
    seeds: dict[str, list[int]] = {}
    for r in sorted(runs, key=lambda r: (r.variant, r.seed)):
        seeds.setdefault(r.variant, []).append(r.seed)
    return "; ".join(f"{arm} seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}" for arm, s in seeds.items())


def code_state(runs: list) -> str:
    """Whether every run names its exact code: a clean tree, or a stored diff (its sha256 in the log)."""
    dirty = [r for r in runs if r.log["run"].get("git_dirty")]
    if not dirty:
        return "every run from a clean tree at its commit"
    stored = [r for r in dirty if r.log["run"].get("git_diff_sha256")]
    lost = [r for r in dirty if not r.log["run"].get("git_diff_sha256")]
    parts = [f"{count(len(stored), 'run')} from a tree with uncommitted changes stored beside its log "
             f"(`code-<sha12>.diff`)"] if stored else []
    if lost:
        parts.append(f"{count(len(lost), 'run')} from a tree whose uncommitted change was not stored (logs from "
                     f"before the change was kept; what it was cannot be recovered): {runs_by_arm(lost)}")
    return "; ".join(parts)


def what_was_run(runs: list) -> str:
    logs = [r.log for r in runs]
    commits = Counter((log["run"].get("git_commit") or "unknown")[:7] for log in logs)
    by_machine: dict[str, list] = {}
    for r in runs:
        by_machine.setdefault(machine_of(r.log["run"]), []).append(r)
    variants = sorted({r.variant for r in runs})
    seeds = sorted({r.seed for r in runs})
    commit_list = ", ".join(f"`{c}` ({count(n, 'run')})" for c, n in commits.most_common())
    machine_list = "; ".join(f"{m} ({count(len(rs), 'run')})" for m, rs in
                             sorted(by_machine.items(), key=lambda item: -len(item[1])))
    where = (["- **Which runs ran where**: " + " | ".join(f"{m}: {runs_by_arm(rs)}" for m, rs in by_machine.items())]
             if len(by_machine) > 1 else [])
    return "\n".join([
        f"- **Runs**: {count(len(runs), 'complete run')} of {count(len(variants), 'variant')} "
        f"({', '.join(variants)}), seeds {', '.join(map(str, seeds))}.",
        f"- **Code**: commit {commit_list}; {code_state(runs)}; torch "
        f"{', '.join(sorted({log['run'].get('torch', '?') for log in logs}))}.",
        f"- **Machine**: {machine_list}.", *where,
        f"- **Example command**: `{' '.join(logs[0]['run'].get('command', []))}`",
    ])


def samples_section(runs: list) -> str:
    """The last epoch's samples, each prompt with every variant's continuation side by side."""
    chosen = {v: r for v, r in first_per_variant(runs).items() if r.log.get("samples")}
    if not chosen:
        return "These logs hold no text samples (they were written before samples were recorded)."
    last = {v: r.log["samples"][-1] for v, r in chosen.items()}
    parts = [f"Greedy and sampled (temperature 0.8) continuations of {len(next(iter(last.values()))['prompts'])} "
             f"fixed validation prompts after the last epoch, from each variant's lowest-seed run. A model this "
             f"small on this little data writes fluent-looking fragments at best; compare repetition and word choice."]
    for i, prompt in enumerate(next(iter(last.values()))["prompts"]):
        rows = [[v, s["prompts"][i]["greedy"], s["prompts"][i]["sampled"]] for v, s in last.items()]
        parts += ["", f"**Prompt {i + 1}**: {cell(prompt['prompt'])}", "", table(["variant", "greedy", "sampled"], rows)]
    return "\n".join(parts)


def architecture_options(cfg: dict) -> str:
    """The options that set a model's ends, init and regularisation, in words (logs from before an
    option existed had its default)."""
    mlp_init, dropout = recorded(cfg, "mlp_init"), recorded(cfg, "dropout")
    small_data = [  # named only where set, so descriptions of runs without them read as they always did
        f"token embeddings scaled by {recorded(cfg, 'embed_scale'):.3g}" if recorded(cfg, "embed_scale") != 1.0 else "",
        "an output bias started at the log unigram" if recorded(cfg, "unembed_bias") == "log_unigram" else "",
        f"word-type dropout {recorded(cfg, 'word_type_dropout')}" if recorded(cfg, "word_type_dropout") else "",
        f"dropout {recorded(cfg, 'unembed_dropout')} before the unembedding" if recorded(cfg, "unembed_dropout") else "",
    ]
    return ", ".join([
        "tied embedding and unembedding" if recorded(cfg, "tie_embeddings") else "untied embedding and unembedding",
        "a final LayerNorm" if recorded(cfg, "final_ln") else "no final LayerNorm",
        f"MLP init {mlp_init}" + (" (W_out scaled to relu's output variance)" if mlp_init == "variance_matched" else ""),
        f"dropout {dropout}" if dropout else "no dropout", *filter(None, small_data),
    ])


PRESET_TEXT = {"reference": "the reference study's block design, at any size", "gpt2": "GPT-2's layout"}


def model_card(runs: list) -> str:
    log = runs[0].log
    cfg, train = log["model_config"], log["train_config"]
    positions = "learned" if cfg["preset"] == "gpt2" else "fixed sinusoidal"
    rows = [[v, r.log["model_config"]["act_fn"], r.log["model_config"]["d_hidden"], f"{r.log['params']['total']:,}",
             f"{r.log['params']['non_embedding']:,}", f"{r.log['params']['mlp']:,}"]
            for v, r in first_per_variant(runs).items()]
    return "\n".join([
        f"- **Size**: {describe_model_size(cfg)} (d_mlp before parameter matching), heads of {cfg['d_head']}, "
        f"context {cfg['n_ctx']} tokens, vocabulary {cfg['d_vocab']:,}.",
        f"- **Architecture**: decoder-only transformer, preset `{cfg['preset']}` ({PRESET_TEXT[cfg['preset']]}): "
        f"pre-LayerNorm blocks, {positions} positions, {architecture_options(cfg)}.",
        f"- **Training**: {train.get('optimizer', 'AdamW')}, lr {train['lr']} ({train.get('lr_schedule', 'constant')}), "
        f"weight decay {train.get('weight_decay')}, batch {train['batch_size']} sequences, gradient clip "
        f"{train.get('grad_clip')}, {log.get('progress', log['final'])['step']} steps (num_epochs {train['num_epochs']}, max_steps "
        f"{train['max_steps']})" + (f"; early stopping with patience {train['patience']} evaluations, keeping its "
                                    f"{train.get('keep', 'last')} weights" if train.get("patience") else "") + ".",
        "", table(["variant", "activation", "MLP width", "parameters", "non-embedding", "MLP"], rows), "",
        "- **Intended use**: comparing MLP activation functions under identical, paired conditions; teaching; a "
        "reference point for such comparisons.",
        "- **Out of scope**: any use as a language model (generation, downstream tasks, deployment). These models "
        "are tiny and trained on little text; they produce unreliable and possibly offensive text.",
        "- **Limitations**: one small dataset, a few seeds, one model size; a ranking here need not hold at scale or "
        "on other data. Differences smaller than the confidence intervals are not established.",
    ])


def licence(info: dict) -> str:
    wikitext = "wikitext" in info.get("source", "").lower() or Path(info.get("source", "")).name.startswith("wiki.")
    return WIKITEXT_LICENCE if wikitext else "unknown (user-supplied text)"


def tokenizer_licence(name: str) -> str:
    return "GPT-2 byte-level BPE, MIT licence (OpenAI)" if "gpt2" in str(name).lower() else "licence unknown"


def data_card(runs: list) -> str:
    data = runs[0].log["data"]
    def count(info: dict, key: str) -> str:
        return f"{info[key]:,}" if isinstance(info.get(key), int) else "?"

    def source(info: dict) -> str:
        where = info.get("source", "?")
        return where if where.startswith("hub:") else Path(where).name

    rows = [[SPLIT_ROLES[role], info.get("split", "?"), source(info), f"`{str(info.get('sha256', '?'))[:16]}…`", count(info, "rows"),
             count(info, "sequences"), count(info, "tokens"), count(info, "bytes"), licence(info)]
            for role, info in data.items() if role in ("train", "val", "test") and info]
    train = data["train"]
    return "\n".join([
        f"- **Tokenizer**: `{data.get('tokenizer', '?')}` (sha256 `{str(data.get('tokenizer_sha256', 'not recorded'))[:16]}`"
        f"{'…' if data.get('tokenizer_sha256') else ''}; {tokenizer_licence(data.get('tokenizer', ''))}); "
        f"layout `{train['layout']}`, sequences of at most "
        f"{train['max_length']} tokens. Scored tokens are next-token targets (padding excluded); bytes are their UTF-8 "
        f"bytes, the denominator of bits per byte.",
        "", table(["role", "split", "source", "sha256", "rows", "sequences", "scored tokens", "bytes", "licence"], rows),
    ])


def compute_spent(runs: list) -> str:
    training_s = sum(e["wall_s"] for r in runs for e in r.log["epochs"])
    device_hours = sum(e["wall_s"] * (r.log["run"].get("threads", 1) if r.log["run"].get("device", "cpu") == "cpu"
                                      else r.log["run"].get("world_size", 1)) for r in runs for e in r.log["epochs"]) / 3600
    spans = []
    for r in runs:
        try:
            start, end = (datetime.datetime.fromisoformat(r.log["run"][k]) for k in ("started", "ended"))
            spans.append((end - start).total_seconds())
        except (KeyError, TypeError, ValueError):
            continue
    kind = "GPU" if any(r.log["run"].get("device", "cpu").startswith("cuda") for r in runs) else "CPU core"
    return (f"Training steps took {training_s / 3600:.2f} hours in all, {device_hours:.2f} {kind}-hours "
            f"(time × threads or GPUs). From start to end, evaluations and any pauses between resumes included, "
            f"the runs took {sum(spans) / 3600:.2f} hours.")


def render(sections: list[Section], not_analysed_title: str, not_analysed: str | None,
           sweeps: list[tuple[str, list]] = (), headline: str = "", preregistration: str | None = None,
           tuning: str | None = None) -> str:
    """The whole report; ``not_analysed``: the body of the section on failed runs and skipped logs
    (None: there are none); ``sweeps``: (markdown starting with its own "## " heading, figures) per sweep;
    ``tuning``: the table of a study's lr tuning (None: it has none)."""
    everything = [r for s in sections for r in s.runs]
    md = ["# Activation study report", "",
          "How the MLP activation changes what this transformer learns, measured on the runs in this folder. "
          "Values are mean ± 95% confidence interval over seeds (t distribution); paired tests compare each "
          "activation with the baseline seed by seed, Holm-corrected.", "",
          *([f"**Pre-registration**: {preregistration}", ""] if preregistration else []),
          *([f"## {HEADLINE}", "", headline, ""] if headline else []),
          *([f"## {TUNING}", "", tuning, ""] if tuning else []),
          "## What was run", "", what_was_run(everything), ""]
    for sweep, figures in sweeps:  # a sweep reads as one document: its table first
        md += [sweep, ""]
        for name, how_to_read in figures:
            md += [f"![{name}]({name})", "", how_to_read, ""]
    for i, section in enumerate(sections):
        md += [f"## Results: {section.title}", "", section.description, "", section.tables, ""]
        if section.figures:
            md += ["### Figures", ""]
            for name, how_to_read in section.figures:
                md += [f"![{name}]({name})", "", how_to_read, ""]
        if i == 0 or not sweeps:  # a sweep's groups share their model and data: cards and samples once
            md += ["### Text samples", "", samples_section(section.runs), "",
                   "### Model card", "", model_card(section.runs), "",
                   "### Data card", "", data_card(section.runs), ""]
    md += [f"## {not_analysed_title}", "", not_analysed or "None: every log in this folder was read, and every run finished.", "",
           "## Compute", "", compute_spent(everything), ""]
    return "\n".join(md)
