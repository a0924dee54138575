"""train_simple.py end to end on a tiny config: log schema, determinism, resume, failures, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

import analyze_results
import metrics
import train_simple
from training.state import NLLSum
from training.settings import build_parser, device_defaults
from conftest import CORPUS_LINES, ROOT, assert_same_run, read_log, run_cli, train_here, without_timings
from run_log import SCHEMA_VERSION


def test_end_to_end_run_writes_a_complete_schema_valid_log(tiny_argv, tmp_path):
    assert train_simple.main(tiny_argv()) == 0
    log = read_log(tmp_path / "out" / "relu_seed3.json")
    assert log["schema_version"] == SCHEMA_VERSION and log["status"] == "complete"
    for key in ("run", "model_config", "train_config", "params", "data", "steps", "epochs", "dynamics", "final"):
        assert key in log
    assert set(log["params"]) == {"total", "non_embedding", "mlp"}
    assert log["run"]["allocator"] in ("glibc, freed memory kept", "default")
    assert log["data"]["train"]["tokens"] > 0 and log["data"]["val"]["bytes"] > 0
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    for entry in log["epochs"]:
        assert {"epoch", "train_loss", "val_loss", "val_ppl", "val_bpb", "val_bpb_approx", "wall_s"} <= set(entry)
    assert log["epochs"][-1]["val_loss"] < log["epochs"][0]["val_loss"]
    steps_per_epoch = -(-log["data"]["train"]["sequences"] // 4)
    assert [s["step"] for s in log["steps"]] == list(range(1, 2 * steps_per_epoch + 1))
    assert {"step", "loss", "grad_norm", "lr", "tokens_per_s", "layer_grad_norms"} <= set(log["steps"][0])
    mlp = log["dynamics"][0]["mlp"][0]
    assert 0 <= mlp["dead_fraction"] <= 1 and 0 < mlp["active_fraction"] < 1
    assert log["final"]["val"]["loss"] == log["epochs"][-1]["val_loss"]


def test_max_steps_run_records_one_partial_epoch(tiny_argv, tmp_path):
    assert train_simple.main(tiny_argv(None, "--max_steps", "3", "--eval_every", "2")) == 0
    log = read_log(tmp_path / "out" / "relu_seed3.json")
    assert len(log["steps"]) == 3 and len(log["epochs"]) == 1 and log["epochs"][0]["partial"]
    assert [e["step"] for e in log["evals"]] == [2] and log["evals"][0]["val_loss"] > 0


def test_same_seed_gives_identical_logs_apart_from_timings(tiny_argv, tmp_path):
    for name in ("a", "b"):
        assert train_simple.main(tiny_argv(tmp_path / name, "--max_steps", "4")) == 0
    a, b = (read_log(tmp_path / n / "relu_seed3.json") for n in ("a", "b"))
    assert without_timings(a) == without_timings(b)


def test_activations_share_data_order_and_non_mlp_init(tiny_argv, tmp_path):
    argv = tiny_argv(None, "--max_steps", "1")
    argv[argv.index("relu")] = "relu swiglu".split()[0]
    assert train_simple.main(argv[:1] + ["relu", "swiglu"] + argv[2:]) == 0
    out = tmp_path / "out"
    assert read_log(out / "relu_seed3.json")["data"] == read_log(out / "swiglu_seed3.json")["data"]
    # After one step the non-MLP weights differ (different gradients), so compare initial weights.
    from transformer_from_scratch import Transformer, TransformerConfig
    cfgs = [TransformerConfig.from_dict(read_log(out / f"{n}_seed3.json")["model_config"]) for n in ("relu", "swiglu")]
    init = [Transformer(c, seed=3).state_dict() for c in cfgs]
    assert all(torch.equal(init[0][k], init[1][k]) for k in init[0] if ".mlp." not in k)
    assert read_log(out / "relu_seed3.json")["progress"]["step"] == read_log(out / "swiglu_seed3.json")["progress"]["step"] == 1


def test_stopped_and_resumed_run_equals_uninterrupted_one(tiny_argv, tmp_path):
    assert train_simple.main(tiny_argv(tmp_path / "full")) == 0
    assert train_simple.main(tiny_argv(tmp_path / "parts", "--max_steps", "5", "--keep_optimizer")) == 0
    assert train_simple.main(tiny_argv(tmp_path / "parts", "--max_steps", "11", "--resume", "--keep_optimizer")) == 0
    assert train_simple.main(tiny_argv(tmp_path / "parts", "--resume")) == 0
    assert_same_run(tmp_path / "full", tmp_path / "parts")
    resumed = read_log(tmp_path / "parts" / "relu_seed3.json")["run"]["resumed"]
    assert [r["at_step"] for r in resumed] == [5, 11]
    assert read_log(tmp_path / "parts" / "relu_seed3.json")["train_config"]["max_steps"] is None  # the last command's


class SimulatedKill(BaseException):
    """Stands for SIGKILL: nothing in the training script catches it."""


def test_kill_during_checkpoint_write_then_resume(tiny_argv, tmp_path, monkeypatch):
    assert train_simple.main(tiny_argv(tmp_path / "full")) == 0
    real_save, calls = torch.save, []

    def dying_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the third checkpoint write dies halfway through
            f.write(b"half a checkpoint")
            raise SimulatedKill
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(SimulatedKill):
        train_simple.main(tiny_argv(tmp_path / "killed"))
    monkeypatch.setattr(torch, "save", real_save)
    checkpoint = tmp_path / "killed" / "checkpoints" / "relu_seed3.pt"
    assert torch.load(checkpoint, weights_only=True)["progress"]["step"] > 0  # the previous one is intact
    assert train_simple.main(tiny_argv(tmp_path / "killed", "--resume")) == 0
    assert_same_run(tmp_path / "full", tmp_path / "killed")


def test_non_finite_loss_stops_the_run_and_keeps_checkpoint_and_log(tiny_argv, tmp_path, monkeypatch, capsys):
    real_forward, calls = NLLSum.forward, []

    def poisoned(self, tokens, targets):
        calls.append(1)
        nll = real_forward(self, tokens, targets)
        return nll * float("nan") if len(calls) >= 5 else nll

    monkeypatch.setattr(NLLSum, "forward", poisoned)
    assert train_simple.main(tiny_argv()) == 1
    log = read_log(tmp_path / "out" / "relu_seed3.json")
    assert log["status"].startswith("failed: non-finite") and "step 5" in log["status"]
    ckpt = torch.load(tmp_path / "out" / "checkpoints" / "relu_seed3.pt", weights_only=True)
    assert ckpt["progress"]["step"] == 3 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert "non-finite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--d_model": "31"}, "d_model=31"),
        ({"--train_split": "train", "--data_dir": "/nonexistent-folder"}, "wiki.train.raw"),
        ({"--output_dir": "/proc/version/out"}, "not writable"),
        ({"--batch_size": "0"}, "--batch_size must be positive"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_argv, capsys, change, message):
    argv = tiny_argv()
    for flag, value in change.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    code, err = train_here(capsys, argv)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]


@pytest.mark.slow
def test_unknown_activation_exits_2_listing_choices(tiny_argv):
    argv = tiny_argv()
    argv[argv.index("relu")] = "xyzzy"  # close to nothing: every choice is listed
    result = run_cli(argv)
    assert result.returncode == 2 and "swiglu" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


ADD = ("a new activation is one entry in transformer_from_scratch/catalog.py's ACTIVATION_TABLE and its function in "
       "activations.py's FUNCTIONS: docs/model.md")


@pytest.mark.parametrize("typo, line", [
    (("--activation", "rleu"), f"error: argument --activation: invalid choice 'rleu'; did you mean 'relu'? ({ADD})"),
    (("--activation", "GELU"), "error: argument --activation: invalid choice 'GELU'; did you mean 'gelu'?"),
    (("--activation", "mish"), f"error: argument --activation: invalid choice 'mish'; did you mean 'swish'? ({ADD})"),
    (("--layout", "pakced"), "error: argument --layout: invalid choice 'pakced'; did you mean 'packed'?"),
    (("--lrr", "1e-3"), "error: unrecognized arguments: --lrr (did you mean --lr?) 1e-3"),
])
def test_a_mistyped_flag_or_choice_is_one_line_with_a_suggestion(capsys, typo, line):
    with pytest.raises(SystemExit) as stop:
        train_simple.main(list(typo))
    assert stop.value.code == 2 and capsys.readouterr().err.splitlines() == [line]


def test_help_states_each_default_once_and_every_flag_has_help():
    parser = build_parser()
    text = parser.format_help()
    assert all(action.help for action in parser._actions), [a.dest for a in parser._actions if not a.help]
    options = text[text.index("\ntraining:"):]  # past the usage lines
    loss_help = options[options.index("  --loss {"):options.index("  --compile")]
    assert loss_help.lower().count("default") == 1  # its own sentence, not argparse's "(default: None)" besides
    assert "(default: 3)" in options[options.index("  --num_epochs"):]  # a plain default is still stated


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tiny_argv, tmp_path):
    single = run_cli(tiny_argv(tmp_path / "single", "--max_steps", "4"))
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
         str(ROOT / "train_simple.py"), *tiny_argv(tmp_path / "ddp", "--max_steps", "4")],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    a, b = (read_log(tmp_path / n / "relu_seed3.json") for n in ("single", "ddp"))
    assert b["run"]["world_size"] == 2
    for sa, sb in zip(a["steps"], b["steps"], strict=True):
        assert sb["loss"] == pytest.approx(sa["loss"], rel=1e-4)
        assert sb["grad_norm"] == pytest.approx(sa["grad_norm"], rel=1e-3)
    assert b["final"]["val"]["loss"] == pytest.approx(a["final"]["val"]["loss"], rel=1e-4)


def test_resume_at_the_stop_point_of_a_mid_epoch_checkpoint_still_records_the_epoch(tiny_argv, tmp_path):
    # checkpoint_every 3 and max_steps 6 in a 16-step run: the run dies after the step-6
    # checkpoint, before the partial-epoch evaluation; resuming must evaluate it, once.
    out = tmp_path / "out"
    assert train_simple.main(tiny_argv(out, "--max_steps", "6", "--keep_optimizer")) == 0
    reference = read_log(out / "relu_seed3.json")
    ckpt_path = out / "checkpoints" / "relu_seed3.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["history"]["epochs"], ckpt["history"]["dynamics"] = [], []
    torch.save(ckpt, ckpt_path)
    log = read_log(out / "relu_seed3.json")
    log["epochs"], log["dynamics"], log["status"], log["final"] = [], [], "running", None
    (out / "relu_seed3.json").write_text(json.dumps(log))
    assert train_simple.main(tiny_argv(out, "--max_steps", "6", "--resume")) == 0
    log = read_log(out / "relu_seed3.json")
    assert log["status"] == "complete" and without_timings(log["epochs"]) == without_timings(reference["epochs"])


@pytest.mark.parametrize("loss", ["fused", "textbook"])
def test_bf16_autocast_steps_are_finite_and_close_to_fp32(tiny_argv, tmp_path, loss):
    logs = {}
    for precision, extra in (("fp32", ()), ("bf16", ("--bf16",))):
        assert train_simple.main(tiny_argv(tmp_path / precision, "--loss", loss, "--max_steps", "4", *extra)) == 0
        logs[precision] = read_log(tmp_path / precision / "relu_seed3.json")
    assert logs["bf16"]["train_config"]["loss"] == loss and logs["bf16"]["train_config"]["bf16"]
    for fp32, bf16 in zip(logs["fp32"]["steps"], logs["bf16"]["steps"], strict=True):
        assert math.isfinite(bf16["loss"]) and bf16["loss"] == pytest.approx(fp32["loss"], rel=1e-2)
    assert logs["bf16"]["final"]["val"]["loss"] == pytest.approx(logs["fp32"]["final"]["val"]["loss"], rel=1e-2)


def test_kernels_default_to_the_devices_and_the_log_records_what_they_resolved_to(tiny_argv, tmp_path):
    assert device_defaults("cpu") == {"loss": "fused", "attn_impl": "einsum"}
    assert device_defaults("cuda") == {"loss": "textbook", "attn_impl": "sdpa"}
    assert device_defaults("mps") == {"loss": "textbook", "attn_impl": "einsum"}
    assert train_simple.main(tiny_argv(None, "--max_steps", "1")) == 0
    log = read_log(tmp_path / "out" / "relu_seed3.json")  # recorded as resolved
    assert log["train_config"]["loss"] == "fused" and log["model_config"]["attn_impl"] == "einsum"
    assert log["run"]["float32_matmul"] == "highest"  # TF32 only on CUDA


def test_cosine_schedule_with_warmup_follows_the_closed_form(tiny_argv, tmp_path):
    peak, warmup, total, floor = 1e-3, 3, 11, 0.1
    argv = tiny_argv(None, "--lr", str(peak), "--lr_schedule", "cosine", "--warmup_steps", str(warmup),
                     "--min_lr_ratio", str(floor), "--max_steps", str(total))
    assert train_simple.main(argv) == 0
    lrs = {s["step"]: s["lr"] for s in read_log(tmp_path / "out" / "relu_seed3.json")["steps"]}
    assert lrs[1] == pytest.approx(peak / 3) and lrs[warmup] == pytest.approx(peak)  # linear warmup to the peak
    assert lrs[7] == pytest.approx(peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 4 / 8))))  # midway
    assert lrs[total] == pytest.approx(floor * peak)  # the last step reaches the floor
    assert all(a >= b for a, b in zip(list(lrs.values())[warmup - 1 :], list(lrs.values())[warmup:]))


def test_a_cosine_run_is_not_extended_by_resume(tiny_argv, tmp_path, capsys):
    cosine = ("--lr_schedule", "cosine")
    assert train_simple.main(tiny_argv(None, *cosine, "--max_steps", "4")) == 0
    assert train_simple.main(tiny_argv(None, *cosine, "--max_steps", "8", "--resume")) == 2  # laid out over 4 steps
    assert "max_steps 4 (requested 8)" in capsys.readouterr().err


def test_several_learning_rates_make_one_run_each_named_by_lr(tiny_argv, tmp_path):
    assert train_simple.main(tiny_argv(None, "--lr", "1e-3", "0.0003", "--seeds", "1", "2", "--max_steps", "2")) == 0
    names = sorted(p.stem for p in (tmp_path / "out").glob("*.json"))
    assert names == ["relu_lr0.0003_seed1", "relu_lr0.0003_seed2", "relu_lr0.001_seed1", "relu_lr0.001_seed2"]
    log = read_log(tmp_path / "out" / "relu_lr0.0003_seed2.json")
    assert log["train_config"]["lr"] == 3e-4 and log["steps"][0]["lr"] == 3e-4
    entry = log["steps"][-1]
    assert entry["train_flops"] == entry["train_tokens_seen"] * log["model_config"]["training_flops_per_token"]


@pytest.mark.slow
def test_a_bf16_run_with_the_fused_loss_stays_within_half_a_percent_of_fp32(tiny_argv, tmp_path):
    steps = ("--max_steps", "300", "--num_epochs", "100", "--log_every", "10", "--checkpoint_every", "1000",
             "--evals_per_epoch", "0")
    assert train_simple.main(tiny_argv(tmp_path / "fp32", *steps)) == 0
    assert train_simple.main(tiny_argv(tmp_path / "bf16", *steps, "--bf16", "--loss", "fused")) == 0
    fp32, bf16 = (read_log(tmp_path / p / "relu_seed3.json") for p in ("fp32", "bf16"))
    assert bf16["train_config"]["bf16"] and not fp32["train_config"]["bf16"]  # the log records the precision
    losses = [(a["loss"], b["loss"]) for a, b in zip(fp32["steps"], bf16["steps"])]
    assert len(losses) == 30 and losses[-1][0] < 0.5 * losses[0][0]  # it learned, over 300 steps
    assert all(a != b for a, b in losses[1:])  # bf16 really ran
    assert max(abs(b - a) / a for a, b in losses) < 0.005


def test_evals_per_epoch_are_spaced_within_each_epoch_never_just_after_its_end(tiny_argv, tmp_path):
    # 30 sequences in batches of 4: 8 steps per epoch; 3 evaluations per epoch -> every 3 steps of an
    # epoch (its end is evaluated anyway). Counted from step 0 instead, the third falls on step 9, the
    # first step of epoch 2, one step after that epoch-end evaluation.
    assert train_simple.main(tiny_argv(None, "--evals_per_epoch", "3")) == 0
    log = read_log(tmp_path / "out" / "relu_seed3.json")
    assert [e["steps"] for e in log["epochs"]] == [8, 16]
    assert [e["step"] for e in log["evals"]] == [3, 6, 11, 14]


def test_eval_tokens_evaluates_a_fixed_subset_during_training_and_the_whole_split_at_the_end(tiny_argv, tmp_path):
    assert train_simple.main(tiny_argv(tmp_path / "whole", "--evals_per_epoch", "2")) == 0
    for name in ("subset", "again"):
        assert train_simple.main(tiny_argv(tmp_path / name, "--evals_per_epoch", "2", "--eval_tokens", "40")) == 0
    whole, subset, again = (read_log(tmp_path / n / "relu_seed3.json") for n in ("whole", "subset", "again"))
    during = subset["data"]["evaluated_during_training"]["val"]
    assert 40 <= during["tokens"] < whole["data"]["val"]["tokens"] and subset["train_config"]["eval_tokens"] == 40
    assert subset["final"] == whole["final"]  # the same training; the final numbers on the whole split
    assert [e["val_loss"] for e in subset["epochs"]] != [e["val_loss"] for e in whole["epochs"]]
    assert [e["val_loss"] for e in subset["evals"]] == [e["val_loss"] for e in again["evals"]]  # a fixed subset


def test_a_metric_is_one_declaration_and_tensorboard_gets_the_logs_scalars(tiny_argv, tmp_path, monkeypatch):
    """A throw-away metric declared at run time (the share of targets longer than three bytes) is in
    every evaluation of the log, in TensorBoard and in the summary, with nothing else changed; and
    TensorBoard's scalars are the log's."""
    pytest.importorskip("tensorboard", reason="tensorboard is an optional dependency")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setitem(metrics.METRIC_TABLE, "long_fraction", metrics.Metric(
        lambda t: t["long_targets"] / t["tokens"], sums={"long_targets": lambda b: (b.bytes > 3).sum()},
        summarised=metrics.ROLES, tabled=("val",), column="{role} long targets", tensorboard="long_fraction"))
    assert train_simple.main(tiny_argv(None, "--max_steps", "5", "--eval_every", "3", "--tensorboard",
                                       str(tmp_path / "tb"))) == 0
    log = read_log(tmp_path / "out" / "relu_seed3.json")
    long_fraction = log["final"]["val"]["long_fraction"]
    assert 0 < long_fraction < 1  # a property of the data: the same at every evaluation of the whole split
    assert [e["val_long_fraction"] for e in log["evals"] + log["epochs"]] == [long_fraction] * 2
    events = EventAccumulator(str(tmp_path / "tb" / "relu_seed3")).Reload()
    losses = {e.step: e.value for e in events.Scalars("train/loss")}
    assert losses == pytest.approx({s["step"]: s["loss"] for s in log["steps"]}, rel=1e-6)
    assert [e.step for e in events.Scalars("val/loss")] == [3, 5]  # the evaluation at 3 and the (partial) epoch end
    assert [e.value for e in events.Scalars("val/long_fraction")] == pytest.approx([long_fraction] * 2)

    assert analyze_results.main([str(tmp_path / "out"), "--metric", "val_long_fraction"]) == 0
    assert "| selection long targets |" in (tmp_path / "out" / "summary.md").read_text()
    assert pd.read_csv(tmp_path / "out" / "summary.csv")["val_long_fraction_mean"].tolist() == [long_fraction]


def test_the_final_report_numbers_are_the_report_splits_whether_or_not_the_last_pass_is_reused(tiny_argv, tmp_path):
    # The run's end reuses its epoch-end pass over the whole splits; with an --eval_tokens subset the
    # epoch-end pass covers part of each split, and the end must evaluate the whole splits anew.
    argv = tiny_argv(None, "--max_steps", "5")
    test_file = tmp_path / "test.txt"
    test_file.write_text("".join(CORPUS_LINES[2:5] * 4), encoding="utf-8")
    argv[argv.index("--test_split") + 1] = str(test_file)
    assert train_simple.main(argv) == 0
    argv[argv.index("--output_dir") + 1] = str(tmp_path / "recomputed")
    assert train_simple.main([*argv, "--eval_tokens", "20"]) == 0
    reused, recomputed = (read_log(tmp_path / d / "relu_seed3.json")["final"] for d in ("out", "recomputed"))
    assert reused == recomputed and reused["test"] != reused["val"]
    assert reused["test"]["tokens"] < reused["val"]["tokens"]  # the test file's own count, not validation's


def test_a_train_fraction_trains_on_half_the_articles_and_says_so(tiny_argv, tmp_path):
    assert train_simple.main(tiny_argv(tmp_path / "all", "--max_steps", "2")) == 0
    assert train_simple.main(tiny_argv(tmp_path / "half", "--max_steps", "2", "--train_fraction", "0.5")) == 0
    full, half = (read_log(tmp_path / f / "relu_seed3.json")["data"] for f in ("all", "half"))
    assert half["train_fraction"] == 0.5 and full["train_fraction"] == 1.0
    assert half["train"]["articles"] == "3 of 6 articles (train_fraction 0.5)"  # the corpus: 6 titled articles
    assert half["train"]["text_tokens"] == full["train"]["text_tokens"] // 2 and half["train"]["sha256"] != full["train"]["sha256"]
    assert train_simple.main(tiny_argv(tmp_path / "bad", "--train_fraction", "0")) == 2


def test_a_log_names_the_cpu_class_its_vector_flags_and_torch_build(tiny_argv, tmp_path):
    assert train_simple.main(tiny_argv(None, "--max_steps", "1")) == 0
    run = read_log(tmp_path / "out" / "relu_seed3.json")["run"]
    cpuinfo = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if "cpu family" in cpuinfo:  # Linux: family, model and stepping tell two CPUs of one name apart
        family = next(line for line in cpuinfo.splitlines() if line.startswith("cpu family")).split(":")[1].strip()
        assert run["cpu_class"].startswith(f"family {family}, model ")
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), ": ").split(":")[1].split()
    assert run["cpu_flags"] == [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    assert run["torch_build"].startswith(torch.__version__) and "CPU kernels" in run["torch_build"]
