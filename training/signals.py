"""Stopping a run cleanly: SIGINT or SIGTERM finishes the step, checkpoints and exits 130/143;
SIGUSR1, which a search sends to a trial its pruner stops, finishes the step, marks the log
``pruned`` (for good: nothing resumes it) and exits 138. A study or search that runs many runs
passes its own SIGINT or SIGTERM on to them (StopRuns), so it stops as cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time


class SignalHandlers:
    """A context manager that routes each of ``SIGNALS`` to ``self._handle`` while it is entered (in
    the main thread); the previous handlers come back on exit. A subclass keeps the signal that came
    in ``signum``."""

    SIGNALS: tuple[signal.Signals, ...] = ()

    def __enter__(self):
        self.previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame) -> None:
        raise NotImplementedError

    @property
    def exit_code(self) -> int:
        """The exit status a process stopped by the signal that came gives (SIGINT's when none did)."""
        return 128 + (self.signum or signal.SIGINT)


class StopSignal(SignalHandlers):
    """SIGINT or SIGTERM asks the run to stop after the current step; a second one stops at once.

    A second signal within REPEAT_SECONDS of the first is the same stop delivered twice, not a
    person asking again: a terminal's Ctrl-C or a scheduler's SIGTERM reaches a search's trial and
    the search, which passes it on, and the run must still checkpoint.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    REPEAT_SECONDS = 1.0

    def __init__(self) -> None:
        self.signum: int | None = None
        self.first_at = 0.0

    def _handle(self, signum: int, _frame) -> None:
        if self.signum is not None:
            if time.monotonic() - self.first_at < self.REPEAT_SECONDS:
                return
            raise KeyboardInterrupt
        self.signum, self.first_at = signum, time.monotonic()
        print(f"\n{signal.Signals(signum).name}: stopping after this step (again to stop at once)", file=sys.stderr)

    @property
    def pruned(self) -> bool:
        """Whether the signal was a search's pruner stopping this run (SIGUSR1)."""
        return self.signum == signal.SIGUSR1


class StopRuns(SignalHandlers):
    """Stops the runs a study or a search started, cleanly, on SIGINT or SIGTERM.

    Each run in flight gets SIGTERM: it finishes its step, checkpoints and exits, so running the
    study or search again continues it from there (a run that got the signal itself too, from a
    terminal's Ctrl-C or a scheduler, takes the two as one stop). ``run`` starts nothing once the
    stop came. Its handlers are installed while it is entered, in the main thread; runs are started
    from any thread.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, what: str, after: str = "run it again to continue them") -> None:
        self.message = f"stopping {what}: its runs in flight checkpoint; {after}"
        self.signum: int | None = None
        # Reentrant: a signal can arrive while the main thread, starting a run, holds the lock
        self.lock = threading.RLock()
        self.processes: set[subprocess.Popen] = set()

    def _handle(self, signum: int, _frame) -> None:
        with self.lock:
            if self.signum is None:
                print(f"{signal.Signals(signum).name}: {self.message}", file=sys.stderr)
            self.signum = signum
            for process in self.processes:
                process.send_signal(signal.SIGTERM)

    def start(self, command: list[str], **popen) -> subprocess.Popen:
        """Start a run, tracked for the stop (stopped at once if the stop came first)."""
        with self.lock:
            process = subprocess.Popen(command, **popen)
            self.processes.add(process)
            if self.signum is not None:
                process.send_signal(signal.SIGTERM)
            return process

    def finished(self, process: subprocess.Popen) -> None:
        with self.lock:
            self.processes.discard(process)

    def run(self, command: list[str]) -> int | None:
        """Run a command to its end, tracked for the stop: its exit status, or None (not started)
        when the stop came before it."""
        with self.lock:
            if self.signum is not None:
                return None
            process = self.start(command)
        code = process.wait()
        self.finished(process)
        return code
