"""The package: every top-level module is installed, and sample.py continues prompts with a run."""

from __future__ import annotations

import tomllib

import torch

import sample
import train_simple
from conftest import ROOT


def test_every_top_level_module_is_in_the_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    modules = set(config["tool"]["setuptools"]["py-modules"])
    assert modules == {p.stem for p in ROOT.glob("*.py")}
    for script in config["project"]["scripts"].values():
        assert script.split(":")[0] in modules


def test_sample_continues_a_prompt_with_the_runs_final_weights(tiny_argv, tmp_path, capsys):
    assert train_simple.main(tiny_argv(None, "--max_steps", "3")) == 0
    log = tmp_path / "out" / "relu_seed3.json"
    capsys.readouterr()
    assert sample.main([str(log), "--prompt", " The café", "--prompt", " A", "--max_new_tokens", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(" The café") and len(lines[0]) > len(" The café")
    model, tokenizer = sample.load_run_model(log)
    tokens = torch.tensor([tokenizer.encode(" The café")])
    expected = tokenizer.decode(model.generate(tokens, 5)[0, tokens.shape[1]:].tolist())
    assert lines[0] == " The café" + expected  # greedy: the trained model's own continuation


def test_sample_refuses_an_unfinished_run_in_one_line(tiny_argv, tmp_path, capsys):
    assert train_simple.main(tiny_argv(None, "--max_steps", "3")) == 0
    log = tmp_path / "out" / "relu_seed3.json"
    log.write_text(log.read_text().replace('"status": "complete"', '"status": "interrupted"'))
    assert sample.main([str(log), "--prompt", "x"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error:") and "not a complete run" in line
