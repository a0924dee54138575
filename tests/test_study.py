"""A study file drives its runs and its analysis; only declared comparisons get verdicts."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

import analyze_results
import train_simple
from conftest import ROOT, study_command
from study_file import StudyError, load_study

TINY_TRAIN = """
[train]
d_model = 32
d_mlp = 48
n_heads = 2
n_layers = 1
max_length = 16
max_steps = 3
test_split = "none"
log_every = 1
probe_sequences = 4
evals_per_epoch = 2
"""


def write_study(folder, corpus_dir, tokenizer_dir, cache, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = (f'train_split = "{corpus_dir / "train.txt"}"\nval_split = "{corpus_dir / "valid.txt"}"\n'
            f'tokenizer = "{tokenizer_dir}"\ncache_dir = "{cache}"\n')
    (folder / "study.toml").write_text(body + TINY_TRAIN + data)


DECLARED = """
name = "tiny"
baseline = "relu"
seeds = [1, 2, 3]
lrs = [1e-3]
comparisons = [["gelu", "relu"]]
metric = "val_loss"
secondary = ["val_bpb"]
point = "best_selection"
uncertainty = "seeds+articles"
[[arms]]
activation = "relu"
[[arms]]
activation = "gelu"
"""


@pytest.mark.slow
def test_a_study_file_drives_runs_and_analysis_and_a_post_hoc_arm_gets_no_verdict(tmp_path, corpus_dir,
                                                                                 tiny_tokenizer_dir, capsys):
    folder = tmp_path / "study"
    write_study(folder, corpus_dir, tiny_tokenizer_dir, tmp_path / "cache", DECLARED)
    result = subprocess.run(study_command(folder / "study.toml", "--jobs", "2"), capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in folder.glob("*.json")) == [f"{a}_seed{s}.json" for a in ("gelu", "relu") for s in (1, 2, 3)]
    log = json.loads((folder / "relu_seed1.json").read_text())
    for entry in (log["final"]["val"], *({"article_nll": e["val_article_nll"], "article_tokens": e["val_article_tokens"],
                                           "loss": e["val_loss"]} for e in log["evals"])):
        # valid.txt holds its one title twice: two articles, whose sums add up to the split's loss
        assert len(entry["article_nll"]) == len(entry["article_tokens"]) == 2
        # to the float32 rounding of the plain loss's batch sums (the per-article sums are float64)
        assert sum(entry["article_nll"]) / sum(entry["article_tokens"]) == pytest.approx(entry["loss"], rel=1e-6)
    assert "over seeds and the scored split's articles" in (folder / "summary.md").read_text()
    # an arm trained into the folder after the fact, with the same settings
    import study

    capsys.readouterr()
    assert study.main(["--allow_dirty", str(folder / "study.toml"), "--list"]) == 0
    argv = capsys.readouterr().out.splitlines()[0].split()[2:]  # relu, seed 1: the study's own flags
    argv[argv.index("relu")] = "silu"
    argv[argv.index("--run_name") + 1] = "silu_seed1"
    assert train_simple.main(argv) == 0
    assert analyze_results.main(["--study", str(folder / "study.toml")]) == 0
    summary = (folder / "summary.md").read_text()
    primary, secondary = (part.split("**Power**")[0] for part in summary.split("**Verdicts**")[1:3])
    assert "gelu vs relu" in primary and "silu" not in primary and "at the best_selection point" in primary
    assert "**Secondary metric `val_bpb`**" in summary.split("**Verdicts**")[1].split("**Power**")[1]
    difference = [row.split(" | ")[2] for table in (primary, secondary) for row in table.splitlines()
                  if row.startswith("| gelu vs relu")]
    assert len(difference) == 2 and difference[0] != difference[1]  # each table judges its own metric
    assert "| silu |" in summary  # described, never judged
    capsys.readouterr()
    assert study.main([str(folder / "study.toml"), "--plan", "--plan_margin", "0.01"]) == 0
    gelu = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("| gelu vs relu |")).split(" | ")
    assert float(gelu[2]) >= 0  # the articles' SE, read from the per-article losses these logs hold


@pytest.mark.parametrize("body, message", [
    ('name = "x"\nbaseline = "relu"\nseeds = [1]\nlrs = [1e-3]\nbogus = 1\n[[arms]]\nactivation = "relu"\n', "unknown key"),
    ('name = "x"\nbaseline = "gelu"\nseeds = [1]\nlrs = [1e-3]\n[[arms]]\nactivation = "relu"\n', "not one of the arms"),
    ('name = "x"\nbaseline = "relu"\nseeds = [1]\n[[arms]]\nactivation = "relu"\n', "give lrs"),
    ('name = "x"\nbaseline = "relu"\nseeds = [1]\nlrs = [1e-3]\ncomparisons = [["relu", "silu"]]\n'
     '[[arms]]\nactivation = "relu"\n', "must name two different arms"),
    ('name = "x"\nbaseline = "relu"\nseeds = [1]\nlrs = [1e-3]\n[[arms]]\nactivation = "relu"\n[train]\nseeds = 3\n',
     "may not set seeds"),
    ('name = "x"\nbaseline = "relu"\nseeds = [1]\nlrs = [1e-3]\nuncertainty = "articles"\n[[arms]]\nactivation = "relu"\n',
     "uncertainty must be one of"),
    ('name = "x"\nbaseline = "relu"\nseeds = [1]\nlrs = [1e-3]\nsecondary = ["val_los"]\n[[arms]]\nactivation = "relu"\n',
     "metric and secondary must be distinct names"),
    ('name = "x"\nbaseline = "relu"\nseeds = [1]\nlrs = [1e-3]\n[[arms]]\nactivation = "relu"\n[tuning]\nseed = 1\n'
     'lr_multipliers = [1]\n', "not among the final seeds"),
    ('name = "x"\nbaseline = "relu"\nseeds = [1]\nlrs = [1e-3]\n[[arms]]\nactivation = "relu"\n[tuning]\nseed = 2\n'
     'lr_multipliers = [1, -2]\n', "distinct positive numbers"),
    ('name = "x"\nbaseline = "relu"\nseeds = [1]\nlrs = [1e-3]\n[[arms]]\nactivation = "relu"\n[tuning]\nseed = 2\n',
     "needs exactly lr_multipliers, seed"),
    ('name = "x"\nbaseline = "relu"\nseeds = [1]\nlrs = [1e-3, 2e-3]\n[[arms]]\nactivation = "relu"\n[tuning]\n'
     'seed = 2\nlr_multipliers = [1]\n', "multiplies one lr"),
])
def test_a_bad_study_file_is_one_line(tmp_path, capsys, body, message):
    import study

    path = tmp_path / "study.toml"
    path.write_text(body)
    with pytest.raises(StudyError, match=message):
        load_study(path)
    assert study.main(["--allow_dirty", str(path), "--list"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err


def test_an_activation_is_one_table_entry_and_its_function(tmp_path, corpus_dir, tiny_tokenizer_dir, capsys,
                                                            monkeypatch):
    """A throw-away gated activation added at run time: the model, the study-file check, the figures
    and the report accept it, and it has a colour of its own."""
    import analyze_results
    import study
    from analysis.figures import variant_colors
    from test_analyze import synthetic_log
    import torch
    from transformer_from_scratch import ACTIVATIONS, Transformer, TransformerConfig, activations, catalog

    monkeypatch.setitem(catalog.ACTIVATION_TABLE, "tanhglu", catalog.ActivationInfo(gated=True))
    monkeypatch.setitem(activations.FUNCTIONS, "tanhglu", torch.tanh)
    cfg = TransformerConfig(d_vocab=50, n_ctx=8, d_model=16, n_heads=2, d_mlp=48, n_layers=1, act_fn="tanhglu",
                            match_params=True)
    model = Transformer(cfg, seed=1)
    assert ACTIVATIONS["tanhglu"].gated and cfg.d_hidden == 32 and model.blocks[0].mlp.W_gate.shape == (16, 32)
    assert torch.isfinite(model(torch.randint(0, 50, (2, 8)))).all()

    write_walked(tmp_path / "s", corpus_dir, tiny_tokenizer_dir, tmp_path / "cache",
                 ('activation = "silu"', 'activation = "tanhglu"\nmatched = true'))
    assert study.main([str(tmp_path / "s" / "study.toml"), "--list"]) == 0
    assert "--activation tanhglu --match_params" in capsys.readouterr().out

    names = [*catalog.ACTIVATION_TABLE, "tanhglu (matched)"]
    colours = variant_colors(names)
    assert len(set(colours.values())) == len(names) - 1  # (matched) keeps its activation's colour, no other
    assert colours["tanhglu (matched)"] == colours["tanhglu"]

    for seed in (1, 2):
        for act, loss in (("relu", 5.0), ("tanhglu", 4.9)):
            log = synthetic_log(act, seed, loss + seed / 100)
            log["model_config"].update(act_fn=act, match_params=act == "tanhglu", d_hidden=32 if act == "tanhglu" else 48,
                                       d_mlp=48)
            (tmp_path / f"{act}_seed{seed}.json").write_text(json.dumps(log))
    assert analyze_results.main(["--results_dir", str(tmp_path)]) == 0
    assert "| tanhglu (matched) |" in (tmp_path / "summary.md").read_text()


def test_the_quick_study_teaches_the_keys_it_leaves_out_and_they_load_as_written(tmp_path):
    import study

    quick = (ROOT / "results" / "quick" / "study.toml").read_text()
    commented = [line for line in quick.splitlines() if line.startswith("# ") and " = " in line.split("#")[1]]
    assert {line[2:].split(" = ")[0] for line in commented} >= {"comparisons", "margin", "uncertainty"}
    for line in commented:
        quick = quick.replace(line, line[2:])
    (tmp_path / "study.toml").write_text(quick)
    declared = study.load_study(tmp_path / "study.toml")
    assert declared.comparisons == [("gelu", "relu"), ("swiglu (matched)", "gelu")]
    assert declared.margin == 0.01 and declared.uncertainty == "seeds+articles"


ONE_RUN = """
name = "declared"
baseline = "relu"
seeds = [1]
lrs = [1e-3]
[[arms]]
activation = "relu"
"""


def test_a_study_has_no_search_report(tmp_path, capsys):
    import study

    path = tmp_path / "study.toml"
    path.write_text(ONE_RUN)
    assert study.main(["--allow_dirty", str(path), "--report_only"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--report_only is for a search" in err


@pytest.fixture
def run_study(study_here):
    """study.py on ``folder``'s study.toml, run from that folder, in this process (study_here)."""
    return lambda folder, *extra, figures=False: study_here(folder / "study.toml", *extra, figures=figures, cwd=folder)


def git(folder, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                   capture_output=True)


@pytest.mark.slow
def test_an_uncommitted_study_file_is_recorded_warned_about_and_said_so_in_the_report(tmp_path, corpus_dir,
                                                                                     tiny_tokenizer_dir, run_study):
    folder = tmp_path / "loose"
    write_study(folder, corpus_dir, tiny_tokenizer_dir, tmp_path / "cache", ONE_RUN)
    result = run_study(folder)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "study.toml is not committed as it is now" in result.stderr
    record = json.loads((folder / "relu_seed1.json").read_text())["run"]["study"]
    assert record["commit"] is None and record["sha256"] == hashlib.sha256((folder / "study.toml").read_bytes()).hexdigest()
    for name in ("summary.md", "report.md"):
        assert "**Pre-registration**: **Not pre-registered**: the study file" in (folder / name).read_text()


@pytest.mark.slow
def test_a_study_committed_before_its_runs_is_pre_registered_until_the_file_changes(tmp_path, corpus_dir,
                                                                                   tiny_tokenizer_dir, run_study):
    folder = tmp_path / "declared"
    write_study(folder, corpus_dir, tiny_tokenizer_dir, tmp_path / "cache", ONE_RUN)
    git(folder, "init", "-q")
    git(folder, "add", "study.toml")
    git(folder, "commit", "-q", "-m", "declare")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True).stdout.strip()
    result = run_study(folder)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not committed" not in result.stderr
    assert json.loads((folder / "relu_seed1.json").read_text())["run"]["study"]["commit"] == commit
    report = (folder / "report.md").read_text()
    assert "**Pre-registration**: Pre-registered: the study file (sha256 `" in report and f"`{commit[:10]}`" in report
    with open(folder / "study.toml", "a") as f:
        f.write("# an edit after the runs\n")
    assert analyze_results.main(["--study", str(folder / "study.toml")]) == 0
    assert "Not pre-registered as it reads now" in (folder / "report.md").read_text()


TUNED = """
name = "tuned"
baseline = "relu"
seeds = [1]
lrs = [1e-3]
metric = "val_loss"
[[arms]]
activation = "relu"
[[arms]]
activation = "gelu"
[tuning]
seed = 7
lr_multipliers = [0.5, 4, 1e30]
"""


@pytest.mark.slow
def test_a_study_tunes_each_arms_lr_on_the_selection_split_before_its_final_seeds(tmp_path, corpus_dir,
                                                                                  tiny_tokenizer_dir, run_study):
    folder = tmp_path / "tuned"
    write_study(folder, corpus_dir, tiny_tokenizer_dir, tmp_path / "cache", TUNED)
    listed = run_study(folder, "--list")  # nothing has run: the candidates only, no final run yet
    assert listed.returncode == 0 and "wait for the tuning" in listed.stderr
    assert [line.split()[line.split().index("--run_name") + 1] for line in listed.stdout.splitlines()] == [
        f"{arm}_lr{lr:g}_seed7" for arm in ("relu", "gelu") for lr in (5e-4, 4e-3, 1e27)]

    result = run_study(folder, "--jobs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    tuning = {p.stem: json.loads(p.read_text()) for p in (folder / "tuning").glob("*.json")}
    assert len(tuning) == 6 and all(log["train_config"]["seed"] == 7 for log in tuning.values())
    for arm in ("relu", "gelu"):
        # lr 1e27: decoupled weight decay multiplies every weight by 1 - lr * wd each step, so the run diverges
        assert tuning[f"{arm}_lr1e+27_seed7"]["status"].startswith("failed: non-finite")
        finite = {lr: tuning[f"{arm}_lr{lr:g}_seed7"]["final"]["val"]["loss"] for lr in (5e-4, 4e-3)}
        assert finite[5e-4] != finite[4e-3]
        final = json.loads((folder / f"{arm}_seed1.json").read_text())
        assert final["train_config"]["lr"] == min(finite, key=finite.get), (arm, finite)
    report = (folder / "report.md").read_text()
    assert "2 runs" in (folder / "summary.md").read_text()  # the candidates are not the study's runs
    table = report.split("## Learning rate per arm, tuned on the selection split")[1].split("\n## ")[0]
    assert table.count("| diverged |") == 2 and table.count("| yes |") == 2


@pytest.mark.slow
def test_a_study_whose_lr_tuning_ran_before_it_was_committed_is_not_pre_registered(tmp_path, corpus_dir,
                                                                                    tiny_tokenizer_dir, run_study):
    folder = tmp_path / "late"
    write_study(folder, corpus_dir, tiny_tokenizer_dir, tmp_path / "cache",
                ONE_RUN + "[tuning]\nseed = 7\nlr_multipliers = [0.5, 2]\n")
    git(folder, "init", "-q")
    tuning = [subprocess.Popen(shlex.split(line), cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
              for line in run_study(folder, "--list").stdout.splitlines()]  # the lr tuning, before the declaration
    assert [run.wait(timeout=600) for run in tuning] == [0, 0]
    git(folder, "add", "study.toml")
    git(folder, "commit", "-q", "-m", "declared after the tuning")
    result = run_study(folder)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((folder / "relu_seed1.json").read_text())["run"]["study"]["commit"]  # the final run alone looks declared
    assert ("**Pre-registration**: **Not pre-registered**: the study file (sha256 `"
            in (folder / "report.md").read_text()), "a choice made before the declaration is not pre-registered"


def test_a_tie_between_tuning_candidates_goes_to_the_smaller_lr_and_a_missing_one_leaves_no_choice(tiny_argv, tmp_path):
    from study_file import Candidate, chosen_lrs

    assert train_simple.main(tiny_argv(tmp_path / "run", "--keep", "best")) == 0
    for name in ("larger", "smaller"):  # the same run under two names: the same selection loss
        shutil.copy(tmp_path / "run" / "relu_seed3.json", tmp_path / f"{name}.json")
    tied = [Candidate("relu", 2e-3, tmp_path / "larger.json"), Candidate("relu", 1e-3, tmp_path / "smaller.json")]
    assert chosen_lrs(tied) == {"relu": 1e-3}
    assert chosen_lrs([*tied, Candidate("relu", 4e-3, tmp_path / "not_run_yet.json")]) is None


def stop_study_in_its_first_run(path, first, after_step: int, to_group: bool) -> tuple[int, str]:
    """Start the study, and once its first run's log is past ``after_step``, stop it: SIGTERM to the
    study alone (it stops its run), or as a terminal's Ctrl-C, SIGINT to the study and its run at
    once. The study's exit code and stderr."""
    study = subprocess.Popen(study_command(path), cwd=path.parent.parent,
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (first.exists() and json.loads(first.read_text() or "{}").get("progress", {}).get("step", 0) > after_step):
        assert time.time() < deadline and study.poll() is None, "relu_seed1 was never seen training"
        time.sleep(0.2)
    if to_group:
        os.killpg(study.pid, signal.SIGINT)
    else:
        study.send_signal(signal.SIGTERM)
    stderr = study.communicate(timeout=300)[1]
    return study.returncode, stderr


@pytest.mark.slow
def test_a_stopped_study_checkpoints_its_run_in_flight_starts_no_other_and_resumes(tmp_path, corpus_dir,
                                                                                      tiny_tokenizer_dir, study_here):
    folder = tmp_path / "study"
    write_study(folder, corpus_dir, tiny_tokenizer_dir, tmp_path / "cache", DECLARED.replace("[1, 2, 3]", "[1]"))
    path = folder / "study.toml"
    path.write_text(path.read_text().replace("max_steps = 3", "max_steps = 40\nnum_epochs = 10"))  # to be caught
    first = folder / "relu_seed1.json"
    stops = []
    for to_group, code in ((False, 143), (True, 130)):  # SIGTERM to the study, then Ctrl-C once it has resumed
        returncode, stderr = stop_study_in_its_first_run(path, first, stops[-1] + 3 if stops else 3, to_group)
        assert returncode == code, stderr[-2000:]
        assert "stopping the study" in stderr and "Traceback" not in stderr
        stopped = json.loads(first.read_text())
        assert stopped["status"] == "interrupted" and (folder / "checkpoints" / "relu_seed1.pt").exists()
        assert sorted(p.name for p in folder.glob("*.json")) == ["relu_seed1.json"]  # no other run started
        stops.append(stopped["progress"]["step"])
    result = study_here(path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads(first.read_text())
    assert resumed["status"] == "complete" and resumed["progress"]["step"] == 40
    assert [point["at_step"] for point in resumed["run"]["resumed"]] == stops  # each stop continued where it was
    assert sorted(p.name for p in folder.glob("*.json")) == ["gelu_seed1.json", "relu_seed1.json"]


def toolkit_copy(folder) -> None:
    """A git checkout of the toolkit's code as it is here (results left out), in one commit."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", ".",
                            ":(exclude)results"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, names):
        if (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    git(folder, "init", "-q")
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "toolkit")


@pytest.mark.slow
def test_a_declared_study_refuses_a_dirty_tree_and_with_allow_dirty_stores_the_change(tmp_path, corpus_dir,
                                                                                      tiny_tokenizer_dir):
    code, folder = tmp_path / "toolkit", tmp_path / "toolkit" / "results" / "mine"
    toolkit_copy(code)
    write_study(folder, corpus_dir, tiny_tokenizer_dir, tmp_path / "cache", ONE_RUN)
    with open(code / "metrics.py", "a") as f:  # a real uncommitted change to the code
        f.write("\n# an uncommitted change\n")
    (code / "helper.py").write_text("X = 1\n")  # an untracked file is code too
    study = [sys.executable, str(code / "study.py"), str(folder / "study.toml"), "--no_figures"]
    refused = subprocess.run(study, capture_output=True, text=True, cwd=folder, timeout=600)
    assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "uncommitted code changes (helper.py, metrics.py)" in refused.stderr and "--allow_dirty" in refused.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["study.toml"]  # no run began, no log, no folder
    allowed = subprocess.run([*study, "--allow_dirty"], capture_output=True, text=True, cwd=folder, timeout=600)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    run = json.loads((folder / "relu_seed1.json").read_text())["run"]
    stored = folder / run["git_diff"]
    assert run["git_dirty"] and hashlib.sha256(stored.read_bytes()).hexdigest() == run["git_diff_sha256"]
    # the stored change, applied to a clean checkout of the commit, is the tree the run ran from
    git(code, "stash", "-q", "--include-untracked", "--", "metrics.py", "helper.py")
    git(code, "apply", str(stored))
    assert (code / "metrics.py").read_text().endswith("# an uncommitted change\n")
    assert (code / "helper.py").read_text() == "X = 1\n"
    assert "from a tree with uncommitted changes stored beside its log" in (folder / "report.md").read_text()


# ---------------------------------------------------------------------------------------------
# Every value a study file can hold is checked before its first run

WALKED = """name = "walked"
baseline = "relu"
seeds = [1, 2]
lrs = [1e-3]
comparisons = [["gelu", "relu"]]
metric = "val_loss"
secondary = ["val_bpb"]
point = "final"
margin = 0.02
alpha = 0.05
uncertainty = "seeds+articles"
[[arms]]
activation = "relu"
[[arms]]
activation = "gelu"
lr = 2e-3
[[arms]]
activation = "silu"
[tuning]
seed = 3000
lr_multipliers = [0.5, 1]
"""


def write_walked(folder, corpus_dir, tokenizer_dir, cache, replace: tuple[str, str] = ("", "")) -> None:
    """WALKED with TINY_TRAIN's [train] (d_model = 32, n_heads = 2, ...) and two more flags, one line changed."""
    write_study(folder, corpus_dir, tokenizer_dir, cache, WALKED)
    text = (folder / "study.toml").read_text().replace("[train]\n", "[train]\nweight_decay = 0.01\ndropout = 0.0\n")
    line, bad = replace
    assert not line or text.count(line) == 1
    (folder / "study.toml").write_text(text.replace(line, bad) if line else text)

BAD_VALUES = [  # (the line as it is in WALKED, what it becomes, what the one line says)
    ('name = "walked"', 'name = ""', "name must be a non-empty string"),
    ('name = "walked"', "name = 3", "name must be a non-empty string"),
    ('baseline = "relu"', "baseline = 1", "baseline must be a string"),
    ("seeds = [1, 2]", 'seeds = ["1", "2"]', "seeds must be a list of whole numbers"),
    ("seeds = [1, 2]", "seeds = [1.5, 2]", "seeds must be a list of whole numbers"),
    ("seeds = [1, 2]", "seeds = [1, 1]", "each seed must be listed once"),
    ("seeds = [1, 2]", "seeds = []", "seeds must not be empty"),
    ("seeds = [1, 2]", "seeds = [-1, 2]", "--seeds must be in 0..2^63-1"),
    ("lrs = [1e-3]", 'lrs = ["fast"]', "lrs must be a list of numbers"),
    ("lrs = [1e-3]", "lrs = [inf]", "--lr must be a finite number"),
    ("lrs = [1e-3]", "lrs = [nan]", "--lr must be a finite number"),
    ("lrs = [1e-3]", "lrs = [-1e-3]", "--lr must be positive"),
    ('comparisons = [["gelu", "relu"]]', 'comparisons = [["gelu", "relu"], ["gelu", "relu"]]', "declared twice"),
    ('comparisons = [["gelu", "relu"]]', 'comparisons = "gelu vs relu"', "comparisons must be a list"),
    ('metric = "val_loss"', 'metric = "val_los"', "metric and secondary must be distinct names"),
    ('secondary = ["val_bpb"]', 'secondary = "val_bpb"', "secondary must be a list"),
    ('point = "final"', 'point = "middle"', "point must be one of"),
    ("margin = 0.02", "margin = -0.02", "margin must be a positive finite number"),
    ("margin = 0.02", "margin = nan", "margin must be a positive finite number"),
    ("margin = 0.02", 'margin = "0.02"', "margin must be a positive finite number"),
    ("alpha = 0.05", "alpha = 1.5", "alpha must be a number between 0 and 1"),
    ("alpha = 0.05", "alpha = 0", "alpha must be a number between 0 and 1"),
    ("alpha = 0.05", "alpha = nan", "alpha must be a number between 0 and 1"),
    ('uncertainty = "seeds+articles"', 'uncertainty = "articles"', "uncertainty must be one of"),
    ('activation = "silu"', 'activation = "siluu"', "invalid choice 'siluu'; did you mean 'silu'?"),
    ('activation = "gelu"', 'activation = "gelu"\nmatched = "yes"', "matched must be true or false"),
    ("lr = 2e-3", 'lr = "fast"', "an arm's lr must be a number"),
    ("lr = 2e-3", "lr = inf", "--lr must be a finite number"),
    ("seed = 3000", "seed = 1", "not among the final seeds"),
    ("lr_multipliers = [0.5, 1]", "lr_multipliers = [0.5, inf]", "--lr must be a finite number"),
    ("d_model = 32", "d_model = 33", "not divisible by n_heads"),
    ("d_model = 32", "bogus_flag = 32", "unrecognized arguments: --bogus_flag"),
    ("weight_decay = 0.01", 'weight_decay = "fast"', "--weight_decay: invalid float value"),
    ("weight_decay = 0.01", "weight_decay = nan", "[train] weight_decay must be"),
    ("weight_decay = 0.01", "weight_decay = [0.01, inf]", "[train] weight_decay must be"),
    ("weight_decay = 0.01", "weight_decay = {low = 1}", "[train] weight_decay must be"),
    ("dropout = 0.0", "dropout = -0.5", "--dropout must be non-negative"),
]


def test_the_walked_study_file_is_valid(tmp_path, corpus_dir, tiny_tokenizer_dir, capsys):
    import study

    write_walked(tmp_path / "s", corpus_dir, tiny_tokenizer_dir, tmp_path / "cache")
    assert study.main([str(tmp_path / "s" / "study.toml"), "--list"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6  # the tuning's six candidates; the finals wait for them


@pytest.mark.parametrize("line, bad, message", BAD_VALUES)
def test_every_bad_value_of_a_study_file_is_refused_before_any_run(tmp_path, corpus_dir, tiny_tokenizer_dir, capsys,
                                                                    line, bad, message):
    import study

    folder = tmp_path / "s"
    write_walked(folder, corpus_dir, tiny_tokenizer_dir, tmp_path / "cache", (line, bad))
    assert study.main([str(folder / "study.toml"), "--list"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["study.toml"]  # no run folder, no log, no lock


@pytest.mark.slow
def test_a_run_that_refuses_its_settings_stops_the_study_and_says_which(tmp_path, corpus_dir, tiny_tokenizer_dir, run_study):
    # a value only the run itself finds wrong: the training split is not there (data is checked by the run)
    folder = tmp_path / "s"
    write_study(folder, corpus_dir, tiny_tokenizer_dir, tmp_path / "cache", ONE_RUN.replace("seeds = [1]", "seeds = [1, 2]"))
    toml = (folder / "study.toml").read_text().replace(str(corpus_dir / "train.txt"), str(tmp_path / "missing.txt"))
    (folder / "study.toml").write_text(toml)
    result = run_study(folder)
    assert result.returncode == 2, result.stderr
    assert "run relu_seed1 refused its settings" in result.stderr and "relu_seed2" not in result.stderr
    assert not (folder / "relu_seed2.json").exists() and not (folder / "report.md").exists()


@pytest.mark.slow
def test_two_study_processes_on_one_study_share_its_runs_and_neither_calls_the_other_failed(tmp_path, corpus_dir,
                                                                                            tiny_tokenizer_dir,
                                                                                            study_here):
    folder = tmp_path / "study"
    write_study(folder, corpus_dir, tiny_tokenizer_dir, tmp_path / "cache", ONE_RUN.replace("seeds = [1]", "seeds = [1, 2]"))
    path = folder / "study.toml"
    path.write_text(path.read_text().replace("max_steps = 3", "max_steps = 60\nnum_epochs = 20"))
    command = study_command(path)
    first = subprocess.Popen(command, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    log = folder / "relu_seed1.json"
    deadline = time.time() + 300
    while not (log.exists() and json.loads(log.read_text() or "{}").get("progress", {}).get("step", 0) >= 2):
        assert time.time() < deadline and first.poll() is None, "relu_seed1 was never seen training"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGSTOP)  # the first study and its run, paused mid-run: they meet however fast it is
    try:
        assert json.loads(log.read_text())["status"] == "running"
        second = study_here(path, cwd=tmp_path)  # the second study: this process, its runs forked from it
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    first_err = first.communicate(timeout=600)[1]
    assert second.returncode == 0 and first.returncode == 0, second.stderr[-2000:] + first_err[-2000:]
    assert "is held by another process (another study.py trains it there)" in second.stderr
    assert "failed" not in second.stderr + first_err
    assert all(json.loads((folder / f"relu_seed{s}.json").read_text())["status"] == "complete" for s in (1, 2))


LADDER = """
name = "tiny ladder"
baseline = "relu"
seeds = [1, 2]
metric = "val_loss"
point = "best_selection"
uncertainty = "seeds"
[[arms]]
activation = "relu"
[[arms]]
activation = "gelu"
[ladder]
rungs = [{d_model = 32, train_fraction = 0.5}, {d_model = 32, train_fraction = 1.0}, {d_model = 64, train_fraction = 1.0}]
[tuning]
seed = 3000
trials = 2
sampler_seed = 5
[tuning.space]
lr = {low = 1e-3, high = 3e-3, log = true}
weight_decay = [0.0, 0.1]
"""


@pytest.mark.slow
def test_a_ladder_study_tunes_every_arm_alike_at_every_rung_and_reports_across_them(tmp_path, corpus_dir,
                                                                                     tiny_tokenizer_dir, run_study):
    folder = tmp_path / "ladder"
    write_study(folder, corpus_dir, tiny_tokenizer_dir, tmp_path / "cache", LADDER)
    path = folder / "study.toml"
    path.write_text(path.read_text().replace("d_model = 32\n", ""))  # the rungs set it
    result = run_study(folder, "--jobs", "2", figures=True)
    assert result.returncode == 0, result.stderr[-3000:]
    rungs = ["d_model32_train_fraction0.5", "d_model32_train_fraction1", "d_model64_train_fraction1"]
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == rungs
    for rung in rungs:
        tuning = sorted(p.name for p in (folder / rung / "tuning").glob("*.json"))
        assert tuning == [f"{a}_trial{k}_seed3000.json" for a in ("gelu", "relu") for k in (0, 1)]
        configs = {a: [json.loads((folder / rung / "tuning" / f"{a}_trial{k}_seed3000.json").read_text())["train_config"]
                       for k in (0, 1)] for a in ("gelu", "relu")}
        assert [(c["lr"], c["weight_decay"]) for c in configs["gelu"]] == [(c["lr"], c["weight_decay"])
                                                                           for c in configs["relu"]]  # the same draws
        assert len(list((folder / rung).glob("*_seed[12].json"))) == 4
        report = (folder / rung / "report.md").read_text()
        assert "Each arm trained the same 2 configurations" in report and "Expected best selection loss" in report
    log = json.loads((folder / rungs[0] / "relu_seed1.json").read_text())
    assert log["data"]["train_fraction"] == 0.5 and log["model_config"]["d_model"] == 32
    ladder = (folder / "ladder.md").read_text()
    assert "| gelu vs relu |" in ladder and "**Interaction tests**" in ladder
    assert "| gelu vs relu | width |" in ladder and "| gelu vs relu | data |" in ladder
    assert "**Effective compute multiplier** over relu" in ladder
    assert "![ladder_effects.png](ladder_effects.png)" in ladder and (folder / "ladder_effects.png").stat().st_size > 0
