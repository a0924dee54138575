"""One writer per run: a second process asked to train a run that is being trained is refused."""

from __future__ import annotations

import filelock

from training.settings import RunSpec


class RunLocked(Exception):
    """Another process holds this run's lock."""


class RunLock:
    """One writer per run: an OS file lock, released when the process ends, also by kill -9."""

    def __init__(self, spec: RunSpec, enabled: bool = True) -> None:
        self.spec, self.lock = spec, filelock.FileLock(spec.lock_path, timeout=0) if enabled else None

    def __enter__(self) -> RunLock:
        try:
            if self.lock is not None:
                self.lock.acquire()
        except filelock.Timeout:
            raise RunLocked(f"{self.spec.name} is being trained by another process (lock {self.spec.lock_path})") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.lock is not None:
            self.lock.release()
