"""The machinery in training/, each module alone (the lifecycle tests drive them through train_simple)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch

from training import settings
from training.checkpoint import read_checkpoint, read_final_weights, write_checkpoint, write_final_weights
from training.decide import REFUSE, TRAIN, decide


def one_spec(tmp_path) -> settings.RunSpec:
    parser = settings.build_parser()
    args = parser.parse_args(["--activation", "relu", "--seeds", "7", "--output_dir", str(tmp_path)])
    [spec] = settings.run_specs(parser, args)
    return spec


def test_final_weights_round_trip_and_a_damaged_file_is_one_line(tmp_path):
    weights = {"embed.W_E": torch.randn(5, 3), "blocks.0.mlp.b_in": torch.randn(4)}
    write_final_weights(tmp_path / "run.safetensors", weights, {"run": "run", "step": 3})
    read = read_final_weights(tmp_path, "run")
    assert read.keys() == weights.keys() and all(torch.equal(read[k], weights[k]) for k in weights)
    (tmp_path / "run.safetensors").write_bytes((tmp_path / "run.safetensors").read_bytes()[:40])
    with pytest.raises(ValueError, match="cannot read the final weights of run"):
        read_final_weights(tmp_path, "run")
    with pytest.raises(ValueError, match="no final weights"):
        read_final_weights(tmp_path, "absent")


def test_a_run_completed_before_final_weights_existed_is_read_from_its_full_checkpoint(tmp_path):
    model = {"embed.W_E": torch.randn(5, 3)}
    write_checkpoint(tmp_path / "old.pt", {"model": model, "optimizer": {}})
    assert torch.equal(read_final_weights(tmp_path, "old")["embed.W_E"], model["embed.W_E"])


def test_a_checkpoint_of_another_format_is_refused(tmp_path):
    torch.save({"format": 2, "model": {}}, tmp_path / "old.pt")
    with pytest.raises(settings.UsageError, match="not a format-3 checkpoint"):
        read_checkpoint(tmp_path / "old.pt", torch.device("cpu"))


def test_final_weights_without_their_log_are_not_trained_over(tmp_path):
    spec = one_spec(tmp_path)
    assert decide(spec, resume=True, overwrite=False).action == TRAIN
    spec.weights_path.parent.mkdir(parents=True)
    spec.weights_path.write_bytes(b"weights")
    for resume in (False, True):
        decision = decide(spec, resume=resume, overwrite=False)
        assert decision.action == REFUSE and str(spec.weights_path) in decision.message
    assert decide(spec, resume=False, overwrite=True).action == TRAIN


@pytest.mark.parametrize("flags, expected", [
    ([], {"d_model": 256, "n_heads": 4, "n_layers": 2, "d_mlp": 1024}),  # the reference study's model by default
    (["--size", "tiny"], {"d_model": 64, "n_heads": 2, "n_layers": 2, "d_mlp": 256}),
    (["--size", "small"], {"d_model": 128, "n_heads": 4, "n_layers": 2, "d_mlp": 512}),
    (["--size", "small", "--n_layers", "3"], {"d_model": 128, "n_heads": 4, "n_layers": 3, "d_mlp": 512}),
])
def test_a_named_size_sets_the_four_model_flags_and_a_flag_given_overrides_it(tmp_path, flags, expected):
    parser = settings.build_parser()
    args = parser.parse_args(["--activation", "relu", "--output_dir", str(tmp_path), *flags])
    [spec] = settings.run_specs(parser, args)
    assert {key: spec.model_flags[key] for key in expected} == expected
    assert "size" not in spec.model_flags  # the log records the dimensions, not the name


def check_folder_repeatedly(folder: str, rounds: int) -> int:
    """check_writable on one new folder ``rounds`` times; how many times it said the folder was unusable."""
    failures = 0
    for _ in range(rounds):
        try:
            settings.check_writable(Path(folder) / "rung" / "checkpoints", "output folder")
        except settings.UsageError:
            failures += 1
    return failures


def test_two_processes_checking_one_new_output_folder_at_once_both_find_it_writable(tmp_path):
    # a study's --jobs 2 starts two runs of a new rung at once: each check creates the rung's folders and
    # removes them again, and one process's removal must not make the other's check fail
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        failures = pool.starmap(check_folder_repeatedly, [(str(tmp_path), 300)] * 2)
    assert failures == [0, 0]  # (an empty folder may be left: each removes only what it created, if empty)
