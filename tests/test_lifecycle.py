"""A run's life in train_simple.py: the skip/resume/refuse decision, the lock, signals, write
failures, checkpoints that carry code, bad data, and reproducibility with the default threads."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import filelock
import pytest
import torch

import train_simple
from conftest import ROOT, assert_same_run, read_log, run_cli, without_timings

RUN = "relu_seed3"


def paths(out: Path) -> tuple[Path, Path]:
    return out / f"{RUN}.json", out / "checkpoints" / f"{RUN}.pt"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error")]


def test_the_default_output_folder_holds_no_committed_logs():
    # The reference command writes results/relu_seed42.json: a committed log there would be skipped.
    assert not list((ROOT / "results").glob("*.json"))


def test_complete_runs_are_skipped_only_with_the_same_settings(tiny_argv, tmp_path, capsys):
    log_path, _ = paths(tmp_path / "out")
    assert train_simple.main(tiny_argv(None, "--max_steps", "2")) == 0
    before = log_path.read_text()
    capsys.readouterr()

    assert train_simple.main(tiny_argv(None, "--max_steps", "2")) == 0
    assert "skip relu_seed3" in capsys.readouterr().err and log_path.read_text() == before

    assert train_simple.main(tiny_argv(None, "--max_steps", "2", "--d_mlp", "128", "--lr", "0.001")) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "d_mlp 64 (requested 128)" in line and "lr 0.0003 (requested 0.001)" in line
    assert "--output_dir" in line and "--run_name" in line and log_path.read_text() == before

    assert train_simple.main(tiny_argv(None, "--max_steps", "4")) == 2  # longer, but not asked to resume
    [line] = error_lines(capsys.readouterr().err)
    assert "max_steps 2 (requested 4)" in line and "--resume" in line and log_path.read_text() == before

    assert train_simple.main(tiny_argv(None, "--max_steps", "1", "--resume")) == 2  # shorter: another run
    assert "max_steps 2 (requested 1)" in capsys.readouterr().err

    assert train_simple.main(tiny_argv(None, "--max_steps", "4", "--resume")) == 0
    log = read_log(log_path)
    assert log["progress"]["step"] == 4 and [r["at_step"] for r in log["run"]["resumed"]] == [2]

    assert train_simple.main(tiny_argv(None, "--max_steps", "3", "--overwrite")) == 0
    log = read_log(log_path)
    assert log["progress"]["step"] == 3 and log["run"]["resumed"] == [] and log["status"] == "complete"


def test_logs_and_checkpoints_are_readable_by_others(tiny_argv, tmp_path):
    mask = os.umask(0o022)  # the usual umask, under which mkstemp's files alone would be 0600
    os.umask(mask)
    if mask & 0o044:
        pytest.skip(f"umask {mask:o} hides new files from others anyway")
    assert train_simple.main(tiny_argv(None, "--max_steps", "1")) == 0
    for path in paths(tmp_path / "out"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("fault", ["disk full", "folder removed"])
def test_a_failed_write_stops_the_run_in_one_line_and_loses_nothing(tiny_argv, tmp_path, monkeypatch, capsys, fault):
    out = tmp_path / "out"
    log_path, ckpt_path = paths(out)
    real_save, calls = torch.save, []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(f.name)
        if len([name for name in calls if f".{RUN}.pt." in name]) == 2:  # the second checkpoint fails
            if fault == "disk full":
                f.write(b"part of a checkpoint")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    assert train_simple.main(tiny_argv()) == 1
    [line] = error_lines(capsys.readouterr().err)
    reason = os.strerror(errno.ENOSPC if fault == "disk full" else errno.ENOENT)
    assert line == f"error: {RUN}: could not write {ckpt_path}: {reason}"
    log = read_log(log_path)
    assert log["status"] == f"failed: could not write {ckpt_path}: {reason}"
    assert torch.load(ckpt_path, weights_only=True)["progress"]["step"] == 3  # the previous one, intact
    assert not list(out.rglob("*.tmp"))


def test_a_run_that_failed_before_its_first_checkpoint_starts_again(tiny_argv, tmp_path, monkeypatch, capsys):
    log_path, ckpt_path = paths(tmp_path / "out")

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if f".{RUN}.pt." in f.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    assert train_simple.main(tiny_argv()) == 1
    monkeypatch.undo()
    assert read_log(log_path)["status"].startswith("failed: could not write") and not ckpt_path.exists()
    err = capsys.readouterr().err
    assert "checkpoint" not in err.replace(str(ckpt_path), "")  # names no checkpoint that does not exist

    assert train_simple.main(tiny_argv()) == 2  # unfinished: only with --resume
    [line] = error_lines(capsys.readouterr().err)
    assert "--resume" in line and "--overwrite" in line
    assert train_simple.main(tiny_argv(None, "--resume")) == 0
    assert "starting again from step 0" in capsys.readouterr().err
    assert read_log(log_path)["status"] == "complete"


def test_a_non_finite_run_stays_failed_unless_overwritten(tiny_argv, tmp_path, monkeypatch, capsys):
    log_path, _ = paths(tmp_path / "out")
    real_forward = train_simple.NLLSum.forward
    monkeypatch.setattr(train_simple.NLLSum, "forward", lambda self, t, y: real_forward(self, t, y) * float("nan"))
    assert train_simple.main(tiny_argv()) == 1
    monkeypatch.undo()
    before = log_path.read_text()
    for extra in ((), ("--resume",)):
        assert train_simple.main(tiny_argv(None, *extra)) == 1
        assert "non-finite" in capsys.readouterr().err and log_path.read_text() == before
    assert train_simple.main(tiny_argv(None, "--overwrite")) == 0
    assert read_log(log_path)["status"] == "complete"


def test_stale_temporary_files_of_a_killed_write_are_removed(tiny_argv, tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    stale = [out / f".{RUN}.json.x1.tmp", out / "checkpoints" / f".{RUN}.pt.x2.tmp"]
    for path in stale:
        path.write_bytes(b"left by kill -9")
    assert train_simple.main(tiny_argv(None, "--max_steps", "1")) == 0
    assert not any(path.exists() for path in stale)


class Evil:
    """Unpickling this runs a shell command: a checkpoint must never be able to do that."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_carrying_code_is_refused_and_nothing_runs(tiny_argv, tmp_path, capsys):
    log_path, ckpt_path = paths(tmp_path / "out")
    assert train_simple.main(tiny_argv(None, "--max_steps", "4")) == 0
    log = read_log(log_path)
    log["status"] = "interrupted"
    log_path.write_text(json.dumps(log))
    ckpt = torch.load(ckpt_path, weights_only=True)
    marker = tmp_path / "executed"
    ckpt["history"]["payload"] = Evil(marker)
    torch.save(ckpt, ckpt_path)
    assert train_simple.main(tiny_argv(None, "--max_steps", "4", "--resume")) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert f"refusing checkpoint {ckpt_path}" in line
    assert not marker.exists()


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition did not come true in time")
        time.sleep(0.05)


def log_step(log_path: Path) -> int:
    try:
        return read_log(log_path)["progress"]["step"]
    except (OSError, ValueError, KeyError):
        return -1


def start_training(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train_simple.py"), *argv], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_checkpoints_and_resume_equals_an_uninterrupted_run(tiny_argv, tmp_path, signum, code):
    long_run = ("--num_epochs", "30")
    log_path, ckpt_path = paths(tmp_path / "stopped")
    proc = start_training(tiny_argv(tmp_path / "stopped", *long_run))
    wait_for(lambda: log_step(log_path) >= 3)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    log = read_log(log_path)
    assert log["status"] == "interrupted" and "Traceback" not in stderr
    stopped_at = torch.load(ckpt_path, weights_only=True)["progress"]["step"]
    assert stopped_at == log["progress"]["step"] > 3  # the checkpoint is of the step it stopped after
    assert train_simple.main(tiny_argv(tmp_path / "stopped", *long_run, "--resume")) == 0
    assert train_simple.main(tiny_argv(tmp_path / "whole", *long_run)) == 0
    assert_same_run(tmp_path / "whole", tmp_path / "stopped")


@pytest.mark.slow
def test_one_writer_per_run_and_a_killed_writer_leaves_no_stale_lock(tiny_argv, tmp_path):
    argv = tiny_argv(None, "--num_epochs", "30")
    log_path, ckpt_path = paths(tmp_path / "out")
    first = start_training(argv)
    wait_for(lambda: ckpt_path.exists() and log_step(log_path) >= 3)
    second = run_cli([*argv, "--resume"])
    first.kill()  # SIGKILL: no handler runs, the OS drops the lock
    first.communicate(timeout=60)
    assert second.returncode == 2
    [line] = error_lines(second.stderr)
    assert RUN in line and str(ckpt_path.with_suffix(".lock")) in line
    assert train_simple.main([*argv, "--resume"]) == 0
    assert read_log(log_path)["status"] == "complete"


@pytest.mark.slow
def test_a_held_lock_refuses_the_run_before_loading_data(tiny_argv, tmp_path):
    argv = tiny_argv(None, "--data_dir", "/nonexistent", "--train_split", "train")  # data would fail to load
    lock_path = tmp_path / "out" / "checkpoints" / f"{RUN}.lock"
    lock_path.parent.mkdir(parents=True)
    with filelock.FileLock(lock_path, timeout=0):
        result = run_cli(argv)
    assert result.returncode == 2
    [line] = error_lines(result.stderr)
    assert "another process" in line and str(lock_path) in line


@pytest.mark.slow
@pytest.mark.parametrize(
    "content, message",
    [
        (b"caf\xe9 au lait \n", "is not UTF-8"),
        (b"", "has no text"),
        (b" \n \n \n", "has no text"),
    ],
)
def test_bad_training_text_is_one_line_and_exit_2(tiny_argv, tmp_path, content, message):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    argv = tiny_argv()
    argv[argv.index("--train_split") + 1] = str(bad)
    result = run_cli(argv)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert message in line


@pytest.mark.slow
def test_packed_split_shorter_than_one_block_is_one_line_and_exit_2(tiny_argv, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text(" A short line . \n", encoding="utf-8")
    argv = tiny_argv(None, "--layout", "packed")
    argv[argv.index("--val_split") + 1] = str(short)
    result = run_cli(argv)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert "fewer than one packed block" in line


@pytest.mark.slow
def test_negative_seed_is_one_line_and_exit_2(tiny_argv):
    argv = tiny_argv()
    argv[argv.index("--seeds") + 1] = "-1"
    result = run_cli(argv)
    assert result.returncode == 2 and error_lines(result.stderr) == ["error: --seeds must be non-negative, got -1"]


@pytest.mark.slow
def test_two_runs_with_the_default_threads_give_identical_logs(tiny_argv, tmp_path):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: PyTorch's default is one thread, which was always reproducible")
    # Large enough that the embedding gradient (batch x pos x d_model > 32k values) is summed by
    # several threads: indexing's backward (W_E[tokens]) made these logs differ from run to run.
    argv = tiny_argv()
    del argv[argv.index("--threads") : argv.index("--threads") + 2]  # PyTorch's default thread count
    sizes = {"--d_model": "64", "--max_length": "64", "--batch_size": "16"}
    for flag, value in sizes.items():
        argv[argv.index(flag) + 1] = value
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    logs = []
    for name in ("a", "b"):
        out = tmp_path / name
        out_argv = [*argv, "--layout", "packed", "--max_steps", "6", "--eval_every", "2"]
        out_argv[out_argv.index("--output_dir") + 1] = str(out)
        result = subprocess.run([sys.executable, str(ROOT / "train_simple.py"), *out_argv], capture_output=True,
                                text=True, cwd=ROOT, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        logs.append(read_log(out / f"{RUN}.json"))
    assert logs[0]["run"]["threads"] > 1
    assert without_timings(logs[0]) == without_timings(logs[1])


def test_every_flag_that_can_change_a_result_is_recorded_in_the_log(tiny_argv, tmp_path):
    # Settings are read off the parser's groups, so a new flag cannot be left out of the log and
    # let the analysis pool two runs that differ in it.
    assert train_simple.main(tiny_argv(None, "--max_steps", "1")) == 0
    log = read_log(paths(tmp_path / "out")[0])
    parser = train_simple.build_parser()
    sections = {train_simple.TRAINING: "train_config", train_simple.MODEL: "model_config", train_simple.DATA: "data"}
    for group in parser._action_groups:
        for action in group._group_actions:
            if group.title in sections:
                assert action.dest in log[sections[group.title]], action.dest
            elif action.dest not in ("help", "activation", "seeds", "resume", "overwrite"):
                assert action.dest in log["run"]["flags"], action.dest
