"""A run's training state (model, optimizer, progress, history): what a checkpoint holds and what the
log is written from; made fresh, saved, restored, and reduced to final weights at the end."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from training.checkpoint import (final_weights_step, read_checkpoint, rng_state, set_rng_state, write_checkpoint,
                                 write_final_weights)
from training.data import Data
from training.decide import differing_settings
from training.distributed import Distributed
from training.flags import Execution, Sources, json_ready
from preregistration import GIT_KEYS
from training.machine import now
from training.settings import RunSpec, UsageError
from training.signals import StopSignal
from transformer_from_scratch import Transformer


@dataclass
class Runtime:
    """How runs execute here: everything a run needs that is not one of its settings."""

    device: torch.device
    ddp: Distributed
    stop: StopSignal
    sources: Sources
    execution: Execution
    facts: dict  # command, versions, machine: recorded under run

    @property
    def flags(self) -> dict:
        """The sources and execution flags, as the log records them under run.flags."""
        return json_ready(self.sources) | json_ready(self.execution)


@dataclass
class Progress:
    """Completed steps, the epoch under way, the next batch in it, and that epoch's running sums."""

    step: int = 0
    epoch: int = 1
    batch_in_epoch: int = 0
    epoch_nll: float = 0.0
    epoch_clipped: int = 0  # steps of this epoch whose gradient norm was clipped
    epoch_tokens: int = 0
    epoch_wall: float = 0.0
    tokens_seen: int = 0  # scored training tokens since step 0
    train_seconds: float = 0.0  # time spent in training steps since step 0 (evaluations excluded)
    best_val_loss: float = math.inf  # the selection loss at its best evaluation so far, and that step
    best_step: int = 0
    evals_since_best: int = 0  # evaluations since then that did not improve on it (for --patience)
    last_selection_step: int = 0  # the step of the last evaluation counted above (each step counts once)
    stopped_early: bool = False  # --patience ran out

    def next_epoch(self) -> None:
        """Start the next epoch at its first batch, its running sums at zero."""
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.epoch_nll, self.epoch_clipped, self.epoch_tokens, self.epoch_wall = 0.0, 0, 0, 0.0


@dataclass
class History:
    """Everything the run has measured so far, and when it started and resumed."""

    started: str = field(default_factory=now)
    git: dict = field(default_factory=dict)  # GIT_KEYS of the first segment (resumed: the later ones)
    study: dict | None = None  # the study file's declaration when the run first started (--study_file)
    resumed: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    epochs: list = field(default_factory=list)
    dynamics: list = field(default_factory=list)
    samples: list = field(default_factory=list)
    last_val: dict | None = None  # {"step", "metrics", "test"} of the latest whole-split evaluation at an epoch end


@dataclass
class TrainingState:
    model: Transformer
    optimizer: torch.optim.Optimizer
    forward: nn.Module  # the module computing the summed NLL: the model, wrapped for DDP and compile
    progress: Progress
    history: History


class NLLSum(nn.Module):
    """(tokens, targets) -> summed NLL; the module DDP wraps, so gradients sync on backward."""

    def __init__(self, model: Transformer, fused: bool) -> None:
        super().__init__()
        self.model, self.fused = model, fused

    def forward(self, tokens: Tensor, targets: Tensor) -> Tensor:
        return self.model.nll_sum(tokens, targets, fused=self.fused)


def fresh_state(spec: RunSpec, data: Data, rt: Runtime) -> TrainingState:
    torch.manual_seed(spec.seed)  # dropout draws from the global generator (its state is checkpointed)
    model = Transformer(spec.model_config(data.vocab_size), seed=spec.seed)
    if model.unembed.b_U is not None:
        model.init_unembed_bias(data.log_unigram())
    model = model.to(rt.device)
    optimizer = torch.optim.AdamW(parameter_groups_for_decay(model), lr=spec.training.lr,
                                  weight_decay=spec.training.weight_decay,
                                  fused=rt.device.type in ("cpu", "cuda"))
    forward: nn.Module = NLLSum(model, fused=spec.training.loss == "fused")
    if rt.ddp.world > 1:
        forward = nn.parallel.DistributedDataParallel(forward)
    if spec.training.compile:
        forward = torch.compile(forward)
    return TrainingState(model, optimizer, forward, Progress(),
                         History(git={key: rt.facts[key] for key in GIT_KEYS if key in rt.facts},
                                 study=rt.facts.get("study")))


def parameter_groups_for_decay(model: Transformer) -> list[dict]:
    """AdamW's parameter groups: every parameter decayed, as in the reference study, except the output
    bias, which starts at the log unigram and would be pulled from it towards uniform."""
    bias = model.unembed.b_U
    if bias is None:
        return [{"params": list(model.parameters())}]
    return [{"params": [p for p in model.parameters() if p is not bias]}, {"params": [bias], "weight_decay": 0.0}]


def save_checkpoint(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime) -> None:
    """The whole training state, for --resume (training.checkpoint): only tensors and plain values."""
    if rt.ddp.main:
        progress = {**asdict(state.progress), "epoch_nll": float(state.progress.epoch_nll),
                    "epoch_clipped": int(state.progress.epoch_clipped)}
        write_checkpoint(spec.ckpt_path, {
            "settings": spec.settings(), "data": data.identity(), "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(), "progress": progress, "history": asdict(state.history),
            "rng": rng_state(rt.device)})
        kept = spec.best_weights_path(state.progress.best_step)  # the best point this checkpoint names
        for path in spec.best_weights_files():
            if path != kept:
                path.unlink(missing_ok=True)


def save_final_weights(spec: RunSpec, state: TrainingState, rt: Runtime) -> None:
    """A complete run's final weights (safetensors), written before its log says complete; the full
    checkpoint goes only after that log (see drop_full_checkpoint), so a crash anywhere in between
    leaves a run that --resume completes, never a complete log without weights."""
    if rt.ddp.main:
        write_final_weights(spec.weights_path, state.model.state_dict(),
                            {"run": spec.name, "step": state.progress.step, **spec.settings()})


def drop_full_checkpoint(spec: RunSpec, rt: Runtime) -> None:
    """A complete run keeps what training it further needs only under --keep_optimizer: its full
    checkpoint (AdamW state) and, under --keep best, its best point's weights, which are its final
    weights by now but which a longer run that finds no better point reports again."""
    if rt.ddp.main and not rt.execution.keep_optimizer:
        for path in spec.best_weights_files():
            path.unlink(missing_ok=True)
        spec.ckpt_path.unlink(missing_ok=True)


def restore_state(spec: RunSpec, data: Data, rt: Runtime) -> TrainingState:
    """The state saved in the run's checkpoint, loaded without executing anything in the file."""
    ckpt = read_checkpoint(spec.ckpt_path, rt.device)
    differ = differing_settings(ckpt["settings"], spec, allow_longer=True)
    if differ:
        raise UsageError(f"checkpoint {spec.ckpt_path} was written with other settings: {'; '.join(differ)}")
    if ckpt["data"] != data.identity():
        changed = [role for role in ckpt["data"] if ckpt["data"][role] != data.identity()[role]]
        raise UsageError(f"checkpoint {spec.ckpt_path} was trained on other data ({', '.join(changed)} differ)")
    require_best_weights(spec, Progress(**ckpt["progress"]))
    state = fresh_state(spec, data, rt)
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.progress = Progress(**ckpt["progress"])
    if "rng" in ckpt:  # checkpoints before dropout existed have none, and needed none
        set_rng_state(ckpt["rng"], rt.device)
    state.history = History(**ckpt["history"])
    if not finished(spec, state.progress):
        # A run stopped mid-epoch by --max_steps evaluated that partial epoch; it goes on now, so the
        # partial entries are dropped and measured again when the epoch really ends.
        state.history.epochs = [e for e in state.history.epochs if not e["partial"]]
        state.history.dynamics = [d for d in state.history.dynamics if not d["partial"]]
        state.history.samples = [d for d in state.history.samples if not d["partial"]]
    state.history.resumed.append({"at_step": state.progress.step, "time": now(), "command": rt.facts["command"],
                                  **{key: rt.facts[key] for key in GIT_KEYS if key in rt.facts}})
    return state


def require_best_weights(spec: RunSpec, progress: Progress) -> None:
    """Under --keep best a run reads its best point's weights back when it ends; resumed without them
    (a checkpoint copied without its .best-step<N>.safetensors) it would train to the end and fail
    there, so it fails before training. A checkpoint of an older version names the one-file
    .best.safetensors; holding that step, it takes the new name."""
    if spec.training.keep != "best" or not progress.best_step:
        return
    path, older = spec.best_weights_path(progress.best_step), spec.ckpt_path.with_name(f"{spec.name}.best.safetensors")
    if final_weights_step(path) != progress.best_step and final_weights_step(older) == progress.best_step:
        older.replace(path)
    found = final_weights_step(path)
    if found != progress.best_step:
        held = "is missing or unreadable" if found is None else f"holds step {found}"
        raise UsageError(f"--keep best: the best point's weights (step {progress.best_step}) are not beside the "
                         f"checkpoint: {path} {held}; copy it from where the run began, or train afresh with "
                         "--overwrite")


def finished(spec: RunSpec, progress: Progress) -> bool:
    max_steps = spec.training.max_steps
    return (progress.epoch > spec.training.num_epochs or progress.stopped_early
            or (max_steps is not None and progress.step >= max_steps))
