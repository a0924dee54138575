"""Running a search with Optuna: a TPE sampler, a pruner fed the selection loss at each evaluation,
and the Optuna study's state in Optuna's journal file beside the study file (``search.journal``, which
several processes append to safely; a search begun on ``search.db``, SQLite, keeps it; any RDB URL for
many machines), so a search survives interruption and runs from several processes at once.

Each trial is an ordinary train_simple.py run (its own JSON log and lock, in ``trials/``), named
``trial<NNN>`` after its Optuna trial number. While it trains, the worker reads its log (rewritten
at every logged step) and reports each new evaluation of the selection split to the pruner; when
the pruner says stop, the worker sends the run SIGUSR1, which ends it with the status ``pruned``.
A worker that dies lets its trial's lock go (on the journal: live_trials.py) or stops beating (on an
RDB storage: Optuna's heartbeat); its trial is then failed and retried with the same parameters under
the same run name, so train_simple.py's --resume continues it from its last checkpoint. Trials that
finished (complete or pruned) are never run again.

A search is stopped cleanly with SIGTERM (or Ctrl-C, which reaches its trials too): each trial in
flight finishes its step, checkpoints and exits, is failed with that reason and queued again under
its run name, no new trial starts, and the report is written. Running the search again continues
the queued trials from the steps they stopped at.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from run_log import COMPLETE, PRUNED, read_log
from search.live_trials import MAX_RETRIES, LiveTrials, queue_again
from study_file.space import Search, StudyError
from study_file.tuning import objective_value
from training.launch import StopRuns

POLL_SECONDS = 2.0  # how often a worker reads its trial's log


class TrialFailed(Exception):
    """A trial's run exited with an error (its log says why): the trial is FAIL, the search goes on."""


class TrialStopped(TrialFailed):
    """A stop of the search interrupted the trial's run: FAIL here, and queued again under its name."""


class WithoutTraceback(logging.Filter):
    """Optuna logs each failed trial with its traceback; a TrialFailed is an outcome, not a crash (its
    message and the report say why), so its line goes out alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TrialFailed):
            record.exc_info = None
        return True


WITHOUT_TRACEBACK = WithoutTraceback()  # one instance: adding it again is a no-op


@dataclass(frozen=True)
class TrialRun:
    """How one trial is trained: its run name, folder and train_simple.py command."""

    name: str
    folder: Path
    command: list[str]

    @property
    def log_path(self) -> Path:
        return self.folder / f"{self.name}.json"


def default_storage(study_folder: Path) -> str:
    """The journal file beside the study file, or ``search.db`` where a search began on SQLite (the
    default before the journal: Optuna advises against SQLite for parallel optimisation, and a
    cross-process race on it was measured here, which a per-process lock cannot close)."""
    sqlite = study_folder / "search.db"
    return f"sqlite:///{sqlite.resolve()}" if sqlite.exists() else str((study_folder / "search.journal").resolve())


def is_journal(storage: str) -> bool:
    """A storage given as a file path (no URL scheme) is a journal file."""
    return "://" not in storage


def live_trials_of(storage: str) -> LiveTrials | None:
    """The trial locks that stand in for heartbeats on a journal file (None on an RDB storage)."""
    return LiveTrials(Path(f"{storage}.live")) if is_journal(storage) else None


def selection_losses(log: dict) -> list[tuple[int, float]]:
    """(step, selection loss) of every evaluation in the log, in order, each step once."""
    by_step = {e["step"]: e["val_loss"] for e in log.get("evals", []) if "val_loss" in e}
    by_step.update({e["steps"]: e["val_loss"] for e in log.get("epochs", []) if e["steps"] not in by_step})
    return sorted(by_step.items())


def pruner_for(search: Search):
    import optuna

    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=search.min_evaluations, reduction_factor=search.reduction_factor,
                                              max_resource=search.max_evaluations or "auto")
    if search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=search.min_evaluations,
                                                      reduction_factor=search.reduction_factor)
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_warmup_steps=search.min_evaluations)
    return optuna.pruners.NopPruner()


def space_signature(search: Search) -> str:
    """What a storage records of the search it holds: its space, so that another search's is refused."""
    return json.dumps({name: dataclasses.asdict(dim) for name, dim in sorted(search.space.items())}, default=list,
                      sort_keys=True)


def open_optuna_study(name: str, search: Search, url: str):
    """The Optuna study (created, or loaded to resume) on ``url``, an RDB URL or a journal file's path.
    Each worker process seeds its sampler with the tuning seed and its process id: workers that drew
    alike would train the same configurations (the draws, not the trials, are what a seed would make
    repeatable). StudyError (one line) for a storage that cannot be read, or that holds another search
    (another name or space): the file is left as it is, and no trial of one search mixes with another's."""
    import sqlalchemy

    try:
        optuna_study = create_or_load(name, search, url)
    except StudyError:  # another search's storage (a ValueError too)
        raise
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as err:  # ValueError: a journal line that is not JSON
        raise StudyError(f"search storage {url} cannot be read ({type(err).__name__}: it is damaged or not an Optuna "
                         f"storage); it is left as it is: move it away to start the search afresh") from None
    recorded = optuna_study.user_attrs.get("space")
    if recorded is None and not optuna_study.trials:  # a new search records its space (an older storage is read as it is)
        optuna_study.set_user_attr("space", space_signature(search))
    elif recorded is not None and recorded != space_signature(search):
        raise StudyError(f"search storage {url} holds search {name!r} with another space ({recorded}): give this "
                         f"search its own storage")
    return optuna_study


def create_or_load(name: str, search: Search, url: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats are, since v2.8
    storage = journal_storage(url) if is_journal(url) else rdb_storage(url, search)
    others = [n for n in optuna.get_all_study_names(storage) if n != name]
    if others:
        raise StudyError(f"search storage {url} holds another search ({', '.join(map(repr, others))}), not {name!r}: "
                         f"give this search its own storage")
    sampler = optuna.samplers.TPESampler(seed=search.tuning_seed * 100_003 + os.getpid(), multivariate=True,
                                         constant_liar=True)
    for _ in range(3):  # two workers creating the study at once: the second loads it
        try:
            return optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner_for(search),
                                       direction="minimize", load_if_exists=True)
        except optuna.exceptions.DuplicatedStudyError:
            time.sleep(1)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner_for(search))


def journal_storage(path: str):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    # the open(O_EXCL) lock: Optuna's default symlink lock is for filesystems without O_EXCL, which ours has
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def rdb_storage(url: str, search: Search):
    import sqlalchemy
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None  # workers wait for the file lock
    for attempt in range(5):  # workers starting at once race to create the schema: the loser finds it made
        try:
            return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=search.heartbeat_seconds,
                              grace_period=2 * search.heartbeat_seconds,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == 4:
                raise
            time.sleep(1 + attempt)


def run_name_of(frozen) -> str:
    """A trial's run name: a retried trial keeps the name (and so the run, and its checkpoint) of the
    trial it retries."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    original = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    return f"trial{original if original is not None else frozen.number:03d}"


def trial_name(trial) -> str:
    """The run name of a live trial (whose retry record is in its frozen copy)."""
    return run_name_of(next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number))


class Stop(StopRuns):
    """Stops a search cleanly on SIGINT or SIGTERM (StopRuns: each trial's run in flight gets
    SIGTERM), and is the Optuna callback that finishes the stop: a stopped trial is failed with that
    reason once its run has exited, and the callback queues it again, with its parameters and under
    its run name (the same record a heartbeat-stale trial's retry gets), and ends the search's loop.
    """

    def __init__(self) -> None:
        super().__init__("the search", after="its trials are queued again; run it again to continue them")

    def __call__(self, optuna_study, trial) -> None:
        import optuna

        if trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get("stopped"):
            # Optuna's retry callback's record, but not the callback: it copies the user attributes, and a
            # retry carrying "stopped" would be queued again whenever it failed, for any reason, forever
            queue_again(optuna_study, trial)
        if self.signum is not None:
            optuna_study.stop()


def train_trial(trial, run: TrialRun, stop: Stop) -> float:
    """Train one trial, reporting each selection evaluation to the pruner; its objective value."""
    import optuna

    trial.set_user_attr("run_name", run.name)
    trial.set_user_attr("command", shlex.join(run.command))
    started_ns = time.time_ns()
    process = stop.start(run.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = []
    reader = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)  # never blocks the run
    reader.start()
    sent, asked = 0, False
    while True:
        finished = process.poll() is not None
        sent = send_new_evaluations(trial, run.log_path, sent)
        if finished:
            break
        if not asked and listening(run.log_path, started_ns) and trial.should_prune():
            process.send_signal(signal.SIGUSR1)  # train_simple.py stops after this step: status "pruned"
            asked = True
        time.sleep(POLL_SECONDS)
    stop.finished(process)
    reader.join(timeout=5)
    # The log, not the exit status, says how the run ended: a run that completed just before the
    # pruner's signal reached it (its handlers already gone) is complete, whatever the signal did.
    try:
        log = read_log(run.log_path)
    except (OSError, ValueError):
        log = {"status": "no log"}
    if log["status"] == PRUNED:
        raise optuna.TrialPruned(f"{run.name} pruned after {sent} evaluations")
    if log["status"] == COMPLETE:
        return objective_value(log)
    if stop.signum is not None:  # whatever its log says (a run stopped before its handlers were up has none)
        step = log.get("progress", {}).get("step", 0)
        trial.set_user_attr("failed", f"stopped with the search at step {step}, queued again")
        trial.set_user_attr("stopped", True)
        raise TrialStopped(f"{run.name}: stopped at step {step}")
    last = next((line.strip() for line in reversed(stderr) if line.strip()), "")
    reason = f"{log['status']}, exit status {process.returncode}: {last}"
    trial.set_user_attr("failed", reason)  # the report says why
    raise TrialFailed(f"{run.name}: {reason}")


def listening(log_path: Path, started_ns: int) -> bool:
    """Whether the run has written its log since it started, and so has its signal handlers: a retried
    trial carries its first run's evaluations, and its pruner may stop it at once, before a SIGUSR1
    would end the run with its log saying "pruned" rather than kill it (measured: a retry killed so)."""
    try:
        return log_path.stat().st_mtime_ns >= started_ns
    except OSError:
        return False


def send_new_evaluations(trial, log_path: Path, sent: int) -> int:
    """Pass Optuna (trial.report) the evaluations past the first ``sent`` (step = the evaluation's ordinal, 1-based,
    the unit of min_evaluations); how many are sent now."""
    try:
        losses = selection_losses(read_log(log_path))
    except (OSError, ValueError):  # not written yet
        return sent
    for ordinal, (_, loss) in enumerate(losses[sent:], start=sent + 1):
        trial.report(loss, ordinal)
    return max(sent, len(losses))


class Budget:
    """Stops the search once its trials (complete and pruned, across resumes) reach the budget:
    ``trials`` in all, or ``hours`` of trial time in all. A worker's trial in flight still finishes."""

    def __init__(self, search: Search) -> None:
        self.search = search

    def spent(self, optuna_study) -> tuple[int, float]:
        import optuna

        done = [t for t in optuna_study.get_trials(deepcopy=False)
                if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
        hours = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done) / 3600
        return len(done), hours

    def exhausted(self, optuna_study) -> bool:
        n, hours = self.spent(optuna_study)
        return (self.search.trials is not None and n >= self.search.trials) or \
            (self.search.hours is not None and hours >= self.search.hours)

    def __call__(self, optuna_study, _trial) -> None:
        if self.exhausted(optuna_study):
            optuna_study.stop()


def one_at_a_time(optuna_study, live: LiveTrials | None = None) -> None:
    """Serialise this process's ``optuna_study.ask()`` and pruner calls, which Optuna's worker threads make
    unlocked. Asking pops a waiting trial (a retry) by reading it WAITING and then marking it RUNNING;
    on SQLite two threads asking at once both read it waiting and both ran it (measured: the kill
    test's two resumed workers, 1 run in 3), the second failing on the run's lock and then telling a
    trial the first had completed. The Hyperband pruner builds its brackets on its first prune();
    two threads pruning at once both built them, and the trials' bracket lookup then failed ("This
    line should be unreachable": the six-trial and kill tests on a loaded machine). On a journal file,
    ``live`` also takes each asked trial's lock, under a lock that spans processes."""
    lock = threading.Lock()

    def locked(call):
        def locked_call(*args, **kwargs):
            with lock:
                return call(*args, **kwargs)
        return locked_call
    # Optuna's worker threads call optuna_study.ask() and optuna_study.pruner.prune(): this instance's are the locked ones
    optuna_study.ask = locked(optuna_study.ask if live is None else live.asking(optuna_study, optuna_study.ask))
    optuna_study.pruner.prune = locked(optuna_study.pruner.prune)


def run_search(name: str, search: Search, url: str, make_run, jobs: int) -> int | None:
    """Run trials ``jobs`` at a time until the budget is spent or a signal stops the search (which
    signal is returned, None when none came): this process starts at most the trials the budget has
    left when it starts (another process on the same storage may finish some of them first, so the
    budget can be passed by the trials in flight). ``make_run(trial)`` draws a trial's flags and gives
    its TrialRun."""
    import optuna

    optuna_study = open_optuna_study(name, search, url)
    logging.getLogger("optuna.study._optimize").addFilter(WITHOUT_TRACEBACK)  # where Optuna logs a failed trial
    # Retry the trials of dead workers here, once, before the worker threads start: each thread's first
    # trial would retry them too, and two threads doing so at once retried each twice (measured on resume).
    # (On a journal file the same check runs before every ask, under the search-wide lock.)
    optuna.storages.fail_stale_trials(optuna_study)
    live = live_trials_of(url)
    one_at_a_time(optuna_study, live)
    budget = Budget(search)
    if budget.exhausted(optuna_study):
        return None

    with Stop() as stop:
        def objective(trial) -> float:
            run = make_run(trial)
            print(f"{run.name}: {shlex.join(run.command[2:])}", file=sys.stderr)
            value = train_trial(trial, run, stop)
            print(f"{run.name}: selection loss {value:.4f} at its best point", file=sys.stderr)
            return value

        while not budget.exhausted(optuna_study) and stop.signum is None:
            left = None if search.trials is None else search.trials - budget.spent(optuna_study)[0]
            try:
                optuna_study.optimize(objective, n_trials=left, n_jobs=jobs, callbacks=([live] if live else []) + [budget, stop],
                                   catch=(TrialFailed,))
                break
            except optuna.exceptions.UpdateFinishedTrialError as err:
                # A live trial whose heartbeat lagged (a loaded machine) was failed as stale by another
                # worker and retried under its run name: the retry finds the run's finished log and is
                # told its value. This worker goes on instead of dying with the trial it had finished.
                print(f"warning: {err}; its retry reads the run's log", file=sys.stderr)
    return stop.signum
