"""When things happen in a run: the data order of each epoch, its length in steps, the learning rate
of each step, and when to evaluate."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from training.data import Data
from training.settings import RunSpec
from training.state import Progress, Runtime
from transformer_from_scratch import derived_generator


def epoch_order(seed: int, epoch: int, n: int) -> Tensor:
    """The training order of one epoch: a function of seed and epoch only, so every activation
    sees the same order and a resumed run picks up exactly where it stopped."""
    return torch.randperm(n, generator=derived_generator(seed, f"data order, epoch {epoch}"))


def steps_per_epoch(spec: RunSpec, data: Data) -> int:
    return math.ceil(len(data.train) / spec.training.batch_size)


def total_steps(spec: RunSpec, data: Data) -> int:
    """The run's length in optimizer steps: what a decaying schedule is laid out over."""
    by_epochs = spec.training.num_epochs * steps_per_epoch(spec, data)
    max_steps = spec.training.max_steps
    return by_epochs if max_steps is None else min(by_epochs, max_steps)


def learning_rate(step: int, peak: float, schedule: str, warmup: int | float, total: int, min_ratio: float) -> float:
    """The learning rate of optimizer step ``step`` (1-based): linear warmup to ``peak`` over
    ``warmup`` steps (a float in (0, 1): that fraction of ``total``, rounded), then constant, or a
    cosine from the peak down to min_ratio * peak at ``total``."""
    warmup_steps = round(warmup * total) if isinstance(warmup, float) else warmup
    if step <= warmup_steps:
        return peak * step / warmup_steps
    if schedule == "constant":
        return peak
    progress = (step - warmup_steps) / max(total - warmup_steps, 1)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def evaluation_due(rt: Runtime, progress: Progress, per_epoch: int) -> bool:
    """Whether to evaluate after this step, within an epoch (its end is evaluated anyway):
    --eval_every counts steps since step 0; --evals_per_epoch spaces evaluations evenly within each
    epoch, counted from the epoch's start, so none falls just after an epoch's end."""
    if progress.batch_in_epoch >= per_epoch:
        return False
    if rt.execution.eval_every:
        return progress.step % rt.execution.eval_every == 0
    if rt.execution.evals_per_epoch:
        return progress.batch_in_epoch % math.ceil(per_epoch / rt.execution.evals_per_epoch) == 0
    return False
