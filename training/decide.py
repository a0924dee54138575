"""Train, resume, skip or refuse: what to do with a requested run, from its existing log and
checkpoint. The one place this is decided, before any data is loaded."""

from __future__ import annotations

import math
from dataclasses import dataclass

from run_log import COMPLETE, PRUNED, failed_non_finite, last_step, read_log, value_before_it_was_recorded
from training.settings import LENGTH_SETTINGS, RunSpec

# What to do with a requested run.
TRAIN, RESUME, SKIP, KEEP_FAILED, REFUSE = "train", "resume", "skip", "keep failed", "refuse"


@dataclass(frozen=True)
class Decision:
    action: str  # TRAIN, RESUME, SKIP, KEEP_FAILED or REFUSE
    message: str = ""


def at_least(requested: int | None, saved) -> bool:
    """Whether a length setting (None: no limit) asks for at least as much training as before."""
    if not (saved is None or isinstance(saved, int)):
        return False
    return (math.inf if requested is None else requested) >= (math.inf if saved is None else saved)


def differing_settings(log: dict, spec: RunSpec, allow_longer: bool) -> list[str]:
    """'key saved (requested ...)' for every setting in which an existing log differs from the request.

    A longer run can continue a shorter one only under a constant learning rate: a decaying schedule
    is laid out over the run's length, so its steps so far would differ."""
    allow_longer = allow_longer and spec.training.lr_schedule == "constant"
    differ = []
    for section, requested in spec.settings().items():
        saved = log.get(section) or {}
        for key, value in requested.items():
            old = saved.get(key, value_before_it_was_recorded(key, requested))
            if old == value or (allow_longer and key in LENGTH_SETTINGS and at_least(value, old)):
                continue
            differ.append(f"{key} {old!r} (requested {value!r})")
    return differ


def decide(spec: RunSpec, resume: bool, overwrite: bool) -> Decision:
    """What to do with one requested run, from its existing log and checkpoint.

    --overwrite: train | no log, no checkpoint and no final weights: train | final weights without
    their log: refuse | a checkpoint whose log is missing or unreadable: resume (rebuilding the log)
    with --resume, else refuse | complete, same settings: skip |
    complete, longer num_epochs/max_steps under --resume: resume | other settings: refuse | failed with
    a non-finite loss: stays failed | unfinished: resume with --resume (from step 0 if it has no
    checkpoint: it stopped before its first, or the checkpoint was deleted), else refuse. Only
    --overwrite ever deletes a checkpoint or final weights (a complete run's full checkpoint goes when
    --keep_optimizer did not ask to keep it).
    """
    if overwrite:
        return Decision(TRAIN)
    has_checkpoint = spec.ckpt_path.exists()
    try:
        log = read_log(spec.log_path) if spec.log_path.exists() else None
    except ValueError as err:
        if not has_checkpoint:
            return Decision(REFUSE, f"{spec.log_path} is {err}; --overwrite replaces it")
        return from_checkpoint_alone(spec, resume, f"its log {spec.log_path} is {err}")
    if log is None:
        if has_checkpoint:
            return from_checkpoint_alone(spec, resume, f"its log {spec.log_path} is missing")
        if spec.weights_path.exists():
            return Decision(REFUSE, f"{spec.name}: its log {spec.log_path} is missing but the final weights "
                                    f"{spec.weights_path} exist; --overwrite trains it again and replaces them")
        return Decision(TRAIN)
    status = log["status"]
    changed, changed_beyond_length = (differing_settings(log, spec, allow_longer) for allow_longer in (False, True))
    if changed_beyond_length or (changed and not resume):
        hint = "" if changed_beyond_length else " (or --resume to train it further)"
        return Decision(REFUSE, f"{spec.log_path} holds a run ({status}) with other settings: {'; '.join(changed)}; "
                                f"choose another --output_dir or --run_name{hint}")
    if status == PRUNED:
        return Decision(REFUSE, f"{spec.log_path} holds a run a search pruned at step {last_step(log)}; --overwrite "
                                f"trains it again")
    if failed_non_finite(log):
        return Decision(KEEP_FAILED, f"{spec.name} {status}; --overwrite trains it again")
    if status == COMPLETE:
        if not changed:
            return Decision(SKIP, f"skip {spec.name}: {spec.log_path} is complete with these settings")
        if log.get("stopped_early"):
            return Decision(REFUSE, f"{spec.name}: the run stopped early at step {log['stopped_early']['step']} "
                                    f"(--patience), so there is nothing to train further; --overwrite trains it "
                                    f"again from step 0")
        if not has_checkpoint:
            kept = "its final weights only" if spec.weights_path.exists() else "no checkpoint"
            return Decision(REFUSE, f"{spec.name}: the complete run was saved without its optimizer state ({kept}; "
                                    f"--keep_optimizer keeps it), so it cannot be trained further; --overwrite "
                                    f"trains it again from step 0")
        return Decision(RESUME, f"{spec.name}: training the complete run further")
    if not resume:
        return Decision(REFUSE, f"{spec.log_path} holds an unfinished run ({status}, step {last_step(log)}); "
                                f"--resume continues it, --overwrite starts it again")
    if not has_checkpoint:
        return Decision(TRAIN, f"{spec.name}: starting again from step 0 ({status} at step {last_step(log)}, and no "
                               f"checkpoint {spec.ckpt_path} to resume from)")
    return Decision(RESUME, f"{spec.name}: resuming from its checkpoint ({status} at step {last_step(log)})")


def from_checkpoint_alone(spec: RunSpec, resume: bool, problem: str) -> Decision:
    """A checkpoint holds the run's whole history, so a lost or damaged log is rebuilt from it
    (restore_state checks its settings); without --resume nothing is touched."""
    if resume:
        return Decision(RESUME, f"{spec.name}: {problem}; rebuilding it from checkpoint {spec.ckpt_path} and resuming")
    return Decision(REFUSE, f"{spec.name}: {problem}, but checkpoint {spec.ckpt_path} holds the run: --resume rebuilds "
                            f"the log from it and continues, --overwrite deletes both and starts again")
