"""A study's runs forked from the warm server (training/launch.py): the same run a new process
would train, its own signals and streams, a server that outlives a SIGTERM to its process group, and
a new process wherever the server's code or environment is no longer the caller's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from training import launch
from conftest import assert_same_run, read_log
from test_lifecycle import paths, wait_for, log_step

TRAIN = [sys.executable, launch.TRAIN_SCRIPT]


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_forked_run_trains_what_a_new_process_trains(tiny_argv, tmp_path):
    forked = launch.start([*TRAIN, *tiny_argv(tmp_path / "forked")])
    assert isinstance(forked, launch.WarmRun) and forked.wait() == 0
    assert subprocess.run([*TRAIN, *tiny_argv(tmp_path / "new")], capture_output=True).returncode == 0
    assert_same_run(tmp_path / "new", tmp_path / "forked")
    assert read_log(paths(tmp_path / "forked")[0])["run"]["command"][1:] == tiny_argv(tmp_path / "forked")


def test_a_forked_runs_error_reaches_its_callers_pipe_with_its_exit_status(tiny_argv, tmp_path):
    # the search reads a failed trial's last line of stderr, the study its exit status
    bad = [arg if arg != "relu" else "no_such_activation" for arg in tiny_argv(tmp_path)]
    run = launch.start([*TRAIN, *bad], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert isinstance(run, launch.WarmRun)
    assert "no_such_activation" in run.stderr.read() and run.wait() == 2


def test_a_sigterm_sent_as_a_forked_run_starts_stops_it(tiny_argv, tmp_path):
    # the server blocks SIGTERM: a run must unblock it, and get one that came while it was starting
    run = launch.start([*TRAIN, *tiny_argv(tmp_path / "out", "--num_epochs", "30")], stderr=subprocess.DEVNULL)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) in (143, -signal.SIGTERM)
    log_path = paths(tmp_path / "out")[0]
    assert not log_path.exists() or read_log(log_path)["status"] == "interrupted"


def test_the_server_outlives_a_sigterm_to_its_group_and_its_runs_report_their_own_exit(tiny_argv, tmp_path):
    # a scheduler's SIGTERM reaches every process of the job: the runs checkpoint, and the study must
    # learn their real exit statuses, which only the server can tell it
    log_path, checkpoint = paths(tmp_path / "out")
    run = launch.start([*TRAIN, *tiny_argv(tmp_path / "out", "--num_epochs", "30")], stderr=subprocess.DEVNULL)
    wait_for(lambda: log_step(log_path) >= 2)
    server = parent_pid(run.pid)
    os.kill(server, signal.SIGTERM)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 143
    assert read_log(log_path)["status"] == "interrupted" and checkpoint.exists()
    os.kill(server, 0)  # still there for the next run


def test_a_run_whose_environment_changed_since_the_server_started_starts_as_a_new_process(monkeypatch):
    assert launch.SERVER.serves_current_code()  # the server runs, with the environment as it is now
    monkeypatch.setenv("ACTIVATION_STUDY_UNSEEN", "1")  # an import-time setting the server never saw
    run = launch.start([*TRAIN, "--help"], stdout=subprocess.DEVNULL)
    assert isinstance(run, subprocess.Popen) and run.wait() == 0


def test_the_code_stamp_follows_every_python_file_and_nothing_else(tmp_path):
    (tmp_path / "pkg" / "deep").mkdir(parents=True)
    (tmp_path / "results").mkdir()
    before = launch.code_stamp(tmp_path)
    (tmp_path / "results" / "helper.py").write_text("x = 1\n")  # results and notes are not code
    (tmp_path / "notes.md").write_text("a note\n")
    assert launch.code_stamp(tmp_path) == before
    (tmp_path / "pkg" / "deep" / "layer.py").write_text("x = 1\n")
    changed = launch.code_stamp(tmp_path)
    assert changed != before
    (tmp_path / "pkg" / "deep" / "layer.py").write_text("x = 22\n")
    assert launch.code_stamp(tmp_path) != changed
