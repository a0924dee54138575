"""Shared fixtures: a tiny model config, a tiny byte-level BPE tokenizer built on the fly (no
network), and small text corpora with multibyte characters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.checkpoint import read_final_weights  # noqa: E402
from transformer_from_scratch import TransformerConfig  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"
WIKITEXT_DIR = SHARED_DATA / "wikitext-2-raw-v1"
GPT2_TOKENIZER_DIR = SHARED_DATA / "gpt2-tokenizer"

# Lines in WikiText's raw style: leading space, trailing " \n", blank lines as a lone space.
CORPUS_LINES = [
    " = Café society = \n",
    " \n",
    " The naïve café in 中国 served crème brûlée to 42 guests . \n",
    " Emoji 🙂 and 🚀 travel well ; so do ß , ø and Ω . \n",
    " \n",
    " A short line . \n",
    " The quick brown fox jumps over the lazy dog , again and again and again and again . \n",
]


@pytest.fixture(autouse=True)
def _quiet_threads():
    torch.set_num_threads(1)  # tiny models: threading costs more than it gives
    yield


@pytest.fixture
def tiny_cfg() -> TransformerConfig:
    return TransformerConfig(d_vocab=97, n_ctx=16, d_model=32, n_heads=4, d_mlp=64, n_layers=2, act_fn="gelu")


def build_tiny_tokenizer(folder: Path, vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on CORPUS_LINES, saved to ``folder`` and returned."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(CORPUS_LINES * 3, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    build_tiny_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from data_utils import load_tokenizer

    return load_tokenizer(str(tiny_tokenizer_dir))


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """Plain text files usable as train / validation splits."""
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "train.txt").write_text("".join(CORPUS_LINES * 6), encoding="utf-8")
    (folder / "valid.txt").write_text("".join(CORPUS_LINES[::-1] * 2), encoding="utf-8")
    return folder


class Tmpfs:
    """A small tmpfs: a real filesystem that really fills up (ENOSPC from the kernel, not from a mock)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def resize(self, size_bytes: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(self.folder)], check=True)

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.folder)], check=True)

    def fill(self, leave_bytes: int = 0) -> None:
        """Take up the free space but ``leave_bytes`` with a filler file."""
        free = os.statvfs(self.folder).f_bavail * os.statvfs(self.folder).f_frsize
        with open(self.folder / "filler", "ab") as f:
            f.write(b"\0" * max(free - leave_bytes, 0))


@pytest.fixture
def tmpfs(tmp_path):
    """Mount tmpfs folders of a given size (root only: skipped, with the reason, elsewhere)."""
    mounted = []

    def mount(size_bytes: int) -> Tmpfs:
        if os.geteuid() != 0:
            pytest.skip("a real full disk needs a small tmpfs, and mounting one needs root")
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)],
                                capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(folder)
        return Tmpfs(folder)

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


needs_shared_data = pytest.mark.skipif(
    not (WIKITEXT_DIR.is_dir() and GPT2_TOKENIZER_DIR.is_dir()),
    reason=f"local WikiText-2 / GPT-2 tokenizer not found under {SHARED_DATA}",
)


# Keys that differ between identical runs: timings, and where the run was told to write.
TIMING_KEYS = {"wall_s", "tokens_per_s", "train_tokens_per_s", "train_seconds", "started", "ended", "time", "command",
               "resumed", "output_dir"}


@pytest.fixture
def tiny_argv(tmp_path, corpus_dir, tiny_tokenizer_dir):
    def argv(out: Path | None = None, *extra: str) -> list[str]:
        return [
            "--activation", "relu", "--seeds", "3", "--d_model", "32", "--d_mlp", "64", "--n_heads", "2",
            "--n_layers", "1", "--max_length", "16", "--batch_size", "4", "--num_epochs", "2",
            "--train_split", str(corpus_dir / "train.txt"), "--val_split", str(corpus_dir / "valid.txt"),
            "--test_split", "none", "--tokenizer", str(tiny_tokenizer_dir), "--cache_dir", str(tmp_path / "cache"),
            "--output_dir", str(out or tmp_path / "out"), "--log_every", "1", "--checkpoint_every", "3",
            "--probe_sequences", "4", "--eval_batch_size", "8", "--threads", "1", *extra,
        ]
    return argv


def read_log(path: Path) -> dict:
    return json.loads(path.read_text())


def without_timings(obj):
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def final_weights(out: Path, name: str = "relu_seed3") -> dict:
    """A complete run's final weights, as sample.py and --export_hf read them."""
    return read_final_weights(out / "checkpoints", name)


def assert_same_run(a: Path, b: Path) -> None:
    log_a, log_b = read_log(a / "relu_seed3.json"), read_log(b / "relu_seed3.json")
    assert without_timings(log_a["steps"]) == without_timings(log_b["steps"])
    assert without_timings(log_a["epochs"]) == without_timings(log_b["epochs"])
    assert log_a["final"] == log_b["final"] and log_b["status"] == "complete"
    state_a, state_b = final_weights(a), final_weights(b)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def train_here(capsys, argv: list[str]) -> tuple[int, str]:
    """train_simple.py run in this process, for a run refused before or without training: its exit
    code and stderr (a traceback would be the calling test's own error). Saves the four seconds a new
    Python takes to import torch; run_cli keeps the script's own exit for the tests that need it."""
    import train_simple

    code = train_simple.main(argv)
    return code, capsys.readouterr().err


def study_command(path: Path, *extra: str, figures: bool = False) -> list[str]:
    """study.py on the study or search file ``path``, from this tree (--allow_dirty), without the figures
    of its analysis or report unless asked: drawing them is most of an analysis's time, and the tests
    named for them draw them."""
    return [sys.executable, str(ROOT / "study.py"), "--allow_dirty", *([] if figures else ["--no_figures"]), str(path),
            *extra]


@pytest.fixture
def study_here(capfd, monkeypatch):
    """study.py run in this process, as study_command would run it (from ``cwd``, default ROOT): a
    CompletedProcess with its exit code and what it and its runs wrote. For the studies no test signals:
    the fork server their runs are forked from then stays up across this pytest process's tests, so
    only the first pays for its start (importing torch and transformers, about four seconds)."""
    import study

    def run(path: Path, *extra: str, figures: bool = False, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        argv = study_command(path, *extra, figures=figures)[2:]
        monkeypatch.chdir(cwd)
        capfd.readouterr()
        code = study.main(argv)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(argv, code, out, err)
    return run


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train_simple.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
