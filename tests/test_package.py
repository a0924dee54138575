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
    assert set(config["tool"]["setuptools"]["packages"]) == {p.parent.name for p in ROOT.glob("*/__init__.py")}
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
    assert sample.main([str(log), "--max_new_tokens", "2"]) == 0  # no --prompt: the default one
    assert capsys.readouterr().out.startswith(sample.DEFAULT_PROMPT)


def test_sample_refuses_an_unfinished_run_in_one_line(tiny_argv, tmp_path, capsys):
    assert train_simple.main(tiny_argv(None, "--max_steps", "3")) == 0
    log = tmp_path / "out" / "relu_seed3.json"
    log.write_text(log.read_text().replace('"status": "complete"', '"status": "interrupted"'))
    capsys.readouterr()
    assert sample.main([str(log), "--prompt", "x"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error:") and "not a complete run" in line


def test_sample_takes_a_folder_with_one_complete_run_and_names_the_choices_otherwise(tiny_argv, tmp_path, capsys):
    out = tmp_path / "out"
    assert train_simple.main(tiny_argv(None, "--max_steps", "2")) == 0
    (out / "summary.json").write_text("[]")  # not a run log: not a choice
    capsys.readouterr()
    assert sample.main([str(out), "--prompt", " A", "--max_new_tokens", "3"]) == 0
    from_folder = capsys.readouterr().out
    assert sample.main([str(out / "relu_seed3.json"), "--prompt", " A", "--max_new_tokens", "3"]) == 0
    assert capsys.readouterr().out == from_folder
    assert train_simple.main(tiny_argv(None, "--max_steps", "2", "--seeds", "4")) == 0
    capsys.readouterr()
    assert sample.main([str(out), "--prompt", " A"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "2 complete runs (relu_seed3.json, relu_seed4.json)" in line


def project_imports() -> dict[str, set[str]]:
    """Each of the project's modules (top level and packages) -> the project modules it imports."""
    import ast

    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in [*ROOT.glob("*.py"), *ROOT.glob("*/*.py")] if p.parent.name not in ("tests", "benchmarks")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)] \
                if isinstance(node, ast.ImportFrom) and node.module and not node.level else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []  # (from a package, a module too)
            imported |= {t for t in targets if t in modules and t != name}
        graph[name] = imported
    return graph


def test_no_module_imports_one_that_imports_it_back():
    graph = project_imports()
    assert {"analysis.runs", "training.data", "ngrams", "train_simple"} <= set(graph)  # it sees the house

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start])

    circles = sorted(name for name in graph if reaches(name, name, {name}))
    assert circles == []


def test_sample_refuses_weights_of_another_shape_a_nan_temperature_and_an_unbounded_length(tiny_argv, tmp_path,
                                                                                          capsys):
    import safetensors.torch

    assert train_simple.main(tiny_argv(None, "--max_steps", "2")) == 0
    log = tmp_path / "out" / "relu_seed3.json"
    for argv, message in ((["--temperature", "nan"], "--temperature must be a finite number"),
                          (["--temperature", "inf"], "--temperature must be a finite number"),
                          (["--max_new_tokens", str(sample.MAX_NEW_TOKENS + 1)], "--max_new_tokens must be in 1..")):
        capsys.readouterr()
        assert sample.main([str(log), *argv]) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert message in line
    weights = tmp_path / "out" / "checkpoints" / "relu_seed3.safetensors"
    state = safetensors.torch.load(weights.read_bytes())
    state["blocks.0.mlp.W_in"] = torch.zeros(3, 5)  # a real safetensors file, of another model's shape
    weights.write_bytes(safetensors.torch.save(state))
    capsys.readouterr()
    assert sample.main([str(log)]) == 2  # the default prompt
    [line] = capsys.readouterr().err.splitlines()
    assert "do not fit the model its log describes" in line and "W_in" in line
