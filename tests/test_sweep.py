"""A tiny learning-rate sweep end to end: train_simple.py with several lrs, then the analysis's
best-lr table, paired tests at the best lrs, lr_sweep.png and training_compute.png."""

from __future__ import annotations

import json
import statistics

import pytest

import analyze_results
import train_simple
from transformer_from_scratch.catalog import variant_name


@pytest.fixture
def sweep(tiny_argv, tmp_path):
    argv = tiny_argv(None, "--lr", "3e-3", "3e-4", "--seeds", "1", "2", "--evals_per_epoch", "2", "--match_params")
    at = argv.index("--activation")
    argv[at + 1 : at + 2] = ["relu", "swiglu"]
    assert train_simple.main(argv) == 0
    return tmp_path / "out"


def test_every_activation_lr_and_seed_is_one_run_with_curves(sweep):
    logs = {p.stem: json.loads(p.read_text()) for p in sweep.glob("*.json")}
    assert sorted(logs) == sorted(f"{a}_lr{lr}_seed{s}" for a in ("relu", "swiglu_matched") for lr in ("0.003", "0.0003")
                                  for s in (1, 2))
    for log in logs.values():
        assert len(log["evals"]) == 2  # evals_per_epoch 2: one within each of the 2 epochs, besides the epoch ends
        assert all(e["train_flops"] > 0 and e["train_seconds"] > 0 for e in log["evals"] + log["epochs"])


def test_best_lr_table_and_figures_follow_the_logs(sweep):
    assert analyze_results.main(["--results_dir", str(sweep), "--baseline", "relu"]) == 0
    losses: dict[tuple[str, float], list[float]] = {}
    for path in sweep.glob("*.json"):
        log = json.loads(path.read_text())
        variant = variant_name(log["model_config"]["act_fn"], log["model_config"].get("match_params", False))
        losses.setdefault((variant, log["train_config"]["lr"]), []).append(log["final"]["val"]["loss"])
    summary = (sweep / "summary.md").read_text()
    section = summary.split("## Learning-rate sweep")[1]
    assert "favours every activation" in section
    for variant in ("relu", "swiglu (matched)"):
        means = {lr: statistics.mean(v) for (name, lr), v in losses.items() if name == variant}
        best = min(means, key=means.get)
        row = next(line for line in section.splitlines() if line.startswith(f"| {variant} |"))
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[1] == f"{best:g}" and cells[2].startswith(f"{means[best]:.4f} ±")
        assert cells[4:] == [f"{means[lr]:.4f}" for lr in sorted(means)]
    assert "swiglu (matched) (lr " in section.split("At each activation's own best lr")[1]  # the paired test
    assert "At the edge of the range tried: relu, swiglu (matched)." in section  # of two lrs, either is an edge
    for name in ("lr_sweep.png", "training_compute.png", "training_curves.png"):
        assert (sweep / name).stat().st_size > 10_000
    report = (sweep / "report.md").read_text()
    assert "## Learning-rate sweep" in report and "![lr_sweep.png](lr_sweep.png)" in report
    assert "![training_compute.png](training_compute.png)" in report
