"""Starting a study's or search's train_simple.py runs from a process that has already imported it,
and stopping them cleanly with the study (StopRuns).

A run's own work on a tiny config takes half a second; starting Python and importing torch and
transformers for it takes four. So a run is forked from Python's fork server (multiprocessing's
"forkserver": one clean, single-threaded process that imports train_simple once, then forks a child
per run). A child is a fresh run in all that a log records: it gets the caller's environment,
folder and output streams, its own signals, and train_simple.main exits it as the script would.

The server holds the code as it was when it started. A run is forked only while the code on disk
and the environment are as they were then; otherwise it starts as a new process, so its log's
commit and code change name the code that made it.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from multiprocessing import reduction
from pathlib import Path

from training.signals import SignalHandlers

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = str(ROOT / "train_simple.py")
# the server blocks these (its warm_server preload), so a scheduler's SIGTERM to the whole process
# group does not end the server under the runs in flight; each child unblocks them first thing
SERVER_BLOCKS = {signal.SIGTERM, signal.SIGHUP}
# environment variables that no import reads: pytest sets this one anew for each test
CHANGES_WITHOUT_EFFECT = {"PYTEST_CURRENT_TEST"}


def start(command: list[str], **popen) -> subprocess.Popen | WarmRun:
    """Start ``command`` as subprocess.Popen would (``popen``: stdout, stderr, text): forked from the
    warm server when it is ``[sys.executable, train_simple.py, ...]`` and the code and environment are
    still the server's, else as a new process."""
    if forkable(command, popen) and SERVER.serves_current_code():
        return WarmRun(command[2:], **popen)
    return subprocess.Popen(command, **popen)


def forkable(command: list[str], popen: dict) -> bool:
    """A train_simple.py command with only the Popen settings a WarmRun takes."""
    streams_taken = all(popen.get(s) in (None, subprocess.DEVNULL, subprocess.PIPE) for s in ("stdout", "stderr"))
    is_training = command[:2] == [sys.executable, TRAIN_SCRIPT]
    return is_training and set(popen) <= {"stdout", "stderr", "text"} and streams_taken


def code_stamp(root: Path = ROOT) -> str:
    """The code on disk (each .py file's path, size and modification time) and the environment."""
    stats = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in ("results", "__pycache__"))
        for path in (os.path.join(folder, name) for name in sorted(files) if name.endswith(".py")):
            try:
                stats.append((path, os.stat(path).st_size, os.stat(path).st_mtime_ns))
            except FileNotFoundError:  # removed as we looked: not code any more
                pass
    environment = sorted((k, v) for k, v in os.environ.items() if k not in CHANGES_WITHOUT_EFFECT)
    return hashlib.sha256(repr((stats, environment)).encode()).hexdigest()


class ForkServer:
    """The fork server, started with the first run it forks: its context, and the code it holds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.context = None
        self.stamp = ""

    def serves_current_code(self) -> bool:
        with self.lock:
            stamp = code_stamp()
            if self.context is None:
                self.context, self.stamp = self._start(), stamp
            return stamp == self.stamp

    @staticmethod
    def _start():
        context = multiprocessing.get_context("forkserver")
        # the caller's main script too, so that no child runs it again (multiprocessing's own rule)
        context.set_forkserver_preload(["__main__", "training.warm_server"])
        # the server is `python -c`: it finds our modules on the PYTHONPATH it starts with (children are
        # given the caller's whole environment back)
        before = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), before]))
        try:
            from multiprocessing import forkserver
            forkserver.ensure_running()
        finally:
            if before is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = before
        return context


SERVER = ForkServer()


class ChildFd:
    """A file descriptor of this process that the forked child gets a copy of (sent with the request)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self):
        return _detach, (reduction.DupFd(self.fd),)


def _detach(dup) -> int:
    return dup.detach()


class WarmRun:
    """A train_simple.py run forked from the server, used as a subprocess.Popen is (pid, poll, wait,
    send_signal, returncode, and ``stderr`` when it is a PIPE)."""

    def __init__(self, argv: list[str], stdout=None, stderr=None, text: bool = False) -> None:
        streams, pipes, ours = [], {}, []
        for name, fd, stream in (("stdout", 1, stdout), ("stderr", 2, stderr)):
            if stream == subprocess.PIPE:  # (the search reads why a trial failed from its stderr)
                read_end, stream = os.pipe()
                pipes[name] = open(read_end, "r" if text else "rb")
                ours.append(stream)
            elif stream is None:  # inherited, as by a new process: this process's stream as it is now
                stream = fd
            streams.append(stream if stream == subprocess.DEVNULL else ChildFd(stream))
        self.stdout, self.stderr = pipes.get("stdout"), pipes.get("stderr")
        self.process = SERVER.context.Process(target=run_train_simple, name=f"train_simple {' '.join(argv)}",
                                              args=(argv, dict(os.environ), os.getcwd(), *streams))
        try:
            self.process.start()
        finally:
            for fd in ours:  # the child has its copy: the reader sees EOF when the child exits
                os.close(fd)
        self.pid = self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(TRAIN_SCRIPT, timeout)
        return self.process.exitcode

    def send_signal(self, signum: int) -> None:
        if self.process.exitcode is None:
            os.kill(self.pid, signum)


def run_train_simple(argv: list[str], environ: dict[str, str], cwd: str, stdout, stderr) -> None:
    """In the forked child: become the run the command would have started, then run it."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SERVER_BLOCKS)  # one that came meanwhile is delivered now
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    for stream, fd in ((stdout, 1), (stderr, 2)):
        if stream == subprocess.DEVNULL:
            stream = os.open(os.devnull, os.O_WRONLY)
        os.dup2(stream, fd)
        os.close(stream)
    import train_simple

    sys.exit(train_simple.main(argv))


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
        self.processes: set[subprocess.Popen | WarmRun] = set()

    def _handle(self, signum: int, _frame) -> None:
        with self.lock:
            if self.signum is None:
                print(f"{signal.Signals(signum).name}: {self.message}", file=sys.stderr)
            self.signum = signum
            for process in self.processes:
                process.send_signal(signal.SIGTERM)

    def start(self, command: list[str], **popen) -> subprocess.Popen | WarmRun:
        """Start a run (forked from the warm server where it can be), tracked for the stop (stopped at
        once if the stop came first)."""
        with self.lock:
            process = start(command, **popen)
            self.processes.add(process)
            if self.signum is not None:
                process.send_signal(signal.SIGTERM)
            return process

    def finished(self, process: subprocess.Popen | WarmRun) -> None:
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
