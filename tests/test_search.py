"""A search declared in a study file: its trials are train_simple.py runs pruned by Optuna, a killed
search resumes without repeating finished trials, two workers never run one trial twice, and a bad
[search] table is one line and exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib

import pytest

from conftest import CORPUS_LINES, ROOT, study_command
from study_file import load_study

SEARCH = """
name = "tiny search"
[[arms]]
activation = "relu"
[[arms]]
activation = "swiglu"
matched = true

[train]
d_model = 32
n_heads = 2
n_layers = 1
max_length = 16
batch_size = 4
num_epochs = 4
eval_every = 2
patience = 3
probe_sequences = 4
log_every = 1
train_split = "{corpus}/train.txt"
val_split = "{corpus}/valid.txt"
test_split = "{corpus}/report.txt"
tokenizer = "{tokenizer}"
cache_dir = "{cache}"

[search]
tuning_seed = 1000
trials = {trials}
pruner = "hyperband"
min_evaluations = 1
heartbeat_seconds = {heartbeat}
[search.space]
lr = {{low = 1e-3, high = 3e-2, log = true}}
mlp_ratio = {{low = 1.0, high = 4.0}}
tie_embeddings = [true, false]
"""


@pytest.fixture
def search_file(tmp_path, corpus_dir, tiny_tokenizer_dir):
    (corpus_dir / "report.txt").write_text("".join(CORPUS_LINES[2:] * 2), encoding="utf-8")

    def write(trials: int = 6, folder: str = "search", heartbeat: int = 10) -> object:
        """heartbeat: seconds between a worker's heartbeats; twice that without one marks its trial stale
        (long enough by default that a loaded machine never fails a live trial)."""
        path = tmp_path / folder / "search.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(SEARCH.format(corpus=corpus_dir, tokenizer=tiny_tokenizer_dir, cache=tmp_path / "cache",
                                      trials=trials, heartbeat=heartbeat))
        return path
    return write


@pytest.fixture
def run_study(study_here):
    """The search run to its end in this process (study_here)."""
    return study_here


def study_here(capsys, path, *extra: str) -> tuple[int, str]:
    """study.py in this process, for what trains nothing: its exit code and stderr."""
    import study

    code = study.main(["--allow_dirty", str(path), *extra])
    return code, capsys.readouterr().err


def search_trials(path, storage: str | None = None) -> list:
    """The search's Optuna trials, from ``storage`` (default: the default one beside ``path``), opened as
    its workers open it."""
    from search.runner import default_storage, open_optuna_study

    study = load_study(path)
    return open_optuna_study(study.name, study.search, storage or default_storage(path.parent)).get_trials()


def trial_states(path, storage: str | None = None) -> dict[str, list[int]]:
    states: dict[str, list[int]] = {}
    for t in search_trials(path, storage):
        states.setdefault(t.state.name.lower(), []).append(t.number)
    return states


def trial_arms(path) -> dict[int, str]:
    """Each trial's arm, as the sampler drew it."""
    return {t.number: t.params["arm"] for t in search_trials(path) if "arm" in t.params}


@pytest.mark.slow
def test_a_six_trial_search_with_pruning_completes_and_reports(search_file, run_study):
    path = search_file(6)
    result = run_study(path, "--jobs", "2", figures=True)
    assert result.returncode == 0, result.stderr[-2000:]
    states = trial_states(path)
    assert len(states.get("complete", [])) + len(states.get("pruned", [])) == 6 and "fail" not in states
    logs = {p.stem: json.loads(p.read_text()) for p in (path.parent / "trials").glob("*.json")}
    assert set(logs) == {f"trial{n:03d}" for n in range(6)}
    for number in states.get("pruned", []):  # a pruned trial's log says so, at its step
        assert logs[f"trial{number:03d}"]["status"] == "pruned"
    for number in states.get("complete", []):
        log = logs[f"trial{number:03d}"]
        assert log["status"] == "complete" and log["final"]["kept"] == "best" and log["train_config"]["seed"] == 1000
    report = (path.parent / "report.md").read_text()
    first = report.index("## First: the n-gram models")
    assert first < report.index("## Every trial") and all(f"trial{n:03d}" in report for n in range(6))
    # each arm with a complete trial has a row naming its best one (which arms the sampler drew is chance)
    assert "## The best configuration per arm" in report
    arm_of = trial_arms(path)
    for arm in {arm_of[n] for n in states["complete"]}:
        mine = [n for n in states["complete"] if arm_of[n] == arm]
        best_of_arm = min(mine, key=lambda n: logs[f"trial{n:03d}"]["final"]["val"]["loss"])
        assert f"| {arm} | trial{best_of_arm:03d} |" in report
    # the best configuration as a study declares it: the best trial's own flags, mlp_ratio already d_mlp
    declared = tomllib.loads(report.split("```toml\n")[1].split("```")[0])
    best = min((logs[f"trial{n:03d}"] for n in states["complete"]), key=lambda log: log["final"]["val"]["loss"])
    assert declared["lrs"] == [best["train_config"]["lr"]] and declared["train"]["d_mlp"] == best["model_config"]["d_mlp"]
    assert declared["train"].get("tie_embeddings", False) is best["model_config"]["tie_embeddings"]
    assert declared["train"]["keep"] == "best" and not {"seeds", "activation", "run_name"} & set(declared["train"])
    assert (path.parent / "search_history.png").stat().st_size > 0 and (path.parent / "search_slices.png").exists()
    assert result.stdout.splitlines()[0] == f"search report: {path.parent / 'report.md'}"


def kill_search_after_two_trials(path, *storage: str) -> dict[str, str]:
    """Start the search (two workers), SIGKILL it and its trials' runs at once when two trials have
    finished: the finished trials' logs, by run name."""
    process = subprocess.Popen(study_command(path, "--jobs", "2", *storage), cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = path.parent / "trials"
    deadline = time.time() + 300
    while time.time() < deadline:  # until two trials have finished
        done = [p for p in folder.glob("*.json") if json.loads(p.read_text() or "{}").get("status") in ("complete", "pruned")] \
            if folder.is_dir() else []
        if len(done) >= 2:
            break
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)  # the search and its trial's run, at once
    process.wait()
    return {p.stem: p.read_text() for p in done}


def assert_resumed_once(path, finished: dict[str, str], stale: list[int], storage: str | None = None) -> None:
    """Finished trials were not run again, the budget was met, and each trial killed in flight was
    failed and retried once, under its own name: no run name is new beyond the budget."""
    folder = path.parent / "trials"
    for name, text in finished.items():
        assert (folder / f"{name}.json").read_text() == text
    states = trial_states(path, storage)
    assert len(states.get("complete", [])) + len(states.get("pruned", [])) >= 4
    names = {p.stem for p in folder.glob("*.json")}
    assert len(names) == len(states.get("complete", [])) + len(states.get("pruned", []))
    assert stale and sorted(states.get("fail", [])) == sorted(stale)  # not retried twice by two workers


@pytest.mark.slow
def test_a_killed_search_on_sqlite_resumes_its_stale_trials_once(search_file, run_study):
    # an RDB storage has no trial locks: a killed worker's trials are found by their missing heartbeats
    path = search_file(4, heartbeat=3)
    sqlite = f"sqlite:///{path.parent / 'search.db'}"
    finished = kill_search_after_two_trials(path, "--storage", sqlite)
    path.write_text(path.read_text().replace("heartbeat_seconds = 3", "heartbeat_seconds = 10"))
    time.sleep(21)  # past the resumed workers' grace (2 x 10 s): the trials in flight are stale now, and a live
    # trial of the two resumed workers is not (with 3 s beats a loaded machine once failed one as stale)
    stale = trial_states(path, sqlite).get("running", [])
    result = run_study(path, "--jobs", "2", "--storage", sqlite)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_resumed_once(path, finished, stale, sqlite)


@pytest.mark.slow
def test_a_killed_search_resumed_by_two_worker_processes_on_one_journal_runs_no_trial_twice(search_file, study_here):
    # the default storage, a journal file: a killed worker's trial locks are free at once, no wait
    path = search_file(4)
    finished = kill_search_after_two_trials(path)
    stale = trial_states(path).get("running", [])
    other = subprocess.Popen(study_command(path), cwd=ROOT, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    this = study_here(path)  # the second worker process: this one
    errors = [other.communicate(timeout=600)[1], this.stderr]
    assert other.returncode == 0 and this.returncode == 0, errors
    assert_resumed_once(path, finished, stale)
    started = [line.split(":")[0] for text in errors for line in text.splitlines() if " --activation " in line]
    assert len(started) == len(set(started)) and started  # each trial started by one worker only
    for name in set(started) - {f"trial{n:03d}" for n in stale}:  # a new trial trained in one piece
        assert json.loads((path.parent / "trials" / f"{name}.json").read_text())["run"]["resumed"] == []
    finished_trials = [t for t in search_trials(path) if t.state.name in ("COMPLETE", "PRUNED")]
    drawn = [json.dumps(t.params, sort_keys=True) for t in finished_trials]
    assert len(drawn) == len(set(drawn))  # the workers drew apart: no configuration trained twice


def long_trials(path):
    """The search, its trials long enough to be caught training: 40 epochs, no patience, no pruner; and
    cheap to finish: an evaluation every 20 steps, a log entry every 4 (each rewrites the whole log)."""
    path.write_text(path.read_text().replace("num_epochs = 4", "num_epochs = 40").replace("patience = 3\n", "")
                    .replace('pruner = "hyperband"', 'pruner = "none"').replace("eval_every = 2\n", "eval_every = 20\n")
                    .replace("log_every = 1\n", "log_every = 4\n"))
    return path


def stop_search_with_both_trials_training(path, past: dict[str, int], to_group: bool) -> tuple[int, str]:
    """Start the search (two workers), and once both trials' logs are past their steps in ``past``
    (0 for a new trial), stop it: SIGTERM to the search alone (it stops its trials), or as a terminal's
    Ctrl-C, SIGINT to the search and its trials at once. The search's exit code and stderr."""
    folder = path.parent / "trials"
    search = subprocess.Popen(study_command(path, "--jobs", "2"), cwd=ROOT,
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # until both trials are training, past their first steps
        logs = {p.stem: json.loads(p.read_text() or "{}") for p in folder.glob("*.json")} if folder.is_dir() else {}
        if len(logs) == 2 and all(log.get("status") == "running" and log["progress"]["step"] >= past.get(name, 0) + 4
                                  for name, log in logs.items()):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the two trials were never seen training at once")
    if to_group:
        os.killpg(search.pid, signal.SIGINT)
    else:
        search.send_signal(signal.SIGTERM)
    stderr = search.communicate(timeout=300)[1]
    return search.returncode, stderr


@pytest.mark.slow
def test_a_stopped_search_checkpoints_its_trials_and_continues_them_from_where_they_stopped(search_file, run_study):
    path = long_trials(search_file(2))
    folder = path.parent / "trials"
    stops: dict[str, list[int]] = {}
    for to_group, code, failed in ((False, 143, [0, 1]), (True, 130, [0, 1, 2, 3])):  # SIGTERM, then Ctrl-C
        returncode, stderr = stop_search_with_both_trials_training(path, {n: s[-1] for n, s in stops.items()}, to_group)
        assert returncode == code, stderr[-2000:]
        stopped = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
        assert {log["status"] for log in stopped.values()} == {"interrupted"}  # each checkpointed at its step
        assert all((folder / "checkpoints" / f"{name}.pt").exists() for name in stopped)
        queued = [len(failed), len(failed) + 1]
        assert trial_states(path) == {"fail": failed, "waiting": queued}  # failed as stopped, queued again
        report = (path.parent / "report.md").read_text()
        assert "stopped with the search at step" in report and "2 queued to run again" in report
        retries = {line.split("|")[1].strip() for line in report.splitlines() if "| queued to run again |" in line}
        assert retries == {"trial000", "trial001"}  # the retries, by their runs' names
        for name, log in stopped.items():
            stops.setdefault(name, []).append(log["progress"]["step"])
    result = run_study(path, "--jobs", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert trial_states(path) == {"fail": [0, 1, 2, 3], "complete": [4, 5]}  # the budget: no trial beyond the two
    for name, at in stops.items():  # each continued under its name from each step it stopped at
        log = json.loads((folder / f"{name}.json").read_text())
        assert log["status"] == "complete" and log["progress"]["step"] > at[-1]
        assert [point["at_step"] for point in log["run"]["resumed"]] == at


@pytest.mark.slow
def test_a_one_worker_search_stops_cleanly_too(search_file):
    # one worker (the default): the trial is watched from the main thread, where the stop's handler runs too
    path = long_trials(search_file(2))
    log_path = path.parent / "trials" / "trial000.json"
    search = subprocess.Popen(study_command(path), cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (log_path.exists() and json.loads(log_path.read_text() or "{}").get("progress", {}).get("step", 0) >= 4):
        assert time.time() < deadline and search.poll() is None, "trial000 was never seen training"
        time.sleep(0.2)
    search.send_signal(signal.SIGTERM)
    stderr = search.communicate(timeout=120)[1]
    assert search.returncode == 143, stderr[-2000:]
    assert "trial000: stopped at step" in stderr and "Traceback" not in stderr  # an outcome, not a crash
    assert json.loads(log_path.read_text())["status"] == "interrupted"
    assert (path.parent / "trials" / "checkpoints" / "trial000.pt").exists()
    assert trial_states(path) == {"fail": [0], "waiting": [1]}


@pytest.mark.parametrize("space, message", [
    ("nonsense_flag = [1, 2]", "cannot search 'nonsense_flag' (not a train_simple.py flag)"),
    ("lr = []", "lr has no choices"),
    ("lr = {low = 1e-2, high = 1e-3}", "lr has low 0.01 > high 0.001"),
    ("lr = {low = 1e-3, high = 1e-3}", "lr is an empty range"),
    ("lr = {low = 0.0, high = 1e-3, log = true}", "log range, so low must be positive"),
    ("seeds = [1, 2]", "cannot search 'seeds' (the study sets it per trial)"),
])
def test_a_bad_search_table_is_one_line_and_exit_2(search_file, capsys, space, message):
    path = search_file()
    text = path.read_text()
    path.write_text(text[: text.index("[search.space]")] + "[search.space]\n" + space + "\n")
    code, err = study_here(capsys, path)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and sorted(p.name for p in path.parent.iterdir()) == ["search.toml"]


def test_a_search_needs_a_budget_and_a_tuning_seed_outside_the_final_seeds(search_file, capsys):
    path = search_file()
    text = path.read_text()
    path.write_text(text.replace("trials = 6\n", ""))
    assert "needs a budget" in study_here(capsys, path)[1]
    path.write_text("seeds = [1000]\n" + text)
    assert "tuning_seed 1000 is one of the final seeds" in study_here(capsys, path)[1]
    study = load_study(search_file())  # a search needs neither seeds nor a baseline
    assert study.search.trials == 6 and study.baseline == "relu" and set(study.search.space) == {
        "lr", "mlp_ratio", "tie_embeddings"}


def test_listing_a_search_is_one_line_and_exit_2_and_starts_no_trial(search_file, capsys):
    # --list once ran the search itself: a search's trials are drawn as it runs, so there is no list
    path = search_file()
    code, err = study_here(capsys, path, "--list")
    assert code == 2 and "--list is for a study" in err
    assert len(err.strip().splitlines()) == 1 and sorted(p.name for p in path.parent.iterdir()) == ["search.toml"]


def test_worker_threads_pruning_at_once_all_get_an_answer():
    # Optuna's Hyperband pruner builds its brackets on its first prune(), unlocked: threads pruning at
    # once (the --jobs workers of one process) built them twice, and the bracket lookup then failed.
    # A tiny switch interval makes the threads interleave there (unserialised: 7 of 20 studies failed).
    import optuna

    from search.runner import one_at_a_time

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(20):
            study = optuna.create_study(pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=27))
            one_at_a_time(study)
            trials = [study.ask() for _ in range(8)]
            for trial in trials:
                trial.report(1.0, 1)
            start, errors = threading.Barrier(len(trials)), []

            def prune(trial) -> None:
                start.wait()
                try:
                    trial.should_prune()
                except AssertionError as err:
                    errors.append(err)
            threads = [threading.Thread(target=prune, args=(t,)) for t in trials]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.parametrize("storage_name, damage", [
    ("search.db", b"SQLite format 3\x00" + os.urandom(4096)),  # a real SQLite file, damaged past its header
    ("search.journal", b'{"op_code": 0, "worker_id": "w", "study_name": "tiny search", "directions": [1]}\n'
                       b'{"op_code": 5, "worker_id": "w", "study_id\x00\x00\x00\n'  # a line zeroed mid-file
                       b'{"op_code": 4, "worker_id": "w", "study_id": 0, "datetime_start": null}\n'),
])
def test_a_damaged_search_storage_is_one_line_and_left_as_it_is(search_file, capsys, storage_name, damage):
    import hashlib

    path = search_file()
    storage = path.parent / storage_name
    storage.write_bytes(damage)
    before = hashlib.sha256(storage.read_bytes()).hexdigest()
    code, err = study_here(capsys, path, "--report_only")
    assert code == 2, err[-2000:]
    [line] = err.splitlines()
    assert line.startswith("error: search storage") and "cannot be read" in line
    assert hashlib.sha256(storage.read_bytes()).hexdigest() == before


def test_a_storage_of_another_search_is_refused_not_mixed(search_file, capsys):
    path = search_file()
    assert study_here(capsys, path, "--report_only")[0] == 0  # creates the storage, recording its search's space
    assert (path.parent / "search.journal").exists() and not (path.parent / "search.db").exists()  # the journal, by default
    other_name = path.read_text().replace('name = "tiny search"', 'name = "another search"')
    other_space = path.read_text().replace("tie_embeddings = [true, false]", "tie_embeddings = [true]")
    for text, says in ((other_name, "holds another search ('tiny search')"), (other_space, "with another space")):
        path.write_text(text)
        code, err = study_here(capsys, path, "--report_only")
        assert code == 2, err[-2000:]
        [line] = err.splitlines()
        assert says in line
