"""A run's life in train_simple.py: the skip/resume/refuse decision, the lock, signals, write
failures, checkpoints that carry code, bad data, and reproducibility with the default threads."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import filelock
import pytest
import torch

import analyze_results
import run_log
from run_log import EXIT_HELD
import sample
import train_simple
from training import flags, settings
from training.evaluation import evaluate
from training.state import NLLSum
from transformer_from_scratch.catalog import SIZES
from conftest import ROOT, assert_same_run, read_log, run_cli, train_here, without_timings

RUN = "relu_seed3"


def paths(out: Path) -> tuple[Path, Path]:
    return out / f"{RUN}.json", out / "checkpoints" / f"{RUN}.pt"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error")]


def refused_here(capsys, argv: list[str]) -> tuple[int, list[str]]:
    """A run refused in this process (train_here): its exit code and its stderr's error lines."""
    code, err = train_here(capsys, argv)
    return code, error_lines(err)


def test_the_default_output_folder_holds_no_committed_logs():
    # The reference command writes results/relu_seed42.json: a committed log there would be skipped.
    assert not list((ROOT / "results").glob("*.json"))


def test_complete_runs_are_skipped_only_with_the_same_settings(tiny_argv, tmp_path, capsys):
    log_path, _ = paths(tmp_path / "out")
    assert train_simple.main(tiny_argv(None, "--max_steps", "2", "--keep_optimizer")) == 0
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


def test_a_complete_run_keeps_its_final_weights_only_unless_asked_to_keep_the_optimizer(tiny_argv, tmp_path, capsys):
    log_path, ckpt_path = paths(tmp_path / "out")
    weights_path = ckpt_path.with_suffix(".safetensors")
    assert train_simple.main(tiny_argv(None, "--max_steps", "3")) == 0
    assert weights_path.exists() and not ckpt_path.exists()
    model, _ = sample.load_run_model(log_path)  # the final weights reproduce the log's final numbers
    data = train_simple.load_data(settings.build_parser().parse_args(tiny_argv(None, "--max_steps", "3")))
    assert evaluate(model, data.val, data.byte_lengths, 8, torch.device("cpu")) == read_log(log_path)["final"]["val"]
    before = log_path.read_text()
    capsys.readouterr()
    assert train_simple.main(tiny_argv(None, "--max_steps", "5", "--resume")) == 2  # nothing to train further from
    [line] = error_lines(capsys.readouterr().err)
    assert "without its optimizer state" in line and "--keep_optimizer" in line and log_path.read_text() == before

    kept = tmp_path / "kept"
    assert train_simple.main(tiny_argv(kept, "--max_steps", "3", "--keep_optimizer")) == 0
    kept_ckpt = paths(kept)[1]
    assert kept_ckpt.stat().st_size > 2.5 * weights_path.stat().st_size  # weights + two AdamW moments
    assert train_simple.main(tiny_argv(kept, "--max_steps", "5", "--resume")) == 0
    assert read_log(paths(kept)[0])["progress"]["step"] == 5 and not kept_ckpt.exists()  # not kept this time

    weights = weights_path.read_bytes()
    log_path.unlink()  # final weights without their log are a result too: only --overwrite replaces them
    assert train_simple.main(tiny_argv(None, "--max_steps", "3")) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert str(weights_path) in line and "--overwrite" in line and weights_path.read_bytes() == weights


def test_logs_and_checkpoints_are_readable_by_others(tiny_argv, tmp_path):
    mask = os.umask(0o022)  # the usual umask, under which mkstemp's files alone would be 0600
    os.umask(mask)
    if mask & 0o044:
        pytest.skip(f"umask {mask:o} hides new files from others anyway")
    assert train_simple.main(tiny_argv(None, "--max_steps", "1", "--keep_optimizer")) == 0
    for path in (*paths(tmp_path / "out"), tmp_path / "out" / "checkpoints" / f"{RUN}.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask


SEED_SIZE = ("--d_model", "256", "--d_mlp", "1024", "--n_heads", "4", "--n_layers", "2")  # the study's model


def seed_size_argv(tiny_argv, out: Path, *extra: str) -> list[str]:
    argv = tiny_argv(out, *extra)
    for flag, value in zip(SEED_SIZE[::2], SEED_SIZE[1::2]):
        argv[argv.index(flag) + 1] = value
    return argv


def checkpoint_size(tiny_argv, tmp_path) -> int:
    assert train_simple.main(seed_size_argv(tiny_argv, tmp_path / "sizing", "--max_steps", "1", "--keep_optimizer")) == 0
    return paths(tmp_path / "sizing")[1].stat().st_size


def test_a_full_disk_stops_the_run_in_one_line_and_resume_continues_with_room(tiny_argv, tmp_path, tmpfs, capsys):
    size = checkpoint_size(tiny_argv, tmp_path)
    disk = tmpfs(int(1.5 * size) + 2_000_000)  # the first checkpoint and the logs fit, a second copy does not
    log_path, ckpt_path = paths(disk.folder)
    capsys.readouterr()
    assert train_simple.main(seed_size_argv(tiny_argv, disk.folder)) == 1
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {RUN}: could not write {ckpt_path}: No space left on device (needs ")
    assert f"needs {size / 1e6:.1f} MB," in line and " MB free)" in line
    log = read_log(log_path)
    assert log["status"] == f"failed: {line.split(': ', 2)[2]}"
    assert torch.load(ckpt_path, weights_only=True)["progress"]["step"] == 3  # the previous one, intact
    assert not list(disk.folder.rglob("*.tmp"))
    disk.resize(4 * size + 2_000_000)
    assert train_simple.main(seed_size_argv(tiny_argv, disk.folder, "--resume")) == 0
    log = read_log(log_path)
    assert log["status"] == "complete" and [r["at_step"] for r in log["run"]["resumed"]] == [3]


def test_a_folder_removed_under_a_run_stops_it_in_one_line(tiny_argv, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    log_path, ckpt_path = paths(out)
    real_save, calls = train_simple.save_checkpoint, []

    def remove_folder_before_the_second(*args):  # the fault is real: the OS answers ENOENT
        calls.append(1)
        if len(calls) == 2:
            shutil.rmtree(ckpt_path.parent)
        return real_save(*args)

    monkeypatch.setattr(train_simple, "save_checkpoint", remove_folder_before_the_second)
    assert train_simple.main(tiny_argv()) == 1
    [line] = error_lines(capsys.readouterr().err)
    assert line == f"error: {RUN}: could not write {ckpt_path}: No such file or directory"
    assert read_log(log_path)["status"] == f"failed: could not write {ckpt_path}: No such file or directory"


def test_a_run_that_failed_before_its_first_checkpoint_starts_again(tiny_argv, tmp_path, tmpfs, capsys):
    size = checkpoint_size(tiny_argv, tmp_path)
    disk = tmpfs(size // 2 + 2_000_000)  # the logs fit, no checkpoint does
    log_path, ckpt_path = paths(disk.folder)
    assert train_simple.main(seed_size_argv(tiny_argv, disk.folder)) == 1
    assert read_log(log_path)["status"].startswith("failed: could not write") and not ckpt_path.exists()
    err = capsys.readouterr().err
    assert "checkpoint" not in err.replace(str(ckpt_path), "")  # names no checkpoint that does not exist
    disk.resize(4 * size + 2_000_000)
    assert train_simple.main(seed_size_argv(tiny_argv, disk.folder)) == 2  # unfinished: only with --resume
    [line] = error_lines(capsys.readouterr().err)
    assert "--resume" in line and "--overwrite" in line
    assert train_simple.main(seed_size_argv(tiny_argv, disk.folder, "--resume")) == 0
    assert "starting again from step 0" in capsys.readouterr().err
    assert read_log(log_path)["status"] == "complete"


def test_a_non_finite_run_stays_failed_unless_overwritten(tiny_argv, tmp_path, monkeypatch, capsys):
    log_path, _ = paths(tmp_path / "out")
    real_forward = NLLSum.forward
    monkeypatch.setattr(NLLSum, "forward", lambda self, t, y: real_forward(self, t, y) * float("nan"))
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
    assert train_simple.main(tiny_argv(None, "--max_steps", "4", "--keep_optimizer")) == 0
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


def train_until_signalled(argv: list[str], log_path: Path, signum: int, at_step: int = 3) -> tuple[int, str]:
    """Train in a process of its own and send it `signum` once its log has `at_step`: its exit code and stderr."""
    proc = start_training(argv)
    wait_for(lambda: log_step(log_path) >= at_step)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


@pytest.mark.slow
def test_a_signal_checkpoints_and_resume_equals_an_uninterrupted_run(tiny_argv, tmp_path):
    """Ctrl-C, then SIGTERM once the run has resumed: each stop checkpoints the step it stopped after and
    exits with the shell's code for its signal, and the twice-resumed run ends as an uninterrupted one."""
    long_run = ("--num_epochs", "15")
    log_path, ckpt_path = paths(tmp_path / "stopped")
    stops: list[int] = []
    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        resume = ("--resume",) if stops else ()
        returncode, stderr = train_until_signalled(tiny_argv(tmp_path / "stopped", *long_run, *resume), log_path,
                                                   signum, at_step=stops[-1] + 3 if stops else 3)
        assert returncode == code, stderr[-2000:]
        log = read_log(log_path)
        assert log["status"] == "interrupted" and "Traceback" not in stderr
        stopped_at = torch.load(ckpt_path, weights_only=True)["progress"]["step"]
        assert stopped_at == log["progress"]["step"] >= (stops[-1] if stops else 0) + 3  # the checkpoint is of the
        # step it stopped after (a signal that lands between step 3's log and the next step stops the run at 3)
        stops.append(stopped_at)
    assert train_simple.main(tiny_argv(tmp_path / "stopped", *long_run, "--resume")) == 0
    assert [point["at_step"] for point in read_log(log_path)["run"]["resumed"]] == stops
    assert train_simple.main(tiny_argv(tmp_path / "whole", *long_run)) == 0
    assert_same_run(tmp_path / "whole", tmp_path / "stopped")


def caught_between_a_best_and_its_checkpoint(proc: subprocess.Popen, checkpoints: Path) -> bool:
    """Whether the run, stopped (SIGSTOP) now, has written a new best point's weights since its last
    checkpoint: two best files at once (a checkpoint keeps only the one it names). Left stopped if so."""
    if not (checkpoints / f"{RUN}.pt").exists() or len(list(checkpoints.glob(f"{RUN}.best-step*"))) < 2:
        return False
    proc.send_signal(signal.SIGSTOP)
    if (checkpoints / f"{RUN}.pt").exists() and len(list(checkpoints.glob(f"{RUN}.best-step*"))) >= 2:
        return True
    proc.send_signal(signal.SIGCONT)
    return False


@pytest.mark.slow
def test_a_run_killed_between_a_new_best_and_its_next_checkpoint_resumes_and_ends_as_if_never_killed(tiny_argv,
                                                                                                         tmp_path):
    """SIGKILL (nothing runs on the way out) after a new best point's weights are written and before
    the checkpoint that names them: the best point the checkpoint names is still there, so --resume
    replays from it and the run ends exactly as an uninterrupted one."""
    long_epochs = ("--keep", "best", "--batch_size", "1", "--evals_per_epoch", "10", "--checkpoint_every", "1000",
                   "--num_epochs", "3")
    checkpoints = tmp_path / "killed" / "checkpoints"
    proc = start_training(tiny_argv(tmp_path / "killed", *long_epochs))
    wait_for(lambda: proc.poll() is not None or caught_between_a_best_and_its_checkpoint(proc, checkpoints))
    assert proc.poll() is None, "the run ended before it was caught between a new best and its checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert read_log(tmp_path / "killed" / f"{RUN}.json")["status"] == "running"  # killed: nothing was said
    assert train_simple.main(tiny_argv(tmp_path / "killed", *long_epochs, "--resume")) == 0
    assert train_simple.main(tiny_argv(tmp_path / "whole", *long_epochs)) == 0
    assert_same_run(tmp_path / "whole", tmp_path / "killed")
    assert not list(checkpoints.glob(f"{RUN}.best*"))  # complete: its best point is its final weights now


@pytest.mark.slow
def test_an_interrupted_run_whose_checkpoint_is_gone_starts_again_and_says_why(tiny_argv, tmp_path, capsys):
    """A fresh clone holds a committed `interrupted` log but not its (ignored) checkpoint."""
    long_run = ("--num_epochs", "15")
    log_path, ckpt_path = paths(tmp_path)
    train_until_signalled(tiny_argv(tmp_path, *long_run), log_path, signal.SIGTERM)
    stopped_at = read_log(log_path)["progress"]["step"]
    ckpt_path.unlink()
    assert train_simple.main(tiny_argv(tmp_path, *long_run, "--resume")) == 0
    assert (f"starting again from step 0 (interrupted at step {stopped_at}, and no checkpoint {ckpt_path}"
            in capsys.readouterr().err)
    assert train_simple.main(tiny_argv(tmp_path / "whole", *long_run)) == 0
    assert_same_run(tmp_path / "whole", tmp_path)


@pytest.mark.slow
def test_one_writer_per_run_and_a_killed_writer_leaves_no_stale_lock(tiny_argv, tmp_path):
    argv = tiny_argv(None, "--num_epochs", "30")
    log_path, ckpt_path = paths(tmp_path / "out")
    first = start_training(argv)
    wait_for(lambda: ckpt_path.exists() and log_step(log_path) >= 3)
    second = run_cli([*argv, "--resume"])
    first.kill()  # SIGKILL: no handler runs, the OS drops the lock
    first.communicate(timeout=60)
    assert second.returncode == EXIT_HELD  # not bad input: the run is the other process's
    [line] = error_lines(second.stderr)
    assert RUN in line and str(ckpt_path.with_suffix(".lock")) in line
    assert train_simple.main([*argv, "--resume"]) == 0
    assert read_log(log_path)["status"] == "complete"


def test_a_held_lock_refuses_the_run_before_loading_data(tiny_argv, tmp_path, capsys):
    argv = tiny_argv(None, "--data_dir", "/nonexistent", "--train_split", "train")  # data would fail to load
    lock_path = tmp_path / "out" / "checkpoints" / f"{RUN}.lock"
    lock_path.parent.mkdir(parents=True)
    with filelock.FileLock(lock_path, timeout=0):  # another open file's lock: refused as another process's is
        code, [line] = refused_here(capsys, argv)
    assert code == EXIT_HELD
    assert "another process" in line and str(lock_path) in line


@pytest.mark.parametrize(
    "content, message",
    [
        (b"caf\xe9 au lait \n", "is not UTF-8"),
        (b"", "has no text"),
        (b" \n \n \n", "has no text"),
    ],
)
def test_bad_training_text_is_one_line_and_exit_2(tiny_argv, tmp_path, capsys, content, message):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    argv = tiny_argv()
    argv[argv.index("--train_split") + 1] = str(bad)
    code, [line] = refused_here(capsys, argv)
    assert code == 2 and message in line


def test_packed_split_shorter_than_one_block_is_one_line_and_exit_2(tiny_argv, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text(" A short line . \n", encoding="utf-8")
    argv = tiny_argv(None, "--layout", "packed")
    argv[argv.index("--val_split") + 1] = str(short)
    code, [line] = refused_here(capsys, argv)
    assert code == 2 and "fewer than one packed block" in line


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
    # Settings are the fields of training/flags.py's classes, so a new flag cannot be left out of the
    # log and let the analysis pool two runs that differ in it.
    assert train_simple.main(tiny_argv(None, "--max_steps", "1")) == 0
    log = read_log(paths(tmp_path / "out")[0])
    sections = {flags.TrainingSettings: "train_config", flags.ModelSettings: "model_config", flags.DataSettings: "data"}
    for group in (*flags.RESULT_SETTINGS, *flags.RUN_FLAGS):
        for field in dataclasses.fields(group):
            if field.name == "size":  # a name for four model flags, which model_config records
                assert all(key in log["model_config"] for key in SIZES[field.default])
            elif group in sections:
                assert field.name in log[sections[group]], field.name
            else:
                assert field.name in log["run"]["flags"], field.name
    parsed = {action.dest for action in settings.build_parser()._actions}
    declared = {field.name for group in (*flags.RESULT_SETTINGS, *flags.RUN_FLAGS) for field in dataclasses.fields(group)}
    assert parsed - declared == {"help", "activation", "seeds", "resume", "overwrite"}  # what says which runs, and how


# ---------------------------------------------------------------------------------------------
# A checkpoint is never deleted unasked: a lost or damaged log is rebuilt from it


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_lost_log_is_rebuilt_from_the_checkpoint_never_deleted(tiny_argv, tmp_path, capsys, damage):
    out = tmp_path / "out"
    log_path, ckpt_path = paths(out)
    assert train_simple.main(tiny_argv(out, "--max_steps", "4", "--keep_optimizer")) == 0
    if damage == "missing":
        log_path.unlink()
    else:
        log_path.write_text(log_path.read_text()[:500])
    checkpoint = ckpt_path.read_bytes()
    capsys.readouterr()
    for extra in ((), ("--overwrite", "--resume")):  # refused: nothing is touched
        assert train_simple.main(tiny_argv(out, "--max_steps", "6", *extra)) == 2
        assert ckpt_path.read_bytes() == checkpoint
    [line, _] = error_lines(capsys.readouterr().err)
    assert str(ckpt_path) in line and "--resume rebuilds the log" in line
    assert train_simple.main(tiny_argv(out, "--max_steps", "6", "--resume")) == 0
    assert [r["at_step"] for r in read_log(log_path)["run"]["resumed"]] == [4]  # from the checkpoint, not step 0
    assert train_simple.main(tiny_argv(tmp_path / "whole", "--max_steps", "6")) == 0
    assert_same_run(tmp_path / "whole", out)


# ---------------------------------------------------------------------------------------------
# --export_hf: the target is checked before any training, and the export after it


def export_argv(tiny_argv, target: Path, *extra: str) -> list[str]:
    argv = tiny_argv(None, "--preset", "gpt2", "--max_steps", "2", "--export_hf", str(target), *extra)
    argv[argv.index("--seeds") + 1 : argv.index("--seeds") + 2] = ["3", "4"]
    return argv


@pytest.mark.parametrize("target", ["a file", "a file where the run's folder goes", "a read-only disk"])
def test_an_unusable_export_target_is_refused_before_training(tiny_argv, tmp_path, tmpfs, capsys, target):
    if target == "a file":
        export = tmp_path / "hf"
        export.write_text("not a folder")
    elif target == "a file where the run's folder goes":
        export = tmp_path / "hf"
        export.mkdir()
        (export / "relu_seed4").write_text("not a folder")
    else:
        disk = tmpfs(1_000_000)
        disk.read_only()
        export = disk.folder / "hf"
    assert train_simple.main(export_argv(tiny_argv, export)) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert line.startswith("error: --export_hf") and str(export) in line
    assert not list((tmp_path / "out").glob("*.json"))  # nothing trained


def test_a_failed_export_is_one_line_leaves_no_half_folder_and_the_other_runs_train(tiny_argv, tmp_path, tmpfs,
                                                                                  capsys):
    disk = tmpfs(1_000_000)
    disk.fill(leave_bytes=64 * 1024)  # room for the small files, not for the weights
    export = disk.folder / "hf"
    assert train_simple.main(export_argv(tiny_argv, export)) == 1
    lines = error_lines(capsys.readouterr().err)
    assert [line.split(":")[1].strip() for line in lines] == ["relu_seed3", "relu_seed4"]
    assert all(f"could not write {export}/relu_seed" in line and "No space left" in line for line in lines)
    assert all(read_log(tmp_path / "out" / f"relu_seed{s}.json")["status"] == "complete" for s in (3, 4))
    assert list(export.iterdir()) == []  # no folder that looks like an export and is not one


# ---------------------------------------------------------------------------------------------
# Splits are the same when their contents are


def test_a_test_split_that_is_the_training_file_under_another_name_is_skipped(tiny_argv, tmp_path, corpus_dir,
                                                                           capsys):
    copy = tmp_path / "train_copy.txt"
    copy.write_bytes((corpus_dir / "train.txt").read_bytes())
    argv = tiny_argv(None, "--max_steps", "2")
    argv[argv.index("--test_split") + 1] = str(copy)
    assert train_simple.main(argv) == 0
    log = read_log(tmp_path / "out" / f"{RUN}.json")
    assert "test" not in log["final"] and log["data"]["test"] is None
    assert "same contents as the train split" in log["data"]["test_skipped"]
    assert "same contents as the train split" in capsys.readouterr().err
    assert analyze_results.main(["--results_dir", str(tmp_path / "out")]) == 0
    for document in ("summary.md", "report.md"):
        assert "(no report split: test split" in (tmp_path / "out" / document).read_text()


def test_a_validation_split_that_is_the_training_file_is_refused(tiny_argv, tmp_path, corpus_dir, capsys):
    argv = tiny_argv(None, "--max_steps", "2")
    argv[argv.index("--val_split") + 1] = str(corpus_dir / "train.txt")
    assert train_simple.main(argv) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "same contents as train split" in line and "nothing would be held out" in line


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, before any data is loaded


@pytest.mark.parametrize("flags, message", [
    (("--lr", "nan"), "--lr must be a finite number"),
    (("--lr", "inf"), "--lr must be a finite number"),
    (("--weight_decay", "nan"), "--weight_decay must be a finite number"),
    (("--grad_clip", "nan"), "--grad_clip must be a finite number"),
    (("--seeds", str(2**63)), "--seeds must be in 0..2^63-1"),
    (("--seeds", "-1"), "--seeds must be in 0..2^63-1"),
    (("--lr", "1e-3", "1.000001e-3"), "would both be named 'relu_lr0.001_seed3'"),
    (("--run_name", "../escaped"), "--run_name must be a plain file name"),
    (("--run_name", "sub/run"), "--run_name must be a plain file name"),
    (("--run_name", ".."), "--run_name must be a plain file name"),
])
def test_bad_settings_are_one_line_and_exit_2_before_any_data_is_loaded(tiny_argv, tmp_path, capsys, flags, message):
    argv = tiny_argv(None, "--data_dir", "/nonexistent", "--train_split", "train")  # data would fail to load
    for flag in flags[:1]:
        if flag in argv:
            del argv[argv.index(flag) : argv.index(flag) + 2]
    code, [line] = refused_here(capsys, [*argv, *flags])
    assert code == 2 and message in line
    assert not (tmp_path / "escaped.json").exists()


def test_a_train_split_with_no_scored_tokens_is_refused(tiny_argv, tmp_path, capsys):
    one_token = tmp_path / "one_token.txt"
    one_token.write_text("x", encoding="utf-8")  # a single token: no next-token target
    argv = tiny_argv()
    argv[argv.index("--train_split") + 1] = str(one_token)
    assert train_simple.main(argv) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "the train split" in line and "no scored tokens" in line
    assert not (tmp_path / "out" / f"{RUN}.json").exists()


# ---------------------------------------------------------------------------------------------
# Provenance


@pytest.mark.slow
def test_each_segment_records_its_commit_and_a_dirty_tree(tiny_argv, tmp_path, monkeypatch):
    repo = tmp_path / "repo"  # a copy of the code in a git repository of its own, so the test can dirty it
    repo.mkdir()
    for path in ROOT.glob("*.py"):
        shutil.copy(path, repo / path.name)
    for package in ("transformer_from_scratch", "training"):
        shutil.copytree(ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    first = git("rev-parse", "HEAD")

    def train(*extra: str) -> None:
        result = subprocess.run([sys.executable, str(repo / "train_simple.py"), *tiny_argv(None, *extra)],
                                capture_output=True, text=True, cwd=repo, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]

    train("--max_steps", "2", "--keep_optimizer")
    (repo / "metrics.py").write_text((repo / "metrics.py").read_text() + "\n# an uncommitted edit\n")
    train("--max_steps", "4", "--resume", "--keep_optimizer")
    git("commit", "-qam", "second")
    train("--max_steps", "6", "--resume")
    log = read_log(tmp_path / "out" / f"{RUN}.json")
    assert (log["run"]["git_commit"], log["run"]["git_dirty"]) == (first, False)
    assert [(r["git_commit"], r["git_dirty"]) for r in log["run"]["resumed"]] == [(first, True),
                                                                                 (git("rev-parse", "HEAD"), False)]


@pytest.mark.slow
def test_the_log_of_a_running_run_is_readable_and_current_and_status_lines_come_without_a_terminal(tiny_argv, tmp_path):
    log_path, ckpt_path = paths(tmp_path / "out")
    argv = tiny_argv(None, "--num_epochs", "30", "--checkpoint_every", "100000", "--status_every", "0")
    argv[argv.index("--batch_size") + 1] = "1"  # 30 steps to the first epoch end, its first checkpoint
    proc = start_training(argv)
    wait_for(lambda: log_step(log_path) >= 5)  # long before any checkpoint: the log follows the logged steps
    log = run_log.read_log(log_path)  # a complete, schema-valid log, not half of one
    assert log["status"] == "running" and log["steps"][-1]["step"] == log["progress"]["step"] >= 5
    assert not ckpt_path.exists()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    status = [line for line in stderr.splitlines() if line.startswith(f"{RUN}: step ")]
    assert len(status) >= 5 and "tokens/s" in status[0] and "TFLOP/s" in status[0]
    assert "/900 (epoch 1)" in status[0]  # steps to the run's real end: 30 epochs of 30


def test_without_a_terminal_each_evaluation_is_one_status_line_with_its_losses(tiny_argv, tmp_path, capsys):
    assert train_simple.main(tiny_argv(None, "--max_steps", "3", "--eval_every", "2")) == 0  # capsys: no terminal
    lines = [line for line in capsys.readouterr().err.splitlines() if ": evaluated " in line]
    assert [line.split(":")[:2] for line in lines] == [[RUN, " step 2"], [RUN, " step 3"]]  # within, and the end
    log = read_log(paths(tmp_path / "out")[0])
    assert "evaluated the whole splits in" in lines[0]
    assert f"loss on selection {log['data']['val']['split']} {log['evals'][0]['val_loss']:.4f}" in lines[0]


@pytest.mark.slow
def test_in_a_terminal_the_run_and_each_evaluation_have_a_progress_bar(tiny_argv, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()  # a real terminal, 120 columns: tqdm shows bars only there
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    argv = tiny_argv(None, "--max_steps", "2")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_simple.py"), *argv], cwd=ROOT, stdout=follower,
                            stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    assert proc.wait(timeout=120) == 0
    os.close(leader)
    text = shown.decode(errors="replace")
    assert f"{RUN}: 100%" in text and "2/2" in text  # the run's bar, to its real end (--max_steps)
    assert f"evaluating {argv[argv.index('--val_split') + 1]}:" in text  # each evaluation pass's own bar
    assert f"{RUN}: step " not in text  # status lines are for logs without a terminal


@pytest.mark.slow
def test_offline_without_local_files_is_one_line_naming_both_and_leaves_no_lock(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("WIKITEXT2_DIR", None), env.pop("GPT2_TOKENIZER", None)
    own = ["--activation", "relu", "swiglu", "--match_params", "--seeds", "1", "2", "--max_steps", "200",
           "--train_split=train", "--output_dir", str(tmp_path / "out")]
    result = subprocess.run([sys.executable, str(ROOT / "train_simple.py"), *own], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = error_lines(result.stderr)
    assert "cannot be reached" in line and "the tokenizer ('gpt2'" in line and "the data (splits" in line
    # the suggestion is the user's own command with the local files in: pasted, it runs what was asked
    suggested = line.split("with local files: ")[1]
    assert suggested == shlex.join(["python", "train_simple.py", *own[:-3], *own[-2:], "--data_dir",
                                    "../shared/data/wikitext-2-raw-v1", "--tokenizer", "../shared/data/gpt2-tokenizer",
                                    "--train_split", "test", "--val_split", "validation:A", "--test_split", "validation:B"])
    assert not (tmp_path / "out").exists()  # nothing left behind: no lock, no empty checkpoints folder


def test_the_preset_once_called_seed_is_accepted_by_its_old_name_in_flags_and_logs(tiny_argv, tmp_path, capsys):
    out = tmp_path / "out"
    assert train_simple.main(tiny_argv(out, "--max_steps", "2", "--preset", "seed")) == 0
    path = out / "relu_seed3.json"
    log = json.loads(path.read_text())
    assert log["model_config"]["preset"] == "reference"
    log["model_config"]["preset"] = "seed"  # as a log from before the rename says
    path.write_text(json.dumps(log))
    capsys.readouterr()
    assert train_simple.main(tiny_argv(out, "--max_steps", "2")) == 0  # the same run: skipped, not refused
    assert "is complete with these settings" in capsys.readouterr().err
    assert run_log.read_log(path)["model_config"]["preset"] == "reference"


def test_probes_and_samples_can_be_left_out_and_the_analysis_goes_without_them(tiny_argv, tmp_path):
    out = tmp_path / "out"
    assert train_simple.main(tiny_argv(out, "--max_steps", "3", "--no-probes", "--no-samples")) == 0
    log = json.loads((out / "relu_seed3.json").read_text())
    assert log["status"] == "complete" and log["dynamics"] == [] and log["samples"] == [] and log["epochs"]
    assert analyze_results.main([str(out)]) == 0
    assert (out / "training_curves.png").exists() and not (out / "training_dynamics.png").exists()
    assert "Inside the model" not in (out / "summary.md").read_text()
