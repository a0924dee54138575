"""reproduce.sh end to end in a tiny configuration: trains, resumes, analyses."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import analyze_results
from conftest import ROOT, read_log, without_timings


def run_reproduce(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "reproduce.sh"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env={**os.environ, "PYTHON": sys.executable})


def test_help_documents_the_options():
    result = run_reproduce(["--help"])
    assert result.returncode == 0
    for option in ("--data_dir", "--tokenizer", "--train_split", "--val_split", "--epochs", "--seeds", "--max_steps"):
        assert option in result.stdout


def test_unknown_option_is_exit_2():
    result = run_reproduce(["--bogus"])
    assert result.returncode == 2 and "unknown option" in result.stderr


def test_list_goes_seed_by_seed_so_a_stopped_study_stays_balanced():
    listed = run_reproduce(["--seeds", "1 2", "--ungated", "relu gelu", "--gated", "swiglu", "--lrs", "1e-3 3e-4", "--list"])
    assert listed.returncode == 0
    runs = [line.split("--run_name ")[1].split()[0] for line in listed.stdout.splitlines()]
    assert runs == [f"{act}_lr{lr}_seed{seed}" for seed in (1, 2) for lr in ("0.001", "0.0003")
                    for act in ("relu", "gelu", "swiglu_matched")]


def tiny_study(tmp_path, corpus_dir, tiny_tokenizer_dir) -> list[str]:
    extra = (f"--d_model 32 --d_mlp 48 --n_heads 2 --n_layers 1 --max_length 16 --test_split none "
             f"--tokenizer {tiny_tokenizer_dir} --cache_dir {tmp_path / 'cache'} --log_every 1 --probe_sequences 4")
    return ["--train_split", str(corpus_dir / "train.txt"), "--val_split", str(corpus_dir / "valid.txt"),
            "--max_steps", "2", "--seeds", "1 2", "--ungated", "relu", "--gated", "swiglu",
            "--output_dir", str(tmp_path / "results"), "--jobs", "2", "--extra", extra]


@pytest.mark.slow
def test_a_failed_run_does_not_stop_the_others_and_a_rerun_trains_only_what_is_missing(tmp_path, corpus_dir,
                                                                                       tiny_tokenizer_dir):
    args = tiny_study(tmp_path, corpus_dir, tiny_tokenizer_dir)
    results = tmp_path / "results"
    results.mkdir()
    (results / "relu_seed1.json").write_text("{ half a log")  # this run is refused: exit 2
    first = run_reproduce(args)
    assert first.returncode == 1
    failed = first.stderr[first.stderr.index("training command(s) failed"):]
    assert "1 training command(s) failed" in first.stderr and "--activation relu --lr 3e-4 --seeds 1 " in failed
    assert "[refused, see its error above: a rerun is refused again until that is fixed]" in failed
    others = ("relu_seed2", "swiglu_matched_seed1", "swiglu_matched_seed2")
    for name in others:  # the others still trained
        assert read_log(results / f"{name}.json")["status"] == "complete"
    assert "relu" in (results / "summary.md").read_text()  # and were analysed
    trained = {name: (results / f"{name}.json").read_text() for name in others}

    (results / "relu_seed1.json").unlink()  # the cause fixed: the rerun trains that run, and only it
    again = run_reproduce(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all((results / f"{name}.json").read_text() == text for name, text in trained.items())
    assert sum(line.startswith("skip ") for line in again.stderr.splitlines()) == 3
    assert read_log(results / "relu_seed1.json")["status"] == "complete"
    summary = (results / "summary.md").read_text()
    assert "swiglu (matched)" in summary and "4 runs" in summary
    assert (results / "training_curves.png").stat().st_size > 10_000
    assert analyze_results.main(["--results_dir", str(results)]) == 0  # the analysis, run again, is the same
    assert (results / "summary.md").read_text() == summary


@pytest.mark.slow
def test_list_runs_under_xargs_and_trains_what_jobs_trains(tmp_path, corpus_dir, tiny_tokenizer_dir):
    args = tiny_study(tmp_path, corpus_dir, tiny_tokenizer_dir)
    args[args.index("--seeds") + 1] = "1"
    args += ["--gated", "", "--lrs", "3e-3 3e-4", "--evals_per_epoch", "2"]  # one arm, two lrs: a sweep
    by_list, by_jobs = tmp_path / "by_list", tmp_path / "by_jobs"
    listed = run_reproduce([*args, "--output_dir", str(by_list), "--list"])
    assert listed.returncode == 0 and listed.stderr == ""
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and all("train_simple.py --activation" in line for line in lines)
    assert all("--threads 1" in line and "--resume" in line for line in lines)
    ran = subprocess.run(["xargs", "-d", "\\n", "-P", "2", "-n", "1", "bash", "-c", 'eval "$1"', "_"],
                         input=listed.stdout, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    jobs = run_reproduce([*args, "--output_dir", str(by_jobs)])
    assert jobs.returncode == 0, jobs.stderr[-2000:]
    names = sorted(p.name for p in by_list.glob("*.json"))
    assert names == sorted(p.name for p in by_jobs.glob("*.json")) == ["relu_lr0.0003_seed1.json", "relu_lr0.003_seed1.json"]
    for name in names:
        assert without_timings(read_log(by_list / name)) == without_timings(read_log(by_jobs / name))
    assert "## Learning-rate sweep" in (by_jobs / "summary.md").read_text()


@pytest.mark.slow
def test_a_diverged_run_is_listed_as_one_a_rerun_does_not_retry(tmp_path, corpus_dir, tiny_tokenizer_dir):
    args = tiny_study(tmp_path, corpus_dir, tiny_tokenizer_dir)
    args[args.index("--seeds") + 1] = "1"
    args += ["--gated", "", "--lrs", "1e30"]  # the first step's update overflows every weight
    result = run_reproduce(args)
    assert result.returncode == 1
    report = result.stderr[result.stderr.index("training command(s) failed"):].splitlines()[1:]
    assert len(report) == 1 and all(line.startswith("  [diverged (non-finite loss): a rerun keeps it failed")
                                    for line in report)


def test_listed_commands_work_from_any_folder_with_paths_as_the_caller_meant(tmp_path, corpus_dir,
                                                                             tiny_tokenizer_dir):
    caller = tmp_path / "caller"
    caller.mkdir()
    args = tiny_study(tmp_path, corpus_dir, tiny_tokenizer_dir)
    args[args.index("--output_dir") + 1] = "relative/out"  # relative to the caller's folder
    listed = subprocess.run(["bash", str(ROOT / "reproduce.sh"), *args, "--ungated", "", "--seeds", "1", "--list"],
                            capture_output=True, text=True, cwd=caller, env={**os.environ, "PYTHON": sys.executable})
    [command] = listed.stdout.splitlines()
    ran = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd="/", timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert read_log(caller / "relative" / "out" / "swiglu_matched_seed1.json")["status"] == "complete"


def test_extra_flags_are_not_glob_expanded():
    listed = run_reproduce(["--seeds", "1", "--ungated", "relu", "--gated", "", "--list", "--extra", "--run_name *"])
    [command] = listed.stdout.splitlines()
    assert command.endswith("--run_name \\* ") and "README.md" not in command
