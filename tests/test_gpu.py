"""The GPU path: the whole quick study on CUDA (the default kernels there: textbook loss, sdpa
attention, fused AdamW, TF32). Skipped where there is no GPU, as on the CI machines and this
project's CPU sessions; benchmarks/gpu_check.sh runs it with the rest of the GPU checks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import GPT2_TOKENIZER_DIR, ROOT, WIKITEXT_DIR

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def test_the_quick_study_runs_whole_on_cuda(tmp_path):
    if not WIKITEXT_DIR.is_dir() or not GPT2_TOKENIZER_DIR.is_dir():
        pytest.skip("the local WikiText-2 files and GPT-2 tokenizer (../shared/data) are not here")
    quick = (ROOT / "results" / "quick" / "study.toml").read_text()
    study = (quick.replace('data_dir = "../shared/data/wikitext-2-raw-v1"', f'data_dir = "{WIKITEXT_DIR}"')
             .replace('tokenizer = "../shared/data/gpt2-tokenizer"', f'tokenizer = "{GPT2_TOKENIZER_DIR}"')
             .replace("[train]\n", '[train]\ndevice = "cuda"\n'))
    (tmp_path / "study.toml").write_text(study)
    done = subprocess.run([sys.executable, str(ROOT / "study.py"), str(tmp_path / "study.toml"), "--allow_dirty"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    logs = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("*_seed1.json"))]
    assert len(logs) == 3 and all(log["status"] == "complete" for log in logs)
    for log in logs:
        assert log["run"]["device"].startswith("cuda") and log["run"]["float32_matmul"] == "high"
        assert log["model_config"]["attn_impl"] == "sdpa" and log["train_config"]["loss"] == "textbook"
    assert (tmp_path / "report.md").exists() and (tmp_path / "metric_panels.png").exists()
