"""analyze_results.py on synthetic logs with known values."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest

import analyze_results
from analysis import figures, findings, runs, tables, verdicts
from analysis.stats import holm, paired_t_test
from conftest import ROOT
from metrics import summarised_names
from run_log import SCHEMA_VERSION

VAL_LOSS = {  # activation -> seed -> final validation loss
    "relu": {1: 5.00, 2: 5.10, 3: 4.95},
    "gelu": {1: 4.90, 2: 5.02, 3: 4.80},
    "swiglu": {1: 4.70, 2: 4.75, 3: 4.72},
}


def synthetic_log(act: str, seed: int, val_loss: float, **train_overrides) -> dict:
    gated = act == "swiglu"
    epochs = [{"epoch": e, "partial": False, "steps": 10 * e, "train_loss": val_loss + 1.0 / e, "train_tokens": 1000,
               "val_loss": val_loss + 0.5 / e, "val_ppl": math.exp(val_loss + 0.5 / e), "val_bpb": (val_loss + 0.5 / e) / 3,
               "val_bpb_approx": (val_loss + 0.5 / e) / math.log(2) / 4, "val_bytes_per_token": 4.2, "wall_s": 10.0,
               "train_tokens_per_s": 100.0} for e in (1, 2)]
    epochs[-1].update(val_loss=val_loss, val_ppl=math.exp(val_loss), val_bpb=val_loss / 3,
                      val_bpb_approx=val_loss / math.log(2) / 4)
    final_val = {"loss": val_loss, "ppl": math.exp(val_loss), "bpb": val_loss / 3,
                 "bpb_approx": val_loss / math.log(2) / 4, "bytes_per_token": 4.2, "tokens": 900, "bytes": 3800}
    return {
        "schema_version": SCHEMA_VERSION, "status": "complete", "run": {"name": f"{act}_{seed}"},
        "model_config": {"d_vocab": 100, "n_ctx": 16, "d_model": 32, "n_heads": 2, "d_mlp": 64, "n_layers": 2,
                         "act_fn": act, "preset": "seed", "match_params": gated, "attn_impl": "einsum",
                         "layer_norm_eps": 1e-5, "d_head": 16, "d_hidden": 40 if gated else 64},
        "train_config": {"activation": act, "seed": seed, "num_epochs": 2, "max_steps": None, "batch_size": 8,
                         "lr": 3e-4, "layout": "lines", **train_overrides},
        "params": {"total": 10_000, "non_embedding": 4_000, "mlp": 4_200 if not gated else 4_100},
        "data": {"tokenizer": "t", "train": {"split": "test", "sha256": "a", "layout": "lines", "max_length": 16,
                                             "sequences": 80, "tokens": 1000, "bytes": 4200},
                 "val": {"split": "validation", "sha256": "b", "layout": "lines", "max_length": 16, "tokens": 900,
                         "bytes": 3800}, "test": None},
        "steps": [{"step": s, "epoch": 1 + (s > 10), "loss": val_loss + 2.0 / s, "grad_norm": 1.0 + 1.0 / s,
                   "lr": 3e-4, "tokens_per_s": 100.0} for s in range(1, 21)],
        "progress": {"step": 20, "epoch": 3, "batch_in_epoch": 0}, "evals": [],
        "epochs": epochs,
        "dynamics": [{"epoch": e, "partial": False, "layer_grad_norms": {},
                      "mlp": [{"layer": layer, "dead_fraction": 0.01 * seed, "active_fraction": 0.4 + 0.01 * layer,
                               "pre_mean": 0.0, "pre_std": 1.0,
                               "pre_quantiles": {f"p{q:02d}": (q - 50) / 25 for q in (1, 5, 25, 50, 75, 95, 99)}}
                              for layer in range(2)],
                      "attention": [{"layer": layer, "heads": [
                          {"head": h, "entropy": 1.5 - 0.1 * e - 0.2 * h + 0.05 * seed, "max_entropy": 2.0,
                           "prev_token": 0.2 + 0.1 * h, "first_token": 0.1} for h in range(2)]} for layer in range(2)]}
                     for e in (1, 2)],
        "samples": [{"epoch": e, "partial": False, "step": 10 * e, "prompts": [
            {"prompt": f" Prompt {i} about |pipes| .", "greedy": f" {act} greedy {i}", "sampled": f" {act} sampled {i}"}
            for i in range(3)]} for e in (1, 2)],
        "final": {"step": 20, "val": final_val},
    }


def tables_only(argv: list[str]) -> int:
    """The analysis without its figures, for the tests of what the tables and reports say: drawing the
    figures is most of an analysis's time, and the tests named for them draw them."""
    return analyze_results.main([*argv, "--no_figures"])


@pytest.fixture
def results(tmp_path):
    for act, seeds in VAL_LOSS.items():
        for seed, loss in seeds.items():
            (tmp_path / f"{act}_seed{seed}.json").write_text(json.dumps(synthetic_log(act, seed, loss)))
    (tmp_path / "broken.json").write_text("{ not json")
    running = synthetic_log("relu", 9, 1.0)
    running["status"] = "running"
    (tmp_path / "running.json").write_text(json.dumps(running))
    return tmp_path


def test_tables_statistics_and_figures(results, capsys):
    assert analyze_results.main(["--results_dir", str(results)]) == 0
    err = capsys.readouterr().err
    assert "broken.json" in err  # skipped with a warning, not a crash
    table = __import__("pandas").read_csv(results / "summary.csv")
    assert list(table["variant"]) == ["swiglu (matched)", "gelu", "relu"]  # best first
    relu = table.set_index("variant").loc["relu"]
    assert relu["val_loss_mean"] == pytest.approx(sum(VAL_LOSS["relu"].values()) / 3)
    sd = math.sqrt(sum((v - 5.0166667) ** 2 for v in VAL_LOSS["relu"].values()) / 2)
    assert relu["val_loss_std"] == pytest.approx(sd, rel=1e-4)
    assert relu["val_loss_ci95"] == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-4)
    best = sum(VAL_LOSS["swiglu"].values()) / 3
    assert relu["val_loss_vs_best_pct"] == pytest.approx((relu["val_loss_mean"] - best) / best * 100, rel=1e-4)
    gelu = table.set_index("variant").loc["gelu"]
    expected = paired_t_test([VAL_LOSS["gelu"][s] for s in (1, 2, 3)], [VAL_LOSS["relu"][s] for s in (1, 2, 3)])
    assert gelu["val_loss_diff_vs_relu"] == pytest.approx(expected.mean_diff, rel=1e-5)
    assert gelu["p"] == pytest.approx(expected.p, rel=1e-4)
    swiglu = paired_t_test([VAL_LOSS["swiglu"][s] for s in (1, 2, 3)], [VAL_LOSS["relu"][s] for s in (1, 2, 3)])
    # Holm over the verdicts' family: both tests (difference, equivalence) of the two default comparisons,
    # the two equivalence tests not in this table counting as p = 1
    assert gelu["p_holm"] == pytest.approx(holm([expected.p, swiglu.p, 1.0, 1.0])[0], rel=1e-4)
    summary = (results / "summary.md").read_text()
    assert "swiglu (matched)" in summary and "Holm" in summary
    for name in ("training_curves.png", "training_dynamics.png"):
        image = mpimg.imread(results / name)
        assert image.shape[0] > 400 and image.shape[1] > 800
        assert image[..., :3].std() > 0.05  # not blank


def test_undeclared_comparisons_are_called_the_default_not_declared(results, tmp_path_factory):
    assert tables_only(["--results_dir", str(results)]) == 0
    summary = (results / "summary.md").read_text()
    assert ("the 2 comparison(s) of each arm against the baseline arm relu: the default, as no comparison was "
            "declared") in summary and "declared comparison(s)" not in summary
    folder = tmp_path_factory.mktemp("declared")
    (folder / "study.toml").write_text('name = "s"\nbaseline = "relu"\nseeds = [1, 2, 3]\nlrs = [3e-4]\n'
                                         'metric = "val_loss"\ncomparisons = [["gelu", "relu"]]\n[[arms]]\nactivation = "relu"\n'
                                         '[[arms]]\nactivation = "gelu"\n')
    for log in results.glob("*_seed*.json"):
        if not log.name.startswith("swiglu"):
            (folder / log.name).write_text(log.read_text())
    assert tables_only(["--study", str(folder / "study.toml")]) == 0
    assert "the 1 declared comparison(s)" in (folder / "summary.md").read_text()


def test_the_docs_list_exactly_the_metrics_the_analysis_takes():
    text = (ROOT / "docs" / "analysis.md").read_text()
    listed = text.split("`--metric` is one of", 1)[1].split("; `--point", 1)[0]
    assert tuple(re.findall(r"`((?:val|test)_[a-z_]+)`", listed)) == tuple(summarised_names())


def test_one_seed_says_no_significance(tmp_path):
    for act in ("relu", "gelu"):
        (tmp_path / f"{act}.json").write_text(json.dumps(synthetic_log(act, 1, VAL_LOSS[act][1])))
    assert tables_only(["--results_dir", str(tmp_path)]) == 0
    assert "no confidence interval or significance can be claimed" in (tmp_path / "summary.md").read_text()


def test_different_settings_are_never_pooled(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(synthetic_log("relu", 1, 4.0, lr=1e-3)))
    (tmp_path / "b.json").write_text(json.dumps(synthetic_log("relu", 2, 5.0, lr=3e-5)))
    (tmp_path / "c.json").write_text(json.dumps(synthetic_log("relu", 2, 5.0)))
    assert tables_only(["--results_dir", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    # Groups in lr order, not file order, and the first is named too, not called "the reference".
    headings = [line for line in summary.splitlines() if line.startswith("## Group")]
    assert headings == ["## Group 1: train.lr=3e-05", "## Group 2: train.lr=0.0003", "## Group 3: train.lr=0.001"]


def test_no_usable_logs_is_exit_2(tmp_path, capsys):
    (tmp_path / "x.json").write_text("[]")
    assert tables_only(["--results_dir", str(tmp_path)]) == 2
    assert "no usable logs" in capsys.readouterr().err


def test_strict_makes_a_bad_log_an_error(results, capsys):
    assert tables_only(["--results_dir", str(results), "--strict"]) == 2
    assert "error:" in capsys.readouterr().err


def test_output_is_reproducible(results, tmp_path):
    tables_only(["--results_dir", str(results)])
    first = (results / "summary.md").read_text(), (results / "summary.csv").read_text()
    tables_only(["--results_dir", str(results)])
    assert first == ((results / "summary.md").read_text(), (results / "summary.csv").read_text())


COMMITTED_ANALYSES = {  # results folder -> the flags its committed summary was made with
    "wikitext2_pilot/stage1_packed_cosine": ["--point", "best_selection"],
    "wikitext2_study": ["--study", str(ROOT / "results" / "wikitext2_study" / "study.toml")],  # as study.py runs it
}


def test_every_committed_summary_is_checked_below():
    listed = subprocess.run(["git", "ls-files", "results"], capture_output=True, text=True, cwd=ROOT)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: which summaries are committed is unknown")
    committed = {str(Path(name).parent.relative_to("results")) for name in listed.stdout.splitlines()
                 if name.endswith("/summary.md")}
    assert committed and committed <= set(COMMITTED_ANALYSES)


@pytest.mark.parametrize("study", sorted(COMMITTED_ANALYSES))
def test_committed_summary_is_regenerated_exactly(tmp_path, study):
    results = ROOT / "results" / study
    if not (results / "summary.md").exists():
        pytest.skip(f"no committed results in results/{study}")
    flags = COMMITTED_ANALYSES[study]
    assert analyze_results.main(["--results_dir", str(results), "--output_dir", str(tmp_path), *flags]) == 0
    for name in ("summary.md", "summary.csv", "report.md"):
        assert (tmp_path / name).read_text() == (results / name).read_text(), name


def test_the_committed_search_report_is_regenerated_exactly(tmp_path, capsys):
    """study.py --report_only on a copy of the committed search (its Optuna storage, SQLite, and trial
    logs): the report comes out byte for byte as committed."""
    import study

    search = ROOT / "results" / "wikitext2_search"
    shutil.copytree(search, tmp_path / "search")
    assert study.main([str(tmp_path / "search" / "search.toml"), "--report_only"]) == 0, capsys.readouterr().err[-2000:]
    assert (tmp_path / "search" / "report.md").read_text() == (search / "report.md").read_text()
    assert not (tmp_path / "search" / "search.journal").exists()  # a search begun on SQLite keeps it


def test_the_analysis_loads_no_part_of_the_runner():
    """analyze_results reads studies through study_file/ alone: neither the study runner nor search/
    (Optuna's worker) nor training/ (torch) is imported with it."""
    code = ("import sys, analyze_results; print(' '.join(m for m in sys.modules if m in ('study', 'torch', 'optuna') "
            "or m.split('.')[0] in ('search', 'training')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert loaded.stdout.split() == []


def test_failed_and_unfinished_runs_are_listed_not_dropped(results):
    failed = synthetic_log("gelu", 4, 5.0)
    failed.update(status="failed: non-finite loss or gradient norm at step 7", final=None)
    failed["progress"]["step"] = 7
    interrupted = synthetic_log("swiglu", 5, 5.0)
    interrupted.update(status="interrupted", final=None)
    interrupted["progress"]["step"] = 12
    (results / "gelu_seed4.json").write_text(json.dumps(failed))
    (results / "swiglu_seed5.json").write_text(json.dumps(interrupted))
    assert tables_only(["--results_dir", str(results)]) == 0
    summary = (results / "summary.md").read_text()
    unfinished = summary.split("## Failed and unfinished runs")[1]
    assert "| gelu | 4 | 7 | failed: non-finite loss or gradient norm at step 7 | gelu_seed4.json |" in unfinished
    assert "| swiglu (matched) | 5 | 12 | interrupted | swiglu_seed5.json |" in unfinished
    assert "| relu | 9 | 20 | running | running.json |" in unfinished
    table = __import__("pandas").read_csv(results / "summary.csv").set_index("variant")
    assert table.loc["gelu", "seeds"] == 3  # the failed seed is not pooled


def test_a_copied_log_is_one_run_not_another_seed(results, capsys):
    assert tables_only(["--results_dir", str(results)]) == 0
    before = __import__("pandas").read_csv(results / "summary.csv").set_index("variant").loc["relu"]
    (results / "relu_seed1_copy.json").write_text((results / "relu_seed1.json").read_text())
    capsys.readouterr()
    assert tables_only(["--results_dir", str(results)]) == 0
    assert "counted once" in capsys.readouterr().err
    after = __import__("pandas").read_csv(results / "summary.csv").set_index("variant").loc["relu"]
    assert after["seeds"] == 3 and after["val_loss_ci95"] == pytest.approx(before["val_loss_ci95"])


def test_a_complete_log_with_a_nan_loss_is_listed_with_why_never_analysed(results, capsys):
    log = json.loads((results / "gelu_seed2.json").read_text())
    log["final"]["val"]["loss"] = float("nan")  # a real NaN in the file, as json.dumps writes it
    (results / "gelu_seed2.json").write_text(json.dumps(log))
    assert tables_only(["--results_dir", str(results)]) == 0
    assert "gelu_seed2.json: marked complete, but its final selection loss is nan" in capsys.readouterr().err
    summary = (results / "summary.md").read_text()
    skipped = summary.split("## Failed and unfinished runs, skipped logs")[1]
    assert "| gelu_seed2.json | marked complete, but its final selection loss is nan: not analysed |" in skipped
    gelu_row = next(line for line in summary.splitlines() if line.startswith("| gelu |"))
    assert gelu_row.split("|")[2].strip() == "2"  # two seeds left, the NaN never averaged
    assert tables_only(["--results_dir", str(results), "--strict"]) == 2  # --strict: an error


def test_a_nan_metric_other_than_the_loss_is_reported_as_such_never_averaged(results):
    log = json.loads((results / "gelu_seed2.json").read_text())
    log["final"]["val"]["bpb"] = float("nan")
    (results / "gelu_seed2.json").write_text(json.dumps(log))
    assert tables_only(["--results_dir", str(results), "--metric", "val_bpb"]) == 0
    summary = (results / "summary.md").read_text()
    gelu_row = next(line for line in summary.splitlines() if line.startswith("| gelu |"))
    cells = [c.strip() for c in gelu_row.split("|")[1:-1]]
    assert cells[4] == "n/a" and cells[-1] == "n/a"
    table = __import__("pandas").read_csv(results / "summary.csv")
    assert list(table["variant"])[-1] == "gelu"  # ranked last, not first


def test_unwritable_output_folder_is_one_line_and_exit_2(results, capsys):
    assert tables_only(["--results_dir", str(results), "--output_dir", "/proc/version/out"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "not writable" in err[0]


def test_report_is_self_contained_and_filled_from_the_logs(results):
    assert analyze_results.main(["--results_dir", str(results)]) == 0
    text = (results / "report.md").read_text()
    for heading in ("## What was run", "## Results", "### Figures", "### Text samples", "### Model card",
                    "### Data card", "## Failed and unfinished runs", "## Compute"):
        assert heading in text, heading
    for name in ("training_curves.png", "training_dynamics.png", "attention.png"):
        assert f"![{name}]({name})" in text and (results / name).stat().st_size > 10_000
    assert "| relu | 9 | 20 | running | running.json |" in text  # the unfinished run is listed here too
    prompt_table = text.split("**Prompt 2**")[1].split("**Prompt 3**")[0]
    for act, variant in (("relu", "relu"), ("gelu", "gelu"), ("swiglu", "swiglu (matched)")):
        assert f"| {variant} | {act} greedy 1 | {act} sampled 1 |" in prompt_table  # side by side, last epoch
    assert "Prompt 1 about \\|pipes\\|" in text  # a | in the text cannot break the table
    assert "| swiglu (matched) | swiglu | 40 | 10,000 | 4,000 | 4,100 |" in text  # model card from params
    assert "| training | test |" in text and "`a…`" in text  # data card with the split's sha256
    # 9 complete runs x 2 epochs x 10 s of training, 1 thread: 0.05 hours
    assert "Training steps took 0.05 hours in all" in text


def test_analysis_runs_without_torch(results):
    # The analysis reads JSON: it must work where torch is not installed.
    # (sys.modules["torch"] = None would also trip scipy, which looks torch up in sys.modules.)
    code = "\n".join([
        "import importlib.abc, sys",
        "class NoTorch(importlib.abc.MetaPathFinder):",
        "    def find_spec(self, name, path, target=None):",
        "        if name.split('.')[0] == 'torch':",
        "            raise ImportError('torch is not installed here')",
        "sys.meta_path.insert(0, NoTorch())",
        "sys.path.insert(0, sys.argv[1])",
        "import analyze_results",
        "code = analyze_results.main(['--results_dir', sys.argv[2]])",
        "sys.exit(code if 'torch' not in sys.modules else 99)",
    ])
    result = subprocess.run([sys.executable, "-c", code, str(ROOT), str(results)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (results / "report.md").exists()


def row_cells(summary: str, variant: str, after: str) -> list[str]:
    """The cells of a variant's row in the first table after the line that starts with ``after``."""
    lines = summary.split("\n" + after, 1)[1].splitlines()
    row = next(line for line in lines if line.startswith(f"| {variant} |"))
    return [c.strip() for c in row.split("|")[1:-1]]


def test_curve_table_shows_crossings_and_overfitting(tmp_path):
    # Validation loss at epochs 0.5, 1 and 2. relu is best at epoch 1, then rises (overfits); gelu ends
    # best; silu crosses relu and crosses back, so comparing only the first and last evaluation misses it.
    curves = {"relu": (5.3, 5.0, 5.2), "gelu": (5.4, 5.1, 4.9), "silu": (5.35, 4.95, 5.25)}
    for act, (half, first, last) in curves.items():
        for seed in (1, 2):
            log = synthetic_log(act, seed, last)
            log["evals"] = [{"step": 5, "epoch": 1, "val_loss": half, "val_ppl": math.exp(half), "val_bpb": half / 3}]
            log["epochs"][0].update(val_loss=first + 0.01 * seed)
            (tmp_path / f"{act}_seed{seed}.json").write_text(json.dumps(log))
    assert tables_only(["--results_dir", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.md").read_text()
    relu, gelu, silu = (row_cells(summary, act, "The selection split's val_loss at every evaluation") for act in curves)
    assert relu[1:4] == ["5.3000 (1)", "5.0150 (2)", "5.2000 (2)"]
    assert gelu[1:4] == ["5.4000 (3)", "5.1150 (3)", "4.9000 (1)"]
    assert relu[4] == "10" and gelu[4] == "20"  # the step where the mean curve is lowest
    header = row_cells(summary, "variant", "The selection split's val_loss at every evaluation")
    assert header[1:4] == ["step 5", "step 10 (epoch 1)", "step 20 (epoch 2)"]  # by step, epochs where whole
    # the last evaluation minus each run's own lowest
    assert relu[5].startswith("0.1850 ± ") and gelu[5] == "0.0000 ± 0.0000"
    assert "3 of 3 pairs of activations change order at least once between evaluations (their mean curves " \
           "cross): gelu / relu, gelu / silu, relu / silu." in summary


def test_inside_table_reads_the_last_probe(results):
    assert tables_only(["--results_dir", str(results)]) == 0
    relu = row_cells((results / "summary.md").read_text(), "relu", "Inside the model")
    # synthetic_log, last epoch (2): dead 0.01 * seed, active 0.4 + 0.01 * layer, entropy of head h
    # (1.3 - 0.2 h + 0.05 seed) / 2 -> mean over heads and seeds 1-3: 0.65; previous token: 0.2 + 0.1 h, top 0.3
    assert relu[1:5] == ["0.400", "0.020", "0.650", "0.300"]
    assert relu[5:9] == ["0.410", "0.020", "0.650", "0.300"]


# One field each, removed or given the wrong type: what a damaged or hand-edited log looks like.
MUTATIONS = [
    ("status", "delete"), ("run", "wrong type"), ("model_config", "act_fn", "wrong type"),
    ("model_config", "n_layers", "delete"), ("model_config", "d_hidden", "wrong type"),
    ("train_config", "seed", "wrong type"), ("train_config", "lr", "delete"), ("train_config", "batch_size", "wrong type"),
    ("params", "mlp", "delete"), ("data", "train", "sequences", "wrong type"), ("data", "val", "bytes", "delete"),
    ("progress", "step", "wrong type"), ("steps", 0, "loss", "wrong type"), ("epochs", "delete"),
    ("epochs", 0, "wall_s", "wrong type"), ("dynamics", 0, "mlp", "wrong type"),
    ("dynamics", 1, "attention", 0, "heads", 1, "entropy", "delete"), ("samples", 1, "prompts", 0, "greedy", "wrong type"),
    ("final", "val", "loss", "wrong type"), ("final", "step", "delete"), ("run", "command", "wrong type"),
]


def mutated(log: dict, mutation: tuple) -> dict:
    *path, how = mutation
    parent = log
    for key in path[:-1]:
        parent = parent[key]
    if how == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = 7 if isinstance(parent.get(path[-1]) if isinstance(parent, dict) else parent[path[-1]], str) else "x"
    return log


def release_readers(fifo) -> None:
    """Open the FIFO for writing whenever someone reads it, so that a regression fails instead of hanging."""
    while fifo.exists():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO while nobody reads it
        except OSError:
            pass
        time.sleep(0.1)


def test_a_damaged_log_is_skipped_with_one_line_naming_its_field_and_listed_in_the_reports(results, capsys):
    names = []
    for i, mutation in enumerate(MUTATIONS):
        names.append(f"mutated_{i}.json")
        (results / names[-1]).write_text(json.dumps(mutated(synthetic_log("relu", 100 + i, 5.0), mutation)))
    os.mkfifo(results / "fifo.json")  # reading it blocks until a writer comes: see release_readers
    release = threading.Thread(target=release_readers, args=(results / "fifo.json",), daemon=True)
    release.start()
    undecodable = os.fsencode(results) + b"/running_\xff.json"  # a name that is not UTF-8
    with open(undecodable, "w") as f:
        json.dump({**synthetic_log("relu", 99, 5.0), "status": "interrupted", "final": None}, f)
    assert tables_only(["--results_dir", str(results)]) == 0
    warnings = capsys.readouterr().err.splitlines()
    for name, mutation in zip(names, MUTATIONS):
        [line] = [w for w in warnings if f"/{name}:" in w]
        field = str(mutation[-2])
        assert line.startswith("warning: skipping") and field in line, line
    assert any("fifo.json: not a regular file" in w for w in warnings)
    table = __import__("pandas").read_csv(results / "summary.csv").set_index("variant")
    assert table.loc["relu", "seeds"] == 3  # none of the damaged logs was pooled
    for document in ("summary.md", "report.md"):
        text = (results / document).read_text()
        assert text.count("Failed and unfinished runs") == 1
        section = text.split("Failed and unfinished runs")[1]
        assert all(name in section for name in [*names, "fifo.json", "broken.json", "running_\\udcff.json"]), document
    assert "every log in this folder was read" not in (results / "report.md").read_text()


NGRAMS = {"unigram": {"val": {"loss": 6.0, "bpb": 2.0}, "add_k": 0.3},
             "bigram_kn": {"val": {"loss": 4.85, "bpb": 1.6}}, "trigram_kn": {"val": {"loss": 4.9, "bpb": 1.7}}}


def test_ngrams_lead_the_report_and_a_study_that_does_not_beat_them_is_warned(results):
    for path in results.glob("*_seed*.json"):
        log = json.loads(path.read_text())
        log["data"]["ngrams"] = NGRAMS
        path.write_text(json.dumps(log))
    assert tables_only(["--results_dir", str(results)]) == 0
    report_md = (results / "report.md").read_text()
    first = report_md.split("## First: do the transformers beat the n-gram models?")[1].split("## What was run")[0]
    assert "bigram_kn 4.8500" in first and "Warning" not in first  # swiglu (4.72) beats the bigram (4.85)
    assert "- swiglu (matched): 4.7233, beats it by 0.1267" in first
    assert "- relu: 5.0167, does **not** beat it (+0.1667)" in first
    for path in results.glob("swiglu_seed*.json"):
        path.unlink()
    assert tables_only(["--results_dir", str(results)]) == 0
    assert "Warning: no arm beats the bigram_kn model" in (results / "summary.md").read_text()


def test_ngrams_kept_beside_older_logs_are_matched_by_data_identity(results):
    identity = {"tokenizer_sha256": None, "train": {"sha256": "a", "layout": "lines", "max_length": 16},
                "val": {"sha256": "b", "layout": "lines", "max_length": 16}, "test": None}
    (results / "ngrams.json").write_text(json.dumps([{"identity": {**identity, "val": None}, "ngrams": {}},
                                                        {"identity": identity, "ngrams": NGRAMS}]))
    assert tables_only(["--results_dir", str(results)]) == 0
    summary = (results / "summary.md").read_text()
    assert "bigram_kn 4.8500" in summary and "ngrams.json" not in summary  # read as ngrams, not as a log


def test_every_declared_comparison_gets_a_verdict_and_the_design_its_power(results):
    assert tables_only(["--results_dir", str(results), "--margin", "0.05"]) == 0
    summary = (results / "summary.md").read_text()
    verdicts = summary.split("**Verdicts**")[1]
    assert ("Holm-adjusted together over the 4 tests of the 2 comparison(s) of each arm against the baseline arm "
            "relu: the default" in verdicts and "±0.05" in verdicts)
    assert "| gelu vs relu | 3 |" in verdicts and "| swiglu (matched) vs relu | 3 |" in verdicts
    assert "**Power**: with 3 seeds" in verdicts
    assert summary.index("**Verdicts**") < summary.index("### Exploratory") or "### Exploratory" not in summary


def test_colours_are_the_activations_and_matched_keeps_its_own():
    one, other = figures.variant_colors(["relu", "swiglu (matched)"]), figures.variant_colors(["relu"])
    assert one["relu"] == other["relu"] and one["swiglu (matched)"] != one["relu"]


def test_bands_are_95_percent_confidence_intervals_and_one_seed_has_none():
    series = [pd.Series({1: v}) for v in (1.0, 2.0, 3.0)]
    _, mean, half = figures.mean_band(series)
    assert mean[0] == 2.0 and half[0] == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert figures.mean_band(series[:1])[2][0] == 0.0


def test_attention_heads_are_ranked_within_each_run_never_matched_by_index(results):
    run = runs.load_run(results / "relu_seed1.json")
    for d in run.log["dynamics"]:  # head 0 of this seed is the diffuse one, head 1 the focused one
        d["attention"][0]["heads"][0]["entropy"], d["attention"][0]["heads"][1]["entropy"] = 1.9, 0.4
    assert figures.attention_entropy(run, 0, 0).tolist() == [0.4, 0.4]
    assert figures.attention_entropy(run, 0, 1).tolist() == [1.9, 1.9]


def test_machine_seconds_are_drawn_only_for_one_machine_alone(results):
    loaded = [runs.load_run(p) for p in sorted(results.glob("relu_seed*.json"))]
    assert not runs.one_machine_alone(loaded)  # logs that do not say how they ran
    for run in loaded:
        run.log["run"].update(cpu="AMD EPYC", device="cpu", threads=2, cpu_count=2)
    assert runs.one_machine_alone(loaded)
    loaded[0].log["run"]["threads"] = 1  # two single-thread runs side by side share the machine
    assert not runs.one_machine_alone(loaded)


def test_the_table_shows_machine_time_only_where_every_run_had_the_machine_alone(results):
    def table_header() -> list[str]:
        assert tables_only(["--results_dir", str(results)]) == 0
        return row_cells((results / "summary.md").read_text(), "variant", "**Power**")
    for path in results.glob("*_seed*.json"):  # side by side: one thread each on a two-core machine
        log = json.loads(path.read_text())
        log["run"].update(cpu="AMD EPYC", device="cpu", threads=1, cpu_count=2)
        path.write_text(json.dumps(log))
    assert "tokens/s" not in table_header() and tables.MACHINE_TIME_OMITTED in (results / "summary.md").read_text()
    for path in results.glob("*_seed*.json"):
        log = json.loads(path.read_text())
        log["run"]["threads"] = 2
        path.write_text(json.dumps(log))
    assert {"train s", "tokens/s"} <= set(table_header())
    assert tables.MACHINE_TIME_OMITTED not in (results / "summary.md").read_text()


def with_report_split(log: dict, preset: str) -> dict:
    """A synthetic log with a report split (validation half B) and the given preset name."""
    log["data"]["val"]["split"], log["model_config"]["preset"] = "validation:A", preset
    log["data"]["test"] = {**log["data"]["val"], "split": "validation:B"}
    log["final"]["test"] = {**log["final"]["val"], "loss": log["final"]["val"]["loss"] + 0.1}
    for entry in log["epochs"]:
        entry.update(test_loss=entry["val_loss"] + 0.1, test_ppl=math.exp(entry["val_loss"] + 0.1),
                     test_bpb=(entry["val_loss"] + 0.1) / 3)
    return log


def test_every_output_names_the_selection_and_report_splits_and_the_preset_by_its_new_name(tmp_path):
    for act in ("relu", "gelu"):
        for seed in (1, 2, 3):
            log = with_report_split(synthetic_log(act, seed, VAL_LOSS[act][seed]), "seed" if seed < 3 else "reference")
            (tmp_path / f"{act}_seed{seed}.json").write_text(json.dumps(log))
    assert tables_only(["--results_dir", str(tmp_path)]) == 0
    summary, report = (tmp_path / "summary.md").read_text(), (tmp_path / "report.md").read_text()
    assert "6 runs in 1 group(s)" in summary  # the old name "seed" and "reference" are one architecture
    assert "selection split `validation:A`" in summary and "report split `validation:B`" in summary
    header = row_cells(summary, "variant", "**Power**")
    assert {"selection loss", "report loss", "report bits/byte"} <= set(header)
    assert not {"val loss", "test loss"} & set(header)
    assert "preset `reference`" in report and "preset seed" not in summary + report
    assert "| selection | validation:A |" in report and "| report | validation:B |" in report  # the data card


def test_a_tiny_model_is_called_by_its_size_never_the_reference(tmp_path):
    tiny = {"d_model": 64, "n_heads": 2, "n_layers": 2, "d_mlp": 256}
    for act in ("relu", "gelu"):
        log = synthetic_log(act, 1, VAL_LOSS[act][1])
        log["model_config"].update(tiny, preset="reference")
        (tmp_path / f"{act}.json").write_text(json.dumps(log))
    assert tables_only(["--results_dir", str(tmp_path)]) == 0
    summary, report = (tmp_path / "summary.md").read_text(), (tmp_path / "report.md").read_text()
    named = "size tiny (d_model 64, 2 heads, 2 layers, d_mlp 256)"
    assert named in summary and f"**Size**: {named} (d_mlp before parameter matching)" in report
    assert named in runs.fixed_settings([runs.load_run(tmp_path / "relu.json")])  # the figures' titles
    assert "preset reference" not in summary + report and "size reference" not in summary + report
    other = {**tiny, "d_mlp": 200}
    assert runs.model_text({**other, "preset": "gpt2"}) == "d_model 64, 2 heads, 2 layers, d_mlp 200, preset gpt2"


def test_figure_words_say_one_seed_and_name_heads_by_focus():
    one, three = {"relu": [object()]}, {"relu": [object()] * 3, "gelu": [object()] * 3}
    assert figures.seeds_phrase(one, "band") == "one seed: no band"
    assert figures.seeds_phrase(three, "error bar") == "mean over 3 seeds; error bar: 95% CI over seeds"
    assert [figures.head_title(r, 4) for r in (None, 0, 1, 2, 3)] == [
        "mean over heads", "most focused head", "2nd most focused head", "3rd most focused head", "least focused head"]


def test_the_curves_figure_draws_the_report_split_and_leaves_no_panel_empty(tmp_path):
    paths = []
    for act in ("relu", "gelu"):
        log = with_report_split(synthetic_log(act, 1, VAL_LOSS[act][1]), "reference")
        log["evals"] = [{"step": 5, "epoch": 1, **{f"{role}_{k}": 5.5 for role in ("val", "test") for k in ("loss", "ppl", "bpb")}}]
        paths.append(tmp_path / f"{act}.json")
        paths[-1].write_text(json.dumps(log))
    group = [runs.load_run(p) for p in paths]
    assert figures.curve_panels(group, "relu") == [("loss", "val_loss", "val"), ("loss", "test_loss", "test"),
                                                   ("paired", "test_loss", "test")]
    fig = figures.curves_figure(group, {"trigram_kn": {"val": {"loss": 4.0}, "test": {"loss": 4.1}}}, "relu")
    axes = fig.axes
    assert len(axes) == 4 and all(ax.lines for ax in axes)  # no empty panel
    titles = [ax.get_title() for ax in axes]
    assert any("report split validation:B" in t and "primary metric" in t for t in titles)
    labels = [t.get_text() for ax in axes for t in ax.texts]
    assert labels == ["trigram_kn (selection)", "trigram_kn (report)"]  # each n-gram's line names its split
    assert "one seed: no band" in fig.get_suptitle()


def test_the_metric_panels_are_the_reference_studys_four_per_split_with_ngrams_off_the_curves(tmp_path):
    paths = []
    for act, level in (("relu", 5.5), ("gelu", 5.0)):
        log = with_report_split(synthetic_log(act, 1, VAL_LOSS[act][1]), "reference")
        log["evals"] = [{"step": step, "epoch": 1, **{f"{role}_{k}": level + value / step
                                                      for role in ("val", "test")
                                                      for k, value in (("loss", 1.0), ("ppl", 100.0), ("bpb", 0.3))}}
                        for step in (5, 10)]
        paths.append(tmp_path / f"{act}.json")
        paths[-1].write_text(json.dumps(log))
    group = [runs.load_run(p) for p in paths]
    scores = {"loss": 4.0, "bpb": 1.5}
    fig = figures.metric_panels_figure(group, {"kn4_modified": {"val": scores, "test": scores},
                                               "unigram": {"val": {"loss": 9.0, "bpb": 3.0},
                                                           "test": {"loss": 9.0, "bpb": 3.0}}})
    drawn = [ax for ax in fig.axes if ax.axison]
    titles = [ax.get_title() for ax in drawn]
    assert titles[0] == "training loss (nats/token)"
    for role, split in (("selection", "validation:A"), ("report", "validation:B")):
        for metric in ("loss (nats/token)", "perplexity", "bits per byte"):
            assert f"{metric} on the {role} split {split}" in titles
    assert len(drawn) == 7 and all(len(ax.lines) >= 2 for ax in drawn)  # both activations in every panel
    loss_panel = drawn[titles.index("loss (nats/token) on the selection split validation:A")]
    low, high = loss_panel.get_ylim()
    assert low < 4.0 < high < 9.0  # the 4-gram below the curves is shown; the unigram far above is not
    ngram_lines = [line.get_ydata()[0] for line in loss_panel.lines if line.get_linestyle() == ":"]
    assert ngram_lines == [4.0]
    labels = {t.get_text(): t.xyann for t in loss_panel.texts}
    assert labels.keys() == {"kn4_modified (selection)", "unigram (selection) 9, above"}
    assert all(x > 1.0 and y <= high for x, y in labels.values())  # in the right margin, never above the axes
    ppl_panel = drawn[titles.index("perplexity on the report split validation:B")]
    assert [line.get_ydata()[0] for line in ppl_panel.lines if line.get_linestyle() == ":"] == [
        pytest.approx(math.exp(4.0))]


def test_the_verdict_figure_draws_each_comparison_where_its_table_row_says(results):
    group = [runs.load_run(path) for path in sorted(results.glob("*_seed*.json"))]
    declared = [("gelu", "relu"), ("swiglu (matched)", "relu")]
    judgement = findings.judge_group(group, declared, "val_loss", "final", 0.02, 0.05)
    ax = figures.verdicts_figure(group, judgement).axes[0]
    rows = {label.get_text(): y for label, y in zip(ax.get_yticklabels(), ax.get_yticks())}
    assert list(rows) == ["swiglu (matched) − relu", "gelu − relu"]  # bottom to top: the first declared on top
    written = {round(t.xy[1]): t.get_text() for t in ax.texts}
    for v, bar in zip(judgement.verdicts, ax.containers):
        y = rows[f"{v.arm} − {v.against}"]
        assert (bar.lines[0].get_xdata()[0], bar.lines[0].get_ydata()[0]) == (v.difference, y) and v.difference < 0
        (low, _), (high, _) = bar.lines[2][0].get_segments()[0]
        assert (low, high) == pytest.approx((v.ci_low, v.ci_high)) and written[y] == v.verdict
    gelu_seeds = [line for line in ax.lines if list(line.get_ydata()) == [rows["gelu − relu"]] * 3][0]
    assert sorted(gelu_seeds.get_xdata()) == pytest.approx(sorted(VAL_LOSS["gelu"][s] - VAL_LOSS["relu"][s]
                                                                  for s in (1, 2, 3)))
    band = ax.patches[0]
    assert (band.get_x(), band.get_x() + band.get_width()) == pytest.approx((-0.02, 0.02))


def test_a_study_in_progress_lists_a_declared_comparison_without_runs_and_corrects_for_it(results):
    # silu has no runs yet: its comparison is a "not tested" row, and Holm still counts it (gelu vs
    # relu's p is twice what it is alone)
    study = results / "study.toml"
    declared = 'comparisons = [["gelu", "relu"], ["silu", "relu"]]' + "".join(
        f'\n[[arms]]\nactivation = "{act}"' for act in ("relu", "gelu", "silu"))
    study.write_text(f'name = "in progress"\nbaseline = "relu"\nseeds = [1, 2, 3]\nlrs = [1e-3]\nmetric = "val_loss"\n'
                     f'{declared}\n')
    assert tables_only(["--study", str(study)]) == 0
    report = (results / "report.md").read_text()
    assert "| silu vs relu | 0 | n/a | n/a | n/a | n/a | not tested |" in report
    assert "Holm-adjusted together over the 4 tests of the 2 declared comparison(s)" in report
    group = [runs.load_run(path) for path in sorted(results.glob("*_seed*.json"))]  # the report's one group
    [alone] = findings.judge_group(group, [("gelu", "relu")], "val_loss", "final", 0.02, 0.05).verdicts
    assert f"| gelu vs relu | 3 | {alone.difference:+.4f} |" in report
    raw = verdicts.seed_estimates(findings.judge_group(group, [("gelu", "relu")], "val_loss", "final", 0.02,
                                                       0.05).values, [("gelu", "relu")], 0.02, 0.05)["gelu", "relu"]
    corrected = holm([raw.p_difference, 1.0, raw.p_equivalence, 1.0])  # silu's two tests count as p = 1
    assert f"| {corrected[0]:.4f} | {corrected[2]:.4f} |" in report and corrected[0] > alone.p_difference


def test_a_group_description_reads_every_run_not_the_first(tmp_path):
    # a study that tuned each arm's lr and kept each run's best point: relu stopped early at step 12,
    # its best point at step 8; the description must not take relu's lr, steps or point for the group's
    paths = []
    for act, lr, trained, best in (("relu", 1e-3, 12, 8), ("gelu", 2e-3, 20, 20)):
        log = synthetic_log(act, 1, VAL_LOSS[act][1], lr=lr)
        log["progress"]["step"] = trained
        log["final"].update(step=best, kept="best")
        paths.append(tmp_path / f"{act}.json")
        paths[-1].write_text(json.dumps(log))
    group = [runs.load_run(p) for p in paths]
    described = runs.describe_group(group)
    assert "lr per arm: gelu 0.002, relu 0.001" in described and "12-20 steps" in described
    assert "best selection point" in described
    assert runs.fixed_settings(group).startswith("lr per arm: gelu 0.002, relu 0.001,")
    log = json.loads(paths[1].read_text())
    log["final"]["kept"] = "last"
    paths[1].write_text(json.dumps(log))
    assert "best selection point" not in runs.describe_group([runs.load_run(p) for p in paths])


def test_without_a_study_no_comparison_is_implied_against_a_baseline_that_has_no_runs(tmp_path):
    for act in ("gelu", "swiglu"):
        for seed, loss in VAL_LOSS[act].items():
            (tmp_path / f"{act}_seed{seed}.json").write_text(json.dumps(synthetic_log(act, seed, loss)))
    assert tables_only(["--results_dir", str(tmp_path)]) == 0  # the baseline is relu by default
    report = (tmp_path / "report.md").read_text()
    assert "No comparison to judge" in report and "vs relu" not in report


def test_no_verdict_figure_is_drawn_where_no_comparison_was_tested(tmp_path):
    for act in ("relu", "gelu"):  # one seed each: nothing to test
        (tmp_path / f"{act}_seed1.json").write_text(json.dumps(synthetic_log(act, 1, VAL_LOSS[act][1])))
    assert analyze_results.main(["--results_dir", str(tmp_path)]) == 0
    assert not (tmp_path / "verdicts.png").exists() and "verdicts.png" not in (tmp_path / "report.md").read_text()


def test_runs_of_different_precision_are_compared_only_when_asked(tmp_path):
    for seed, bf16 in ((1, False), (2, False), (3, True)):
        (tmp_path / f"relu_{seed}.json").write_text(json.dumps(synthetic_log("relu", seed, 5.0, bf16=bf16)))
    assert tables_only(["--results_dir", str(tmp_path)]) == 0
    headings = [line for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("## Group")]
    assert headings == ["## Group 1: train.bf16=False", "## Group 2: train.bf16=True"]
    assert tables_only(["--results_dir", str(tmp_path), "--pool_precisions"]) == 0
    assert "3 runs in 1 group(s)" in (tmp_path / "summary.md").read_text()


def test_the_per_pair_view_reads_the_point_the_verdicts_read(results):
    # The first epoch is each run's best on selection: relu at 1.0, gelu at 1.5, whatever their ends.
    for path in results.glob("*_seed*.json"):
        log = json.loads(path.read_text())
        log["epochs"][0]["val_loss"] = {"relu": 1.0, "gelu": 1.5}.get(log["model_config"]["act_fn"], 2.0)
        path.write_text(json.dumps(log))
    argv = ["--results_dir", str(results), "--metric", "val_loss", "--point", "best_selection"]
    assert tables_only(argv) == 0
    table = __import__("pandas").read_csv(results / "summary.csv").set_index("variant")
    assert table.loc["gelu", "val_loss_diff_vs_relu"] == pytest.approx(0.5)
    assert "(val_loss at the best_selection point, variant minus baseline" in (results / "summary.md").read_text()


def test_a_folder_is_read_as_its_logs_and_the_output_ends_with_where_everything_went(results, tmp_path, capsys):
    assert analyze_results.main([str(results)]) == 0  # a folder, as sample.py takes one
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3] == f"report: {results / 'report.md'}"  # the report first
    assert lines[-2] == f"summary: {results / 'summary.md'} and summary.csv"
    assert lines[-1].startswith("figures: verdicts.png, training_curves.png, metric_panels.png, training_dynamics.png")
    assert all((results / name.strip()).exists() for name in lines[-1].removeprefix("figures: ").split(","))
    assert "runs in 1 group" in (results / "summary.md").read_text()


def test_without_figures_none_is_drawn_or_linked_and_the_output_says_so(results, capsys):
    assert analyze_results.main([str(results), "--no_figures"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "figures: none (--no_figures)"
    assert not list(results.glob("*.png")) and "![" not in (results / "report.md").read_text()
    assert "## Group 1" in (results / "summary.md").read_text()  # the tables, as with figures


def test_the_report_says_which_runs_ran_where_and_whose_code_change_was_not_kept(results):
    from analysis import report

    loaded = [runs.load_run(p) for p in sorted(results.glob("*_seed[123].json"))]
    for run in loaded:
        run.log["run"].update(cpu="AMD EPYC", cpu_class=f"family 25, model {1 if run.seed < 3 else 17}, stepping 1",
                              cpu_flags=["avx2"], device="cpu", threads=1, git_dirty=run.seed == 1)
    text = report.what_was_run(loaded)
    where = next(line for line in text.splitlines() if line.startswith("- **Which runs ran where**"))
    assert "AMD EPYC (family 25, model 1, stepping 1; avx2)" in where and "gelu seeds 1, 2" in where
    assert "model 17" in where and "relu seed 3" in where
    assert "3 runs from a tree whose uncommitted change was not stored" in text and "swiglu (matched) seed 1" in text
