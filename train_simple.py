"""Train one model per (activation, learning rate, seed) on WikiText-2 and write one JSON log per run.

    python train_simple.py --activation relu --num_epochs 3 --batch_size 8

In the order this file reads: the run's loop (fit: epochs of steps, evaluations, checkpoints, its
end) -> its parts (a step, an evaluation within an epoch, an epoch's end, a signal, the final
numbers) -> the log -> one run under its lock (train_one) -> the entry point (main, run_all): flags
(training/flags.py declares them) -> the runs they ask for -> decide each from its existing log
(train, resume, skip or refuse), before any data is loaded -> load the data once
(training/data.py) -> train each run from a fresh or restored state (training/state.py).

Runs are reproducible (same seed, machine and threads: the same log apart from timings), paired
(for one seed every activation sees the same data order and the same initial weights outside the
MLP) and resumable (training.checkpoint). SIGINT and SIGTERM finish the step, checkpoint and exit
130/143. Under ``torchrun --nproc_per_node=N`` it trains with DistributedDataParallel, the global
batch still ``--batch_size``. The machinery lives in ``training/``: flags (every flag, typed),
settings (the parser, RunSpec), data, state, schedule, evaluation, decide, lock, signals,
checkpoint, distributed, machine, watch, export. The log schema is in docs/cli_and_log.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time

import torch
import torch.distributed as dist
from torch import Tensor, nn

from data_utils import DataError, check_offline_inputs
from preregistration import declaration, dirty_refusal, store_code_change
from run_log import COMPLETE, EXIT_BAD_INPUT, EXIT_HELD, FAILED, INTERRUPTED, NON_FINITE, PRUNED, RUNNING, \
    SCHEMA_VERSION, WriteError, remove_stale_temporaries, write_log
from training.checkpoint import read_final_weights
from training.data import Data, load_data
from training.decide import KEEP_FAILED, REFUSE, RESUME, SKIP, TRAIN, Decision, decide
from training.distributed import Distributed, setup_distributed
from training.evaluation import continue_prompts, eval_entry, evaluate_splits, note_selection
from training.export import check_export_targets, try_export
from training.lock import RunLock, RunLocked
from training.machine import enable_tf32, native_bf16, now, pick_device, run_facts
from training.schedule import epoch_order, evaluation_due, learning_rate, steps_per_epoch, total_steps
from training.flags import Execution, Sources, values_of
from training.settings import RunSpec, UsageError, build_parser, check_models, fill_device_defaults, run_specs, \
    validate
from training.signals import StopSignal
from training.state import Progress, Runtime, TrainingState, drop_full_checkpoint, fresh_state, restore_state, \
    save_checkpoint, save_final_weights
from training.watch import Watch
from transformer_from_scratch import IGNORE_INDEX, parameter_counts, parameter_groups, probe, training_flops_per_token


class NonFiniteLoss(Exception):
    """The loss or gradient norm stopped being finite."""


def fit(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, watch: Watch) -> str:
    """The run's loop, from wherever its state stands: epochs of optimizer steps, an evaluation when
    one is due and at each epoch's end, a checkpoint every --checkpoint_every steps and at each
    epoch's end, the log rewritten at every logged step (a reader always sees where the run is).
    It ends at the run's length (COMPLETE), at --patience (COMPLETE), or at a signal (INTERRUPTED,
    or PRUNED when a search's pruner sent it)."""
    p, cfg = state.progress, spec.training
    per_epoch = steps_per_epoch(spec, data)
    while p.epoch <= cfg.num_epochs and not p.stopped_early:
        order = epoch_order(spec.seed, p.epoch, len(data.train))
        stopped_by = None  # or "max_steps", "signal", "patience": why the epoch ends before its last batch
        while p.batch_in_epoch < per_epoch and stopped_by is None:
            if cfg.max_steps is not None and p.step >= cfg.max_steps:
                stopped_by = "max_steps"
            elif stop_requested(rt):
                stopped_by = "signal"
            else:
                logged = take_step(spec, state, data, rt, order, watch)
                if evaluation_due(rt, p, per_epoch):
                    evaluate_within_epoch(spec, state, data, rt, watch)
                checkpoint = p.step % rt.execution.checkpoint_every == 0 and p.batch_in_epoch < per_epoch
                if checkpoint:
                    save_checkpoint(spec, state, data, rt)
                if logged or checkpoint:
                    save_log(spec, state, data, rt, RUNNING)
                stopped_by = "patience" if p.stopped_early else None
        if stopped_by == "signal":
            return stop_at_signal(spec, state, data, rt)
        if p.epoch_tokens and not epoch_recorded(state):  # a resumed stop point may owe its evaluation
            evaluation_started = time.perf_counter()
            end_epoch(spec, state, data, rt, partial=stopped_by is not None)
            watch.evaluated(p.step, state.history.epochs[-1], time.perf_counter() - evaluation_started)
        if stopped_by is None:
            p.next_epoch()
        save_checkpoint(spec, state, data, rt)
        if stopped_by is not None:
            break
        save_log(spec, state, data, rt, RUNNING)
    final = final_metrics(spec, state, data, rt)
    save_final_weights(spec, state, rt)
    save_log(spec, state, data, rt, COMPLETE, final)
    drop_full_checkpoint(spec, rt)
    return COMPLETE


def take_step(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, order: Tensor, watch: Watch) -> bool:
    """The epoch's next batch, one optimizer step, its sums in the epoch's running totals; every
    --log_every steps a step entry (loss, gradient norms, lr, and the tokens per second of the training
    steps since the previous entry).
    Whether the step was logged."""
    p, h, cfg = state.progress, state.history, spec.training
    started = time.perf_counter()
    logged = (p.step + 1) % rt.execution.log_every == 0
    index = order[p.batch_in_epoch * cfg.batch_size : (p.batch_in_epoch + 1) * cfg.batch_size]
    nll, n_tokens, norm, group_norms = train_step(spec, state, data, rt, index, logged)
    seconds = time.perf_counter() - started
    p.step, p.batch_in_epoch = p.step + 1, p.batch_in_epoch + 1
    p.epoch_nll = p.epoch_nll + nll.double()  # stays on the device: no sync per step
    p.epoch_clipped = p.epoch_clipped + (norm > cfg.grad_clip if cfg.grad_clip else 0)
    p.epoch_tokens, p.tokens_seen = p.epoch_tokens + n_tokens, p.tokens_seen + n_tokens
    p.epoch_wall, p.train_seconds = p.epoch_wall + seconds, p.train_seconds + seconds
    if logged or p.step % rt.execution.checkpoint_every == 0:  # nothing non-finite is logged or checkpointed
        check_finite(p.step, nll, norm)
    if logged:
        loss = nll / max(n_tokens, 1)
        previous = h.steps[-1] if h.steps else {"train_tokens_seen": 0, "train_seconds": 0.0}
        tokens_per_s = (p.tokens_seen - previous["train_tokens_seen"]) / (p.train_seconds - previous["train_seconds"])
        h.steps.append({"step": p.step, "epoch": p.epoch, "loss": loss.item(), "grad_norm": norm.item(),
                        "lr": state.optimizer.param_groups[0]["lr"], "tokens_per_s": tokens_per_s,
                        **compute_so_far(spec, state), "layer_grad_norms": group_norms})
    watch.step(p.step, p.epoch, p.train_seconds, h.steps[-1] if logged else None)
    return logged


def train_step(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, index: Tensor,
               record: bool) -> tuple[Tensor, int, Tensor, dict | None]:
    """One optimizer step on a global batch: (global summed NLL, scored tokens, grad norm, per-group
    grad norms when ``record``)."""
    cfg = spec.training
    inputs, targets = rank_batch(data, index, rt.ddp)
    n_tokens = int(torch.clamp(data.train.lengths[index] - 1, min=0).sum())
    state.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        nll = state.forward(inputs.to(rt.device), targets.to(rt.device))
    # Token-weighted mean over the global batch; DDP averages gradients over ranks, hence * world.
    (nll * (rt.ddp.world / max(n_tokens, 1))).backward()
    group_norms = {k: grad_norm(v) for k, v in parameter_groups(state.model).items()} if record else None
    norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip or math.inf)
    lr = learning_rate(state.progress.step + 1, cfg.lr, cfg.lr_schedule, cfg.warmup_steps,
                       total_steps(spec, data), cfg.min_lr_ratio)
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    state.optimizer.step()
    return rt.ddp.all_sum(nll.detach().reshape(1))[0], n_tokens, norm, group_norms


def rank_batch(data: Data, index: Tensor, ddp: Distributed) -> tuple[Tensor, Tensor]:
    """This rank's share of a global batch (all of it in a single process)."""
    share = index[ddp.rank :: ddp.world]
    if len(share) == 0:  # a short last batch: take part in the gradient sync with zero loss
        inputs, targets = data.train.batch(index[:1])
        return inputs, torch.full_like(targets, IGNORE_INDEX)
    return data.train.batch(share)


def grad_norm(params: list[nn.Parameter]) -> float:
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def check_finite(step: int, *values: Tensor | float) -> None:
    if not all(math.isfinite(float(v)) for v in values):
        raise NonFiniteLoss(f"{NON_FINITE} loss or gradient norm at step {step}")


def evaluate_within_epoch(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, watch: Watch) -> None:
    """An evaluation between an epoch's steps (--eval_every, --evals_per_epoch): both splits, an
    evals entry, and the selection point for --patience and --keep best."""
    started = time.perf_counter()
    val, test = evaluate_splits(spec, state, data, rt, whole=False)
    note_selection(spec, state, rt, val["loss"])
    state.history.evals.append({"step": state.progress.step, "epoch": state.progress.epoch,
                                **compute_so_far(spec, state), **eval_entry(val, test)})
    watch.evaluated(state.progress.step, state.history.evals[-1], time.perf_counter() - started)


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
        "train_tokens": p.epoch_tokens, **eval_entry(val, test), "wall_s": p.epoch_wall,
        "train_tokens_per_s": p.epoch_tokens / p.epoch_wall if p.epoch_wall else None, **compute_so_far(spec, state),
    })
    if rt.execution.probes:
        recorded = [s["layer_grad_norms"] for s in h.steps if s["epoch"] == p.epoch]
        n_probe = min(spec.training.probe_sequences, len(data.val))
        inputs, targets = data.val.batch(torch.arange(n_probe))
        h.dynamics.append({
            "epoch": p.epoch, "partial": partial,
            "layer_grad_norms": {k: sum(r[k] for r in recorded) / len(recorded) for k in (recorded[0] if recorded else {})},
            **probe(state.model, inputs.to(rt.device), (targets != IGNORE_INDEX).to(rt.device)),
        })
    if rt.execution.samples:
        h.samples.append({"epoch": p.epoch, "partial": partial, "step": p.step,
                          "prompts": continue_prompts(state.model, data, spec.seed, rt.device)})


def epoch_recorded(state: TrainingState) -> bool:
    """Whether the epoch under way was already evaluated at the current step (a resumed stop point)."""
    last = state.history.epochs[-1] if state.history.epochs else None
    return last is not None and (last["epoch"], last["steps"]) == (state.progress.epoch, state.progress.step)


def stop_requested(rt: Runtime) -> bool:
    """Whether a signal asked to stop, agreed by every rank so that they stop at the same step."""
    asked = rt.stop.signum is not None
    return bool(rt.ddp.all_sum(torch.tensor([float(asked)])) > 0) if rt.ddp.world > 1 else asked


def stop_at_signal(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime) -> str:
    """A signal ended the run here: a search's pruner ends it for good (PRUNED, its files gone), any
    other stops it where --resume continues (INTERRUPTED, checkpointed)."""
    if rt.stop.pruned:
        save_log(spec, state, data, rt, PRUNED)
        for path in (spec.ckpt_path, *spec.best_weights_files()):
            path.unlink(missing_ok=True)
        return PRUNED
    save_checkpoint(spec, state, data, rt)
    save_log(spec, state, data, rt, INTERRUPTED)
    return INTERRUPTED


def final_metrics(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime) -> dict:
    """The whole splits' numbers of the weights the run keeps, which the model then holds: its last
    weights (reusing the epoch end's evaluation when it was of the whole splits at this very step),
    or under --keep best those of its best selection point, read back from where note_selection
    saved them."""
    p, last, keep = state.progress, state.history.last_val, spec.training.keep
    step = p.best_step if keep == "best" and p.best_step else p.step
    if step != p.step:
        best = spec.best_weights_path(step)
        state.model.load_state_dict(read_final_weights(best.parent, best.stem))
    if last is not None and last["step"] == step:
        val, test = last["metrics"], last["test"]
    else:
        val, test = evaluate_splits(spec, state, data, rt, whole=True)
    state.history.last_val = {"step": step, "metrics": val, "test": test}
    return {"step": step, "kept": keep, "val": val, **({"test": test} if data.test is not None else {})}


def build_log(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, status: str, final: dict | None = None) -> dict:
    """The run's log, written from its state: nothing here is read back to steer the run."""
    h, p = state.history, state.progress
    return {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "run": {"name": spec.name, **rt.facts, **h.git, **({"study": h.study} if h.study else {}), "threads": torch.get_num_threads(), "flags": rt.flags,
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
    return {"step": p.step, "patience": spec.training.patience, "best_step": p.best_step,
            "best_val_loss": p.best_val_loss}


def save_log(spec: RunSpec, state: TrainingState, data: Data, rt: Runtime, status: str, final: dict | None = None) -> None:
    if rt.ddp.main:
        write_log(build_log(spec, state, data, rt, status, final), spec.log_path)


def compute_so_far(spec: RunSpec, state: TrainingState) -> dict:
    """Cumulative training tokens, FLOPs and seconds: the x axes of compute-matched comparisons."""
    p = state.progress
    return {"train_tokens_seen": p.tokens_seen, "train_flops": p.tokens_seen * training_flops_per_token(state.model.cfg),
            "train_seconds": p.train_seconds}


def train_one(spec: RunSpec, decision: Decision, data: Data, rt: Runtime) -> int:
    """Train or resume one run; its exit status (0, 1 failed, 130/143 interrupted)."""
    remove_stale_temporaries(spec.log_path)
    remove_stale_temporaries(spec.ckpt_path)
    if decision.action == TRAIN and rt.ddp.main:  # only --overwrite trains beside these (see decide)
        for path in (spec.ckpt_path, spec.weights_path, *spec.best_weights_files()):
            path.unlink(missing_ok=True)
    state = restore_state(spec, data, rt) if decision.action == RESUME else fresh_state(spec, data, rt)
    watch = Watch(spec.name, total_steps(spec, data), state.progress.step, training_flops_per_token(state.model.cfg),
                  rt.execution.status_every, rt.execution.tensorboard, rt.ddp.main, split_labels(data),
                  subsets=data.during_training["val"] is not data.val)
    try:
        save_log(spec, state, data, rt, RUNNING)
        status = fit(spec, state, data, rt, watch)
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
    finally:
        watch.close()
    if status in (INTERRUPTED, PRUNED):
        if rt.ddp.main:
            print(f"pruned: {spec.name} at step {state.progress.step} (by a search)" if status == PRUNED else
                  f"interrupted: {spec.name} at step {state.progress.step}; --resume continues it", file=sys.stderr)
        return rt.stop.exit_code
    if rt.ddp.main:
        last, wall = state.history.last_val, sum(e["wall_s"] for e in state.history.epochs)
        numbers = "; ".join(f"{label}: loss {m['loss']:.4f}, ppl {m['ppl']:.2f}, bits/byte {m['bpb']:.4f}"
                            for label, m in zip(split_labels(data).values(), (last["metrics"], last["test"])) if m)
        print(f"{spec.name} (whole splits, step {last['step']}): {numbers}; trained {wall:.0f} s; log {spec.log_path}")
    return 0


def say_decision(decision: Decision, ddp: Distributed) -> None:
    if decision.message and ddp.main:
        prefix = "error: " if decision.action in (REFUSE, KEEP_FAILED) else ""
        print(prefix + decision.message, file=sys.stderr)


def split_labels(data: Data) -> dict[str, str]:
    """Each evaluated split by its role and name: {"val": "selection validation:A", "test": ...}."""
    return {role: f"{label} {split.info['split']}" for role, label, split in
            (("val", "selection", data.val), ("test", "report", data.test)) if split is not None}


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
        fill_device_defaults(args, device.type)
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
                                                                       else [])], args.data_dir, args.tokenizer, command)
        for spec in specs:  # a run another process is training is refused now, not after loading data
            spec.lock_path.parent.mkdir(parents=True, exist_ok=True)  # the first folder this command leaves behind
            with RunLock(spec, enabled=ddp.main):
                pass
        refusals = [d for _, d in plan if d.action == REFUSE]
        for decision in refusals:
            say_decision(decision, ddp)
        if refusals:
            return 2
        failed = 0
        for spec, decision in plan:
            if decision.action in (SKIP, KEEP_FAILED):
                say_decision(decision, ddp)
                failed += decision.action == KEEP_FAILED
            if decision.action == SKIP and args.export_hf and ddp.main:
                failed += try_export(spec, args)
        todo = [spec for spec, d in plan if d.action in (TRAIN, RESUME)]
        if not todo:
            return 1 if failed else 0
        sources, execution = (settings(**values_of(settings, args)) for settings in (Sources, Execution))
        facts = run_facts(command, device, ddp) | ({"study": declaration(args.study_file)} if args.study_file else {})
        facts["float32_matmul"] = enable_tf32(device)
        change = facts.pop("code_change")
        if change and args.study_file and not args.allow_dirty:
            raise UsageError(dirty_refusal(change))
        if change and (args.study_file or args.allow_dirty) and ddp.main:
            facts |= store_code_change(change, args.output_dir)
        rt = Runtime(device, ddp, stop, sources, execution, facts)
        data = load_data(args)
        for spec in todo:
            if stop.signum is not None:
                return stop.exit_code
            with RunLock(spec, enabled=ddp.main):
                decision = ddp.from_main(decide(spec, args.resume, args.overwrite))  # again, now that it is ours
                say_decision(decision, ddp)
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
    except (UsageError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunLocked as err:  # not bad input: the run is another process's now (study.py says so)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_HELD
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return stop.exit_code
    finally:
        if ddp.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
