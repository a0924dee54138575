"""Which running trials still have a worker, on a storage without heartbeats (Optuna's journal file).

A worker holds an OS file lock, ``trial<N>.lock`` in the folder beside the journal, while its trial
runs. The OS frees the lock when the worker exits, however it exits (SIGKILL and a lost power supply
included). So a trial that the storage calls RUNNING and whose lock can be taken has lost its worker:
it is failed and queued again under its run name, as a heartbeat-stale trial is on an RDB storage.
This check runs before each ask(), and asking for a trial, taking its lock and the check all happen
under one search-wide lock, so a live trial is never seen unlocked. Its cost is a lock per RUNNING trial.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout

MAX_RETRIES = 3  # a trial whose worker dies this often (a run that kills its machine, say) is not queued again


def queue_again(optuna_study, trial) -> None:
    """Queue a failed trial again with its parameters, under its run name: Optuna's retry record
    (``failed_trial``: the first trial's number, ``retry_history``), without the failed trial's user
    attributes (its failure reason stays with it)."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    original = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    history = [*RetryHeartbeatStaleTrialCallback.retry_history(trial), trial.number]
    optuna_study.add_trial(optuna.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs={"failed_trial": trial.number if original is None else original, "retry_history": history}))


class LiveTrials:
    """The trial locks of one worker process, and its check for trials whose worker died. Also the
    Optuna callback that lets a trial's lock go once the trial is told (complete, pruned or failed)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.search_lock = FileLock(folder / "search.lock")
        self.held: dict[int, FileLock] = {}  # trial number -> the lock this process holds while it runs

    def lock_of(self, number: int) -> FileLock:
        return FileLock(self.folder / f"trial{number:03d}.lock")

    def asking(self, optuna_study, ask):
        """``ask``, with the dead workers' trials failed and queued first and the new trial's lock taken,
        under the search-wide lock."""
        def locked_ask(*args, **kwargs):
            with self.search_lock:
                self.fail_dead_workers_trials(optuna_study)
                trial = ask(*args, **kwargs)
                lock = self.lock_of(trial.number)
                lock.acquire(timeout=0)  # nobody else can hold it: its trial was not RUNNING until now
                self.held[trial.number] = lock
            return trial
        return locked_ask

    def fail_dead_workers_trials(self, optuna_study) -> None:
        """Fail each RUNNING trial whose lock is free and queue it again (up to MAX_RETRIES). Call under
        the search-wide lock."""
        import optuna

        running = optuna.trial.TrialState.RUNNING
        for trial in optuna_study.get_trials(deepcopy=False, states=(running,)):
            if trial.number in self.held:
                continue  # this process runs it
            lock = self.lock_of(trial.number)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # its worker is alive
            try:
                now = optuna_study._storage.get_trial(trial._trial_id)  # it may have finished meanwhile
                if now.state != running:
                    continue
                optuna_study._storage.set_trial_user_attr(trial._trial_id, "failed", "its worker died; queued again")
                optuna_study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                if len(optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(now)) < MAX_RETRIES:
                    queue_again(optuna_study, now)
            finally:
                lock.release()

    def __call__(self, _optuna_study, trial) -> None:
        lock = self.held.pop(trial.number, None)
        if lock is not None:
            lock.release()
