"""benchmarks/throughput.py runs end to end and reports every figure the README documents (its
speed figures are printed, never asserted)."""

from __future__ import annotations

import json
import math
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import throughput  # noqa: E402

REQUIRED_KEYS = (
    "train_tokens_per_s", "hf_train_tokens_per_s", "train_ratio", "eval_tokens_per_s",
    "hf_eval_tokens_per_s", "eval_ratio", "matmul_gflops", "train_ceiling_fraction",
)


@pytest.mark.slow
def test_throughput_json_has_the_documented_figures_and_bf16_where_the_cpu_has_it(tmp_path, capsys, monkeypatch):
    from training.machine import native_bf16

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # any MALLOC_ setting is recorded with the figures
    no_data = tmp_path / "absent"  # without WikiText-2 the `lines` comparison is skipped
    # bf16 on a CPU without native bf16 would take minutes a step: there fp32 alone is measured
    precisions = ["fp32", "bf16"] if native_bf16() else ["fp32"]
    assert throughput.main(["--rounds", "1", "--skip_memory", "--json", "--data_dir", str(no_data),
                            "--precisions", *precisions]) == 0
    result = json.loads(capsys.readouterr().out)
    bf16_keys = ("bf16_train_tokens_per_s", "bf16_hf_train_tokens_per_s", "bf16_train_ratio", "bf16_eval_ratio",
                 "bf16_matmul_gflops", "bf16_matmul_speedup", "bf16_train_speedup")
    for key in REQUIRED_KEYS + (bf16_keys if "bf16" in precisions else ()):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["train_ratio"] == result["train_tokens_per_s"] / result["hf_train_tokens_per_s"]
    if "bf16" in precisions:
        assert result["bf16_train_ratio"] == result["bf16_train_tokens_per_s"] / result["bf16_hf_train_tokens_per_s"]
    else:
        assert not any(key in result for key in bf16_keys)
    assert result["malloc_env"]["MALLOC_ARENA_MAX"] == "4"
    assert "lines_train_ratio" not in result


@pytest.mark.slow
def test_the_shape_grid_reports_each_shape_against_the_ceiling_at_its_width(capsys):
    assert throughput.main(["--shapes", "--widths", "64", "--depths", "1", "2", "--rounds", "1", "--precisions",
                            "fp32", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["shapes"]
    assert [(r["d_model"], r["n_layers"], r["tied"]) for r in rows] == [(64, 1, False), (64, 1, True), (64, 2, False),
                                                                        (64, 2, True)]  # every depth, tied and not
    for r in rows:
        fraction = r["fp32_train_tokens_per_s"] * r["train_mflop_per_token"] * 1e6 / (r["fp32_ceiling_gflops"] * 1e9)
        assert r["fp32_train_ceiling_fraction"] == pytest.approx(fraction)
        assert all(r[key] > 0 for key in ("fp32_eval_20k_tokens_s", "probe_s", "samples_s"))
    assert rows[2]["train_mflop_per_token"] > rows[0]["train_mflop_per_token"]  # a second layer costs FLOPs
