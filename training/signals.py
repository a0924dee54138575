"""Stopping a run cleanly: SIGINT or SIGTERM finishes the step, checkpoints and exits 130/143;
SIGUSR1, which a search sends to a trial its pruner stops, finishes the step, marks the log
``pruned`` (for good: nothing resumes it) and exits 138. A study or search that runs many runs
passes its own SIGINT or SIGTERM on to them (training.launch.StopRuns), so it stops as cleanly."""

from __future__ import annotations

import signal
import sys
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
