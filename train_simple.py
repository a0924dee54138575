"""Train one model per (activation, learning rate, seed) on WikiText-2 and write one JSON log per run.

    python train_simple.py --activation relu --num_epochs 3 --batch_size 8

A run's life, in the order this file reads: the data -> the training state (fresh, or restored from
a checkpoint) -> the loop: a step, an evaluation, a log entry -> the end of an epoch -> the end of
the run -> the entry point: flags -> the runs they ask for -> decide each from its existing log
(train, resume, skip or refuse), before any data is loaded -> load the data once -> train each run
under its lock.

Runs are reproducible (same seed, machine and threads: the same log apart from timings), paired
(for one seed every activation sees the same data order and the same initial weights outside the
MLP) and resumable (training.checkpoint). SIGINT and SIGTERM finish the step, checkpoint and exit
130/143. Under ``torchrun --nproc_per_node=N`` it trains with DistributedDataParallel, the global
batch still ``--batch_size``. The machinery lives in ``training/``: settings (flags, RunSpec),
decide, lock, signals, checkpoint, distributed, machine, watch, export. The log schema is in
docs/cli_and_log.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

import numpy as np
import safetensors.numpy

from baselines import BASELINES_VERSION, Baselines, baseline_losses, target_counts, unigram_log_probs
from data_utils import DataError, TokenizedSplit, default_cache_dir, load_split_text, load_tokenizer, \
    check_offline_inputs, sha256_bytes, token_byte_lengths, tokenize_split, tokenizer_fingerprint
from metrics import evaluate
from run_log import COMPLETE, FAILED, INTERRUPTED, NON_FINITE, PRUNED, RUNNING, SCHEMA_VERSION, WriteError, atomic_write, \
    remove_stale_temporaries, write_log
from training.checkpoint import read_checkpoint, read_final_weights, rng_state, set_rng_state, write_checkpoint, \
    write_final_weights
from training.decide import KEEP_FAILED, REFUSE, RESUME, SKIP, TRAIN, Decision, decide, differing_settings
from training.distributed import Distributed, setup_distributed
from training.export import check_export_targets, try_export
from training.lock import RunLock, RunLocked
from training.machine import default_loss, native_bf16, now, pick_device, run_facts
from training.settings import RunSpec, UsageError, build_parser, check_models, group_flags, run_specs, validate
from training.signals import StopSignal
from training.watch import Watch, evaluation_bar
from transformer_from_scratch import IGNORE_INDEX, Transformer, derived_generator, parameter_counts, parameter_groups, \
    probe, training_flops_per_token

N_PROMPTS, PROMPT_TOKENS, SAMPLE_TOKENS = 3, 24, 40  # text samples at each epoch end
# Where the loss goes and what the model adds to the trigram (metrics.py), in epoch entries beside the loss.
BREAKDOWN_KEYS = ("loss_seen", "loss_unseen", "unseen_fraction", "interp_weight", "interp_loss", "trigram_loss",
                  "interp_gain")


class NonFiniteLoss(Exception):
    """The loss or gradient norm stopped being finite."""


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Data:
    train: TokenizedSplit
    val: TokenizedSplit
    test: TokenizedSplit | None
    byte_lengths: Tensor
    tokenizer: object  # a transformers tokenizer: decodes the text samples
    tokenizer_sha256: str
    test_skipped: str | None = None  # why no test split is evaluated, when one was asked for
    during_training: dict = field(default_factory=dict)  # role -> the (sub)split evaluated during training
    baselines: dict = field(default_factory=dict)  # n-gram baselines on these splits (baselines.py)
    train_counts: Tensor | None = None  # how often each type is a training target (float64, d_vocab)

    @property
    def seen_types(self) -> Tensor:
        """The types that occur as training targets: evaluations split their loss by these."""
        return self.train_counts > 0

    def log_unigram(self) -> Tensor:
        """log p(w) of the unigram baseline (its add-k chosen on the selection split): the output
        bias's starting point under unembed_bias "log_unigram"."""
        k = self.baselines["unigram"]["add_k"]
        return torch.from_numpy(unigram_log_probs(self.train_counts.numpy(), k)).float()

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def roles(self) -> dict[str, TokenizedSplit | None]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def describe(self, data_flags: dict) -> dict:
        return {**data_flags, "tokenizer": self.tokenizer.name_or_path, "tokenizer_sha256": self.tokenizer_sha256,
                **{role: split.info if split is not None else None for role, split in self.roles.items()},
                "test_skipped": self.test_skipped, "baselines": self.baselines,
                "evaluated_during_training": {role: {k: split.info[k] for k in ("sequences", "tokens")}
                                              for role, split in self.during_training.items()}}

    def identity(self) -> dict[str, str | None]:
        """What a checkpoint must have been trained on to be resumed with this data."""
        return {"tokenizer": self.tokenizer_sha256,
                **{role: split.info["sha256"] if split is not None else None for role, split in self.roles.items()}}


def load_data(args: argparse.Namespace) -> Data:
    """The three splits, tokenized. Splits are the same when their contents are (sha256), whatever
    their names: a validation split equal to the training data is refused, and such a test split is
    skipped, with the reason in the log, because its numbers would be training loss."""
    tokenizer = load_tokenizer(args.tokenizer)
    byte_lengths = token_byte_lengths(tokenizer)
    train_text, val_text = load_split_text(args.train_split, args.data_dir), load_split_text(args.val_split, args.data_dir)
    if val_text.sha256 == train_text.sha256:
        raise DataError(f"validation split {args.val_split!r} has the same contents as train split {args.train_split!r} "
                        f"(sha256 {val_text.sha256[:12]}): nothing would be held out")
    test_text, test_skipped = None, None
    if args.test_split.lower() != "none":
        test_text = load_split_text(args.test_split, args.data_dir)
        same_as = [role for role, text in (("train", train_text), ("validation", val_text))
                   if text.sha256 == test_text.sha256]
        if same_as:
            test_skipped = (f"test split {args.test_split!r} has the same contents as the {same_as[0]} split "
                            f"(sha256 {test_text.sha256[:12]}), so it is not evaluated")
            print(f"note: {test_skipped}", file=sys.stderr)
            test_text = None

    def tokenized(text) -> TokenizedSplit:
        return tokenize_split(text, tokenizer, args.layout, args.max_length, byte_lengths, args.cache_dir)

    data = Data(tokenized(train_text), tokenized(val_text), tokenized(test_text) if test_text else None,
                byte_lengths, tokenizer, tokenizer_fingerprint(tokenizer), test_skipped)
    for role, split in (("train", data.train), ("validation", data.val)):
        if split.info["tokens"] == 0:
            raise DataError(f"the {role} split {split.info['split']!r} has no scored tokens (every sequence is a "
                            f"single token)")
    baselines = cached_baselines(data, args.cache_dir)
    data.baselines = baselines.losses
    for role, split in (("val", data.val), ("test", data.test)):
        if split is not None:  # the trigram's per-target NLL, for interpolating the model with it
            split.reference_nll = torch.from_numpy(baselines.token_nll[role])
    data.train_counts = torch.from_numpy(target_counts(data.train.tokens.numpy(), data.train.lengths.numpy(),
                                                       data.vocab_size))
    data.during_training = {role: evaluation_subset(split, args.eval_tokens) for role, split in
                            (("val", data.val), ("test", data.test)) if split is not None}
    return data


def evaluation_subset(split: TokenizedSplit, n_tokens: int | None) -> TokenizedSplit:
    """The split, or a fixed subset of its sequences with about ``n_tokens`` scored tokens: a prefix
    of one permutation that depends on nothing but the split's size, so every run evaluates the same
    sequences, spread over the whole split."""
    if n_tokens is None:
        return split
    order = torch.randperm(len(split), generator=derived_generator(0, "evaluation subset"))
    scored = torch.clamp(split.lengths[order] - 1, min=0).cumsum(0)
    chosen = order[: int(torch.searchsorted(scored, n_tokens)) + 1].sort().values
    subset = TokenizedSplit(split.tokens[chosen], split.lengths[chosen],
                            reference_nll=None if split.reference_nll is None else split.reference_nll[chosen])
    subset.info = {**split.info, "sequences": len(subset), "tokens": int(scored[len(chosen) - 1])}
    return subset


def cached_baselines(data: Data, cache_dir: Path | None) -> Baselines:
    """The n-gram baselines of these splits, computed once per data identity (seconds) and cached:
    their losses as JSON, the trigram's per-target NLL beside them as safetensors (numbers only)."""
    evaluated = {role: split for role, split in (("val", data.val), ("test", data.test)) if split is not None}
    identity = {"version": BASELINES_VERSION, "tokenizer": data.tokenizer_sha256, "vocab": data.vocab_size,
                **{role: {k: split.info[k] for k in ("sha256", "layout", "max_length")}
                   for role, split in (("train", data.train), *evaluated.items())}}
    key = sha256_bytes(json.dumps(identity, sort_keys=True).encode())[:32]
    path = (cache_dir or default_cache_dir()) / f"baselines-{key}.json"
    nll_path = path.with_suffix(".safetensors")
    try:
        cached = json.loads(path.read_text())
        token_nll = safetensors.numpy.load(nll_path.read_bytes())
        if (isinstance(cached, dict) and cached.get("identity") == identity and set(token_nll) == set(evaluated)
                and all(token_nll[role].shape == split.tokens.shape for role, split in evaluated.items())):
            return Baselines(cached["baselines"], token_nll)
    except Exception:  # noqa: BLE001 - missing, damaged or foreign: any of these is computed again
        pass
    as_arrays = {role: (split.tokens.numpy(), split.lengths.numpy(), split.info["bytes"])
                 for role, split in evaluated.items()}
    computed = baseline_losses((data.train.tokens.numpy(), data.train.lengths.numpy()), as_arrays, data.vocab_size, "val")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(nll_path, safetensors.numpy.save({role: np.ascontiguousarray(nll)
                                                       for role, nll in computed.token_nll.items()}))
        atomic_write(path, json.dumps({"identity": identity, "baselines": computed.losses}).encode())
    except (OSError, WriteError) as err:
        print(f"warning: could not cache the n-gram baselines: {err}", file=sys.stderr)
    return computed


# ---------------------------------------------------------------------------------------------
# How runs execute here


@dataclass
class Runtime:
    """How runs execute here: everything a run needs that is not one of its settings."""

    device: torch.device
    ddp: Distributed
    stop: StopSignal
    flags: dict  # the execution and sources flags
    facts: dict  # command, versions, machine: recorded under run


# ---------------------------------------------------------------------------------------------
# Training state: what a checkpoint holds, and what the log is written from


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


@dataclass
class History:
    """Everything the run has measured so far, and when it started and resumed."""

    started: str = field(default_factory=now)
    git: dict = field(default_factory=dict)  # git_commit, git_dirty of the first segment (resumed: the later ones)
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
    optimizer = torch.optim.AdamW(parameter_groups_for_decay(model), lr=spec.train_config["lr"],
                                  weight_decay=spec.train_config["weight_decay"],
                                  fused=rt.device.type in ("cpu", "cuda"))
    forward: nn.Module = NLLSum(model, fused=spec.train_config["loss"] == "fused")
    if rt.ddp.world > 1:
        forward = nn.parallel.DistributedDataParallel(forward)
    if spec.train_config["compile"]:
        forward = torch.compile(forward)
    return TrainingState(model, optimizer, forward, Progress(),
                         History(git={key: rt.facts[key] for key in ("git_commit", "git_dirty")}))


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


def save_final_weights(spec: RunSpec, state: TrainingState, rt: Runtime) -> None:
    """A complete run's final weights (safetensors), written before its log says complete; the full
    checkpoint goes only after that log (see drop_full_checkpoint), so a crash anywhere in between
    leaves a run that --resume completes, never a complete log without weights."""
    if rt.ddp.main:
        write_final_weights(spec.weights_path, state.model.state_dict(),
                            {"run": spec.name, "step": state.progress.step, **spec.settings()})


def drop_full_checkpoint(spec: RunSpec, rt: Runtime) -> None:
    """A complete run keeps its full checkpoint (AdamW state) only under --keep_optimizer; the best
    point's weights (--keep best) are its final weights by now."""
    if rt.ddp.main:
        spec.best_weights_path.unlink(missing_ok=True)
        if not rt.flags["keep_optimizer"]:
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
                                  "git_commit": rt.facts["git_commit"], "git_dirty": rt.facts["git_dirty"]})
    return state


def build_log(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, status: str, final: dict | None = None) -> dict:
    """The run's log, written from its state: nothing here is read back to steer the run."""
    h, p = state.history, state.progress
    return {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "run": {"name": spec.name, **rt.facts, **h.git, "threads": torch.get_num_threads(), "flags": rt.flags,
                "started": h.started, "ended": None if status == RUNNING else now(), "resumed": h.resumed},
        "model_config": {**state.model.cfg.to_dict(), "training_flops_per_token": training_flops_per_token(state.model.cfg)},
        "train_config": spec.train_config,
        "params": parameter_counts(state.model),
        "data": data.describe(spec.data_flags),
        "progress": {"step": p.step, "epoch": p.epoch, "batch_in_epoch": p.batch_in_epoch},
        "steps": h.steps, "evals": h.evals, "epochs": h.epochs, "dynamics": h.dynamics, "samples": h.samples,
        "stopped_early": early_stop(spec, p),
        "final": final,
    }


def early_stop(spec: RunSpec, p: Progress) -> dict | None:
    """Where --patience ended the run, and its best selection point; None while it has not."""
    if not p.stopped_early:
        return None
    return {"step": p.step, "patience": spec.train_config["patience"], "best_step": p.best_step,
            "best_val_loss": p.best_val_loss}


def save_log(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, status: str, final: dict | None = None) -> None:
    if rt.ddp.main:
        write_log(build_log(spec, state, data, rt, status, final), spec.log_path)


# ---------------------------------------------------------------------------------------------
# The loop


def epoch_order(seed: int, epoch: int, n: int) -> Tensor:
    """The training order of one epoch: a function of seed and epoch only, so every activation
    sees the same order and a resumed run picks up exactly where it stopped."""
    return torch.randperm(n, generator=derived_generator(seed, f"data order, epoch {epoch}"))


def steps_per_epoch(spec: RunSpec, data: Data) -> int:
    return math.ceil(len(data.train) / spec.train_config["batch_size"])


def total_steps(spec: RunSpec, data: Data) -> int:
    """The run's length in optimizer steps: what a decaying schedule is laid out over."""
    by_epochs = spec.train_config["num_epochs"] * steps_per_epoch(spec, data)
    max_steps = spec.train_config["max_steps"]
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
    if rt.flags["eval_every"]:
        return progress.step % rt.flags["eval_every"] == 0
    if rt.flags["evals_per_epoch"]:
        return progress.batch_in_epoch % math.ceil(per_epoch / rt.flags["evals_per_epoch"]) == 0
    return False


def compute_so_far(spec: RunSpec, state: TrainingState) -> dict:
    """Cumulative training tokens, FLOPs and seconds: the x axes of compute-matched comparisons."""
    p = state.progress
    return {"train_tokens_seen": p.tokens_seen, "train_flops": p.tokens_seen * training_flops_per_token(state.model.cfg),
            "train_seconds": p.train_seconds}


def finished(spec: RunSpec, progress: Progress) -> bool:
    max_steps = spec.train_config["max_steps"]
    return (progress.epoch > spec.train_config["num_epochs"] or progress.stopped_early
            or (max_steps is not None and progress.step >= max_steps))


def grad_norm(params: list[nn.Parameter]) -> float:
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def rank_batch(data: Data, index: Tensor, ddp: Distributed) -> tuple[Tensor, Tensor]:
    """This rank's share of a global batch (all of it in a single process)."""
    share = index[ddp.rank :: ddp.world]
    if len(share) == 0:  # a short last batch: take part in the gradient sync with zero loss
        inputs, targets = data.train.batch(index[:1])
        return inputs, torch.full_like(targets, IGNORE_INDEX)
    return data.train.batch(share)


def train_step(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, index: Tensor,
               record: bool) -> tuple[Tensor, int, Tensor, dict | None]:
    """One optimizer step on a global batch: (global summed NLL, scored tokens, grad norm, per-group
    grad norms when ``record``)."""
    cfg = spec.train_config
    inputs, targets = rank_batch(data, index, rt.ddp)
    n_tokens = int(torch.clamp(data.train.lengths[index] - 1, min=0).sum())
    state.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=cfg["bf16"]):
        nll = state.forward(inputs.to(rt.device), targets.to(rt.device))
    # Token-weighted mean over the global batch; DDP averages gradients over ranks, hence * world.
    (nll * (rt.ddp.world / max(n_tokens, 1))).backward()
    group_norms = {k: grad_norm(v) for k, v in parameter_groups(state.model).items()} if record else None
    norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg["grad_clip"] or math.inf)
    lr = learning_rate(state.progress.step + 1, cfg["lr"], cfg["lr_schedule"], cfg["warmup_steps"],
                       total_steps(spec, data), cfg["min_lr_ratio"])
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.optimizer.step()
    return rt.ddp.all_sum(nll.detach().reshape(1))[0], n_tokens, norm, group_norms


def check_finite(step: int, *values: Tensor | float) -> None:
    if not all(math.isfinite(float(v)) for v in values):
        raise NonFiniteLoss(f"{NON_FINITE} loss or gradient norm at step {step}")


def split_metrics(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, split: TokenizedSplit,
                  interp_weight: float | None = None) -> dict:
    return evaluate(state.model, split, data.byte_lengths, rt.flags["eval_batch_size"], rt.device,
                    rt.ddp.rank, rt.ddp.world, rt.ddp.all_sum, fused=spec.train_config["loss"] == "fused",
                    shown=evaluation_bar(split.info["split"], rt.ddp.main), seen_types=data.seen_types,
                    interp_weight=interp_weight)


def evaluate_splits(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, whole: bool) -> tuple[dict, dict]:
    """The validation (selection) split's metrics and the test (report) split's, {} without one: the
    whole splits, or the subsets evaluated during training. The report split is evaluated at every
    evaluation so that a point chosen on the selection split can be reported on a split nothing was
    chosen on; its interpolation with the trigram takes the weight the selection split chose."""
    splits = {"val": data.val, "test": data.test} if whole else data.during_training
    val = split_metrics(spec, state, data, rt, splits["val"])
    if splits.get("test") is None:
        return val, {}
    return val, split_metrics(spec, state, data, rt, splits["test"], val.get("interp_weight"))


def note_selection(spec: RunSpec, state: TrainingState, rt: Runtime, val_loss: float) -> None:
    """Count an evaluation of the selection split for --patience and --keep best: a new best point
    (whose weights --keep best saves), or one more evaluation without improvement. An evaluation at
    a step already counted (a partial epoch's end right after an evaluation) counts once."""
    p, cfg = state.progress, spec.train_config
    if p.step <= p.last_selection_step:
        return
    p.last_selection_step = p.step
    if val_loss < p.best_val_loss:
        p.best_val_loss, p.best_step, p.evals_since_best = val_loss, p.step, 0
        if cfg["keep"] == "best" and rt.ddp.main:
            write_final_weights(spec.best_weights_path, state.model.state_dict(),
                                {"run": spec.name, "step": p.step, **spec.settings()})
    else:
        p.evals_since_best += 1
    p.stopped_early = cfg["patience"] is not None and p.evals_since_best >= cfg["patience"]


def prefixed(prefix: str, metrics: dict, keys: tuple[str, ...] | None = None) -> dict:
    """``metrics`` under the log's names for its split: {"val_loss": ...}."""
    return {f"{prefix}_{k}": v for k, v in metrics.items() if keys is None or k in keys}


def end_epoch(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, partial: bool) -> None:
    """Evaluate the epoch and record it with its dynamics."""
    p, h = state.progress, state.history
    check_finite(p.step, p.epoch_nll)
    val, test = evaluate_splits(spec, state, data, rt, whole=False)
    note_selection(spec, state, rt, val["loss"])
    if data.during_training["val"] is data.val:  # the whole splits: the final numbers may reuse them
        h.last_val = {"step": p.step, "metrics": val, "test": test}
    h.epochs.append({
        "epoch": p.epoch, "partial": partial, "steps": p.step, "train_loss": float(p.epoch_nll) / p.epoch_tokens,
        "clipped_fraction": int(p.epoch_clipped) / max(p.batch_in_epoch, 1),
        "train_tokens": p.epoch_tokens, "val_loss": val["loss"], "val_ppl": val["ppl"], "val_bpb": val["bpb"],
        "val_bpb_approx": val["bpb_approx"], "val_bytes_per_token": val["bytes_per_token"],
        **prefixed("test", test, ("loss", "ppl", "bpb")), **prefixed("val", val, BREAKDOWN_KEYS),
        **prefixed("test", test, BREAKDOWN_KEYS), "wall_s": p.epoch_wall,
        "train_tokens_per_s": p.epoch_tokens / p.epoch_wall if p.epoch_wall else None, **compute_so_far(spec, state),
    })
    recorded = [s["layer_grad_norms"] for s in h.steps if s["epoch"] == p.epoch]
    n_probe = min(spec.train_config["probe_sequences"], len(data.val))
    inputs, targets = data.val.batch(torch.arange(n_probe))
    h.dynamics.append({
        "epoch": p.epoch, "partial": partial,
        "layer_grad_norms": {k: sum(r[k] for r in recorded) / len(recorded) for k in (recorded[0] if recorded else {})},
        **probe(state.model, inputs.to(rt.device), (targets != IGNORE_INDEX).to(rt.device)),
    })
    h.samples.append({"epoch": p.epoch, "partial": partial, "step": p.step,
                      "prompts": continue_prompts(state.model, data, spec.seed, rt.device)})


def sample_prompts(split: TokenizedSplit) -> list[Tensor]:
    """Three fixed prompts: the first PROMPT_TOKENS tokens of validation sequences spread over the
    split, chosen among those long enough to be a real paragraph."""
    long_enough = (split.lengths >= 2 * PROMPT_TOKENS).nonzero().flatten()
    picks = long_enough[torch.linspace(0, len(long_enough) - 1, N_PROMPTS).long()] if len(long_enough) else long_enough
    return [split.tokens[i, :PROMPT_TOKENS] for i in picks]


def continue_prompts(model: Transformer, data: Data, seed: int, device: torch.device) -> list[dict]:
    """Each prompt continued by SAMPLE_TOKENS tokens, greedy and sampled at temperature 0.8; the
    sampling generator comes from the seed alone, so a rerun writes the same text."""
    generator = derived_generator(seed, "samples")
    out = []
    for prompt in sample_prompts(data.val):
        context = prompt[None].to(device)
        greedy = model.generate(context, SAMPLE_TOKENS)[0, PROMPT_TOKENS:]
        sampled = model.generate(context, SAMPLE_TOKENS, temperature=0.8, generator=generator)[0, PROMPT_TOKENS:]
        out.append({key: data.tokenizer.decode(ids.tolist()) for key, ids in
                    (("prompt", prompt), ("greedy", greedy), ("sampled", sampled))})
    return out


def epoch_recorded(state: TrainingState) -> bool:
    """Whether the epoch under way was already evaluated at the current step (a resumed stop point)."""
    last = state.history.epochs[-1] if state.history.epochs else None
    return last is not None and (last["epoch"], last["steps"]) == (state.progress.epoch, state.progress.step)


def stop_requested(rt: Runtime) -> bool:
    """Whether a signal asked to stop, agreed by every rank so that they stop at the same step."""
    asked = rt.stop.signum is not None
    return bool(rt.ddp.all_sum(torch.tensor([float(asked)])) > 0) if rt.ddp.world > 1 else asked


def run_epoch(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, watch: Watch) -> str | None:
    """Train through the rest of the current epoch; returns why it stopped early ("max_steps",
    "patience" or "signal"), or None at the epoch's end. The log is rewritten at every logged step, so a reader
    (the analysis, a person) always sees where the run is."""
    p, h, cfg = state.progress, state.history, spec.train_config
    per_epoch, batch_size = steps_per_epoch(spec, data), cfg["batch_size"]
    order = epoch_order(spec.seed, p.epoch, len(data.train))
    interval_start, interval_tokens = time.perf_counter(), 0
    while p.batch_in_epoch < per_epoch:
        if cfg["max_steps"] is not None and p.step >= cfg["max_steps"]:
            return "max_steps"
        if stop_requested(rt):
            return "signal"
        started = time.perf_counter()
        record = (p.step + 1) % rt.flags["log_every"] == 0
        index = order[p.batch_in_epoch * batch_size : (p.batch_in_epoch + 1) * batch_size]
        nll, n_tokens, norm, group_norms = train_step(spec, state, data, rt, index, record)
        p.step, p.batch_in_epoch = p.step + 1, p.batch_in_epoch + 1
        p.epoch_nll = p.epoch_nll + nll.double()  # stays on the device: no sync per step
        p.epoch_clipped = p.epoch_clipped + (norm > cfg["grad_clip"] if cfg["grad_clip"] else 0)
        p.epoch_tokens += n_tokens
        p.tokens_seen += n_tokens
        p.epoch_wall += time.perf_counter() - started
        p.train_seconds += time.perf_counter() - started
        interval_tokens += n_tokens
        if record:
            loss = nll / max(n_tokens, 1)
            check_finite(p.step, loss, norm)
            elapsed = time.perf_counter() - interval_start
            h.steps.append({"step": p.step, "epoch": p.epoch, "loss": loss.item(), "grad_norm": norm.item(),
                            "lr": state.optimizer.param_groups[0]["lr"], "tokens_per_s": interval_tokens / elapsed,
                            **compute_so_far(spec, state), "layer_grad_norms": group_norms})
            interval_start, interval_tokens = time.perf_counter(), 0
        watch.step(p.step, p.epoch, p.train_seconds, h.steps[-1] if record else None)
        if evaluation_due(rt, p, per_epoch):
            evaluation_started = time.perf_counter()
            val, test = evaluate_splits(spec, state, data, rt, whole=False)
            note_selection(spec, state, rt, val["loss"])
            h.evals.append({"step": p.step, "epoch": p.epoch, **compute_so_far(spec, state),
                            **prefixed("val", val), **prefixed("test", test)})
            evaluation_seconds = time.perf_counter() - evaluation_started
            interval_start += evaluation_seconds  # tokens/s counts training time only, as train_seconds does
            watch.evaluated(p.step, h.evals[-1], evaluation_seconds)
        checkpoint = p.step % rt.flags["checkpoint_every"] == 0 and p.batch_in_epoch < per_epoch
        if checkpoint:
            check_finite(p.step, nll, norm)
            save_checkpoint(spec, state, data, rt)
        if record or checkpoint:
            save_log(spec, state, data, rt, RUNNING)
        if p.stopped_early:
            return "patience"
    return None


def train(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime) -> str:
    """Train to the run's length, or until a signal; returns COMPLETE, INTERRUPTED or PRUNED."""
    save_log(spec, state, data, rt, RUNNING)
    folder = rt.flags["tensorboard"]
    watch = Watch(spec.name, total_steps(spec, data), state.progress.step, training_flops_per_token(state.model.cfg),
                  rt.flags["status_every"], Path(folder) if folder else None, rt.ddp.main)
    try:
        return train_epochs(spec, state, data, rt, watch)
    finally:
        watch.close()


def train_epochs(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, watch: Watch) -> str:
    p = state.progress
    while p.epoch <= spec.train_config["num_epochs"] and not p.stopped_early:
        stopped_by = run_epoch(spec, state, data, rt, watch)
        if stopped_by == "signal" and rt.stop.pruned:  # a search's pruner: the run is over, its log says so
            save_log(spec, state, data, rt, PRUNED)
            spec.ckpt_path.unlink(missing_ok=True)
            spec.best_weights_path.unlink(missing_ok=True)
            return PRUNED
        if stopped_by == "signal":
            save_checkpoint(spec, state, data, rt)
            save_log(spec, state, data, rt, INTERRUPTED)
            return INTERRUPTED
        if p.epoch_tokens and not epoch_recorded(state):  # a resumed stop point may owe its evaluation
            evaluation_started = time.perf_counter()
            end_epoch(spec, state, data, rt, partial=stopped_by is not None)
            watch.evaluated(p.step, state.history.epochs[-1], time.perf_counter() - evaluation_started)
        if stopped_by is None:
            p.epoch, p.batch_in_epoch, p.epoch_nll, p.epoch_tokens, p.epoch_wall = p.epoch + 1, 0, 0.0, 0, 0.0
            p.epoch_clipped = 0
        save_checkpoint(spec, state, data, rt)
        if stopped_by is not None or p.stopped_early:
            break
        save_log(spec, state, data, rt, RUNNING)
    final = final_metrics(spec, state, data, rt)
    save_final_weights(spec, state, rt)
    save_log(spec, state, data, rt, COMPLETE, final)
    drop_full_checkpoint(spec, rt)
    return COMPLETE


def final_metrics(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime) -> dict:
    """The whole splits' numbers of the weights the run keeps, which the model then holds: its last
    weights (reusing the epoch end's evaluation when it was of the whole splits at this very step),
    or under --keep best those of its best selection point, read back from where note_selection
    saved them."""
    p, last, keep = state.progress, state.history.last_val, spec.train_config["keep"]
    step = p.best_step if keep == "best" and p.best_step else p.step
    if step != p.step:
        state.model.load_state_dict(read_final_weights(spec.best_weights_path.parent, spec.best_weights_path.stem))
    if last is not None and last["step"] == step:
        val, test = last["metrics"], last["test"]
    else:
        val, test = evaluate_splits(spec, state, data, rt, whole=True)
    state.history.last_val = {"step": step, "metrics": val, "test": test}
    return {"step": step, "kept": keep, "val": val, **({"test": test} if data.test is not None else {})}


# ---------------------------------------------------------------------------------------------
# Entry point


def report(decision: Decision, ddp: Distributed) -> None:
    if decision.message and ddp.main:
        prefix = "error: " if decision.action in (REFUSE, KEEP_FAILED) else ""
        print(prefix + decision.message, file=sys.stderr)


def train_one(spec: RunSpec, decision: Decision, data: Data, rt: Runtime) -> int:
    """Train or resume one run; its exit status (0, 1 failed, 130/143 interrupted)."""
    remove_stale_temporaries(spec.log_path)
    remove_stale_temporaries(spec.ckpt_path)
    if decision.action == TRAIN and rt.ddp.main:  # only --overwrite trains beside these (see decide)
        for path in (spec.ckpt_path, spec.weights_path, spec.best_weights_path):
            path.unlink(missing_ok=True)
    state = restore_state(spec, data, rt) if decision.action == RESUME else fresh_state(spec, data, rt)
    try:
        status = train(spec, state, data, rt)
    except (NonFiniteLoss, WriteError, KeyboardInterrupt) as err:
        reason = INTERRUPTED if isinstance(err, KeyboardInterrupt) else f"{FAILED}: {err}"
        try:
            save_log(spec, state, data, rt, reason)
        except WriteError:
            pass  # the write that failed is already being reported; the previous log is intact
        if isinstance(err, KeyboardInterrupt):
            print(f"interrupted: {spec.name} at step {state.progress.step}", file=sys.stderr)
            return rt.stop.exit_code
        message = f"error: {spec.name}: {err}"
        if isinstance(err, NonFiniteLoss):  # say what survives; a write error already names its file
            message += f"; last good checkpoint {spec.ckpt_path}" if spec.ckpt_path.exists() else "; no checkpoint was written"
        print(message, file=sys.stderr)
        return 1
    if status in (INTERRUPTED, PRUNED):
        if rt.ddp.main:
            print(f"pruned: {spec.name} at step {state.progress.step} (by a search)" if status == PRUNED else
                  f"interrupted: {spec.name} at step {state.progress.step}; --resume continues it", file=sys.stderr)
        return rt.stop.exit_code
    if rt.ddp.main:
        val, wall = state.history.last_val["metrics"], sum(e["wall_s"] for e in state.history.epochs)
        print(f"{spec.name}: val loss {val['loss']:.4f}  ppl {val['ppl']:.2f}  bits/byte {val['bpb']:.4f}  "
              f"train {wall:.0f}s  log {spec.log_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with StopSignal() as stop:
        return run_all(parser, args, stop, ["train_simple.py", *(sys.argv[1:] if argv is None else argv)])


def run_all(parser: argparse.ArgumentParser, args: argparse.Namespace, stop: StopSignal, command: list[str]) -> int:
    """Decide, then train, every requested run; the command's exit status."""
    ddp = Distributed()
    try:
        validate(args)
        device = pick_device(args.device)
        args.loss = args.loss or default_loss(device)
        specs = run_specs(parser, args)
        check_models(specs, args.export_hf is not None)
        if args.export_hf is not None:
            check_export_targets(specs, args)
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.tensorboard is not None and importlib.util.find_spec("tensorboard") is None:
            raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard")
        if args.bf16 and device.type == "cpu" and not native_bf16():
            print("note: --bf16 on a CPU without native bf16 (no avx512_bf16 or amx_bf16): expect it to be much "
                  "slower than fp32", file=sys.stderr)
        ddp = setup_distributed(device)
        if args.batch_size % ddp.world:
            raise UsageError(f"--batch_size {args.batch_size} is not divisible by {ddp.world} processes")
        if device.type == "cuda" and ddp.world > 1:
            device = torch.device("cuda", torch.cuda.current_device())
        plan = [(spec, decide(spec, args.resume, args.overwrite)) for spec in specs]
        if any(d.action in (TRAIN, RESUME) for _, d in plan):  # before any lock file exists
            check_offline_inputs([args.train_split, args.val_split, *([args.test_split] if args.test_split.lower() != "none"
                                                                       else [])], args.data_dir, args.tokenizer)
        for spec in specs:  # a run another process is training is refused now, not after loading data
            with RunLock(spec, enabled=ddp.main):
                pass
        refusals = [d for _, d in plan if d.action == REFUSE]
        for decision in refusals:
            report(decision, ddp)
        if refusals:
            return 2
        failed = 0
        for spec, decision in plan:
            if decision.action in (SKIP, KEEP_FAILED):
                report(decision, ddp)
                failed += decision.action == KEEP_FAILED
            if decision.action == SKIP and args.export_hf and ddp.main:
                failed += try_export(spec, args)
        todo = [spec for spec, d in plan if d.action in (TRAIN, RESUME)]
        if not todo:
            return 1 if failed else 0
        flags = {**group_flags(parser, args, "sources"), **group_flags(parser, args, "execution")}
        rt = Runtime(device, ddp, stop, flags, run_facts(command, device, ddp))
        data = load_data(args)
        for spec in todo:
            if stop.signum is not None:
                return stop.exit_code
            with RunLock(spec, enabled=ddp.main):
                decision = ddp.from_main(decide(spec, args.resume, args.overwrite))  # again, now that it is ours
                report(decision, ddp)
                if decision.action == REFUSE:
                    return 2
                if decision.action not in (TRAIN, RESUME):
                    failed += decision.action == KEEP_FAILED
                    continue
                code = train_one(spec, decision, data, rt)
            if code > 1:
                return code
            if code == 0 and args.export_hf and ddp.main:
                failed += try_export(spec, args)
            failed += code
        return 1 if failed else 0
    except (UsageError, DataError, RunLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return stop.exit_code
    finally:
        if ddp.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
