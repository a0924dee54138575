"""What a person watching a run sees: progress bars, status lines, TensorBoard scalars."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from metrics import logged_name, tensorboard_tags


def tensorboard_writer(folder: Path | None):
    """A TensorBoard SummaryWriter for ``folder``, or None (run_all checked that tensorboard is there)."""
    if folder is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(folder))


def evaluation_bar(label: str, main: bool) -> Callable[[Iterable], Iterable]:
    """Wraps an evaluation pass's batches in a progress bar of its own (in a terminal, main process)."""
    return lambda batches: tqdm(batches, desc=f"evaluating {label}", leave=False, dynamic_ncols=True,
                                disable=None if main else True)


class Watch:
    """What a person watching a run sees: in a terminal one progress bar to the run's real end (steps,
    ETA, loss, tokens/s, achieved TFLOP/s) and one for each evaluation pass; without one, a status line
    on stderr at most every ``status_every`` seconds and one after each evaluation; with
    --tensorboard, the log's scalars as TensorBoard events. Only the main process shows anything."""

    # A logged step's scalars; an evaluation's are those metrics.py gives a TensorBoard tag.
    STEP_SCALARS = {"loss": "train/loss", "grad_norm": "train/grad_norm", "lr": "train/lr",
                    "tokens_per_s": "train/tokens_per_s"}

    def __init__(self, name: str, total_steps: int, step: int, flops_per_token: float, status_every: float,
                 tensorboard: Path | None, main: bool, splits: dict[str, str] | None = None,
                 subsets: bool = False) -> None:
        self.writer = tensorboard_writer(tensorboard / name if tensorboard and main else None)
        self.name, self.total, self.every, self.flops_per_token = name, total_steps, status_every, flops_per_token
        self.main = main
        self.splits = splits or {"val": "val", "test": "test"}  # role -> "selection validation:A", ...
        self.scope = "the fixed --eval_tokens subsets" if subsets else "the whole splits"
        self.bar = tqdm(total=total_steps, initial=step, desc=name, dynamic_ncols=True, disable=None if main else True)
        self.lines = main and self.bar.disable
        self.last_line = time.monotonic()

    def scalars(self, entry: dict, step: int) -> None:
        if self.writer is not None:
            for key, tag in (self.STEP_SCALARS | tensorboard_tags()).items():
                if isinstance(entry.get(key), (int, float)):
                    self.writer.add_scalar(tag, entry[key], step)

    def step(self, step: int, epoch: int, train_seconds: float, entry: dict | None) -> None:
        """After each optimizer step; ``entry`` is the step's log entry on logged steps."""
        self.bar.update(1)
        if entry is None:
            return
        self.scalars(entry, step)
        tflops = entry["tokens_per_s"] * self.flops_per_token / 1e12
        self.bar.set_postfix(loss=f"{entry['loss']:.3f}", tok_s=f"{entry['tokens_per_s']:.0f}", TFLOPs=f"{tflops:.2f}")
        if self.lines and time.monotonic() - self.last_line >= self.every:
            self.last_line = time.monotonic()
            remaining = (self.total - step) * train_seconds / max(step, 1)
            self.say(f"step {step}/{self.total} (epoch {epoch}), loss {entry['loss']:.3f}, {entry['tokens_per_s']:,.0f} "
                     f"tokens/s, {tflops:.2f} TFLOP/s, about {remaining / 60:.0f} min of training left")

    def evaluated(self, step: int, entry: dict, seconds: float) -> None:
        """After an evaluation: its scalars, and without a terminal one line with its numbers."""
        self.scalars(entry, step)
        if self.lines:
            numbers = ", ".join(f"{label} {entry[logged_name(role, 'loss')]:.4f}" for role, label in self.splits.items()
                                if logged_name(role, "loss") in entry)
            self.say(f"step {step}: evaluated {self.scope} in {seconds:.0f} s: loss on {numbers}")

    def say(self, line: str) -> None:
        print(f"{self.name}: {line}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
