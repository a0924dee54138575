"""Data: rows as the hub has them, both layouts, exact byte counts; WikiText-2 when it is here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors

import data_utils
from conftest import CORPUS_LINES, GPT2_TOKENIZER_DIR, WIKITEXT_DIR, needs_shared_data
from data_utils import (
    DataError,
    load_split_text,
    load_tokenizer,
    read_rows,
    token_byte_lengths,
    tokenize_split,
)
from transformer_from_scratch import IGNORE_INDEX


@pytest.fixture
def corpus_text(corpus_dir):
    return load_split_text(str(corpus_dir / "train.txt"))


def test_rows_follow_the_hub_convention(corpus_dir):
    rows, _ = read_rows(corpus_dir / "valid.txt")
    assert "" in rows and all(r == "" or r.endswith("\n") for r in rows)
    assert "".join(rows) == "".join(r if r.strip() else "" for r in CORPUS_LINES[::-1] * 2)


def test_byte_table_sums_to_utf8_length_of_a_fully_scored_text(tiny_tokenizer):
    text = "".join(CORPUS_LINES) + " unseen: ĳ 😀 漢字 "
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    lengths = token_byte_lengths(tiny_tokenizer)
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    # The check is only meaningful if some token holds part of a multibyte character.
    pieces = [tiny_tokenizer.convert_tokens_to_string([t]) for t in tiny_tokenizer.convert_ids_to_tokens(ids)]
    assert any("\ufffd" in piece for piece in pieces)


def test_special_tokens_have_no_bytes(tiny_tokenizer):
    assert token_byte_lengths(tiny_tokenizer)[tiny_tokenizer.eos_token_id] == 0


def test_lines_layout_pads_truncates_and_masks(corpus_text, tiny_tokenizer, tmp_path):
    split = tokenize_split(corpus_text, tiny_tokenizer, "lines", 8, cache_dir=tmp_path)
    expected = [tiny_tokenizer(r, add_special_tokens=False)["input_ids"] for r in corpus_text.rows if r.strip()]
    assert len(split) == len(expected)
    eos = tiny_tokenizer.eos_token_id
    for row, ids in zip(split.tokens.tolist(), expected):
        kept = ids[:8]
        assert row == kept + [eos] * (8 - len(kept))
    assert split.info["truncated_sequences"] == sum(len(ids) > 8 for ids in expected)
    inputs, targets = split.batch(torch.arange(len(split)))
    assert inputs.shape == targets.shape
    for i, ids in enumerate(expected):
        n = min(len(ids), 8)
        assert targets[i, : n - 1].tolist() == ids[1:n]
        assert (targets[i, n - 1 :] == IGNORE_INDEX).all()  # padding carries no loss
    assert split.info["tokens"] == sum(min(len(ids), 8) - 1 for ids in expected)


def test_batch_is_padded_only_to_its_longest_sequence(corpus_text, tiny_tokenizer, tmp_path):
    split = tokenize_split(corpus_text, tiny_tokenizer, "lines", 64, cache_dir=tmp_path)
    shortest = int(split.lengths.argmin())
    inputs, _ = split.batch(torch.tensor([shortest]))
    assert inputs.shape[1] == max(int(split.lengths[shortest]), 2) - 1


def test_packed_layout_drops_only_the_final_partial_block(corpus_text, tiny_tokenizer, tmp_path):
    split = tokenize_split(corpus_text, tiny_tokenizer, "packed", 16, cache_dir=tmp_path)
    stream = [t for r in corpus_text.rows for t in tiny_tokenizer(r, add_special_tokens=False)["input_ids"]]
    n_blocks = len(stream) // 16
    assert split.tokens.flatten().tolist() == stream[: n_blocks * 16]
    assert split.info["dropped_tail_tokens"] == len(stream) % 16 < 16
    assert split.info["tokens"] == n_blocks * 15
    bytes_scored = token_byte_lengths(tiny_tokenizer)[split.tokens[:, 1:]].sum()
    assert split.info["bytes"] == int(bytes_scored)


def test_cache_returns_identical_data(corpus_text, tiny_tokenizer, tmp_path):
    first = tokenize_split(corpus_text, tiny_tokenizer, "lines", 8, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    second = tokenize_split(corpus_text, tiny_tokenizer, "lines", 8, cache_dir=tmp_path)
    assert torch.equal(first.tokens, second.tokens) and first.info == second.info


def other_text(corpus_dir) -> data_utils.SplitText:
    return load_split_text(str(corpus_dir / "valid.txt"))


def test_a_cache_file_copied_under_another_splits_name_is_rebuilt(corpus_text, corpus_dir, tiny_tokenizer, tmp_path,
                                                                   capsys):
    fresh = tokenize_split(corpus_text, tiny_tokenizer, "lines", 8, cache_dir=tmp_path)
    [mine] = tmp_path.glob("*.safetensors")
    tokenize_split(other_text(corpus_dir), tiny_tokenizer, "lines", 8, cache_dir=tmp_path)
    [theirs] = set(tmp_path.glob("*.safetensors")) - {mine}
    mine.write_bytes(theirs.read_bytes())  # same shapes and token range, other text
    capsys.readouterr()
    again = tokenize_split(corpus_text, tiny_tokenizer, "lines", 8, cache_dir=tmp_path)
    assert torch.equal(again.tokens, fresh.tokens) and again.info == fresh.info
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: ignoring tokenized-data cache {mine}: source_sha256")


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.mark.parametrize("content", ["pickle", "json list", "ids out of range", "truncated"])
def test_hostile_cache_contents_are_rebuilt_in_one_line(corpus_text, tiny_tokenizer, tmp_path, capsys, content):
    fresh = tokenize_split(corpus_text, tiny_tokenizer, "lines", 8, cache_dir=tmp_path / "cache")
    [path] = (tmp_path / "cache").glob("*.safetensors")
    marker = tmp_path / "executed"
    if content == "pickle":
        torch.save({"tokens": fresh.tokens, "payload": Evil(marker)}, path)
    elif content == "json list":
        path.write_text("[1, 2, 3]")
    elif content == "ids out of range":  # claims intact, one token id the vocabulary does not have
        with safe_open(path, framework="pt") as f:
            metadata, lengths = f.metadata(), f.get_tensor("lengths")
        tokens = fresh.tokens.clone()
        tokens[0, 0] = len(tiny_tokenizer) + 5
        path.write_bytes(save_safetensors({"tokens": tokens, "lengths": lengths}, metadata=metadata))
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    again = tokenize_split(corpus_text, tiny_tokenizer, "lines", 8, cache_dir=tmp_path / "cache")
    assert torch.equal(again.tokens, fresh.tokens) and not marker.exists()
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: ignoring tokenized-data cache {path}")
    with safe_open(path, framework="pt") as f:  # and the rebuilt cache is good again
        assert torch.equal(f.get_tensor("tokens"), fresh.tokens)


def test_a_cache_on_a_full_disk_only_costs_time(corpus_text, tiny_tokenizer, tmp_path, tmpfs, capsys):
    disk = tmpfs(256 * 1024)
    disk.fill()
    split = tokenize_split(corpus_text, tiny_tokenizer, "lines", 8, cache_dir=disk.folder / "cache")
    expected = tokenize_split(corpus_text, tiny_tokenizer, "lines", 8, cache_dir=tmp_path)
    assert torch.equal(split.tokens, expected.tokens) and split.info == expected.info
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: could not cache tokenized data: could not write")
    assert "No space left on device" in line and not list((disk.folder / "cache").glob("*"))


def test_missing_file_names_file_and_folder(tmp_path):
    with pytest.raises(DataError, match=r"wiki\.train\.raw.*" + str(tmp_path).replace("\\", "\\\\")):
        load_split_text("train", tmp_path)


def test_unknown_split_and_layout_are_clear_errors(corpus_text, tiny_tokenizer, tmp_path):
    with pytest.raises(DataError, match="neither one of"):
        load_split_text("nonexistent_split_name")
    with pytest.raises(DataError, match="layout"):
        tokenize_split(corpus_text, tiny_tokenizer, "sliding", 8, cache_dir=tmp_path)


@needs_shared_data
def test_wikitext2_line_and_token_counts(tmp_path):
    tokenizer = load_tokenizer(str(GPT2_TOKENIZER_DIR))
    lengths = token_byte_lengths(tokenizer)
    for split, rows, non_empty, text_tokens in [("validation", 3760, 2461, 247_289), ("test", 4358, 2891, 283_287)]:
        text = load_split_text(split, WIKITEXT_DIR)
        assert len(text.rows) == rows
        lines = tokenize_split(text, tokenizer, "lines", 128, lengths, cache_dir=tmp_path)
        assert lines.info["sequences"] == non_empty
        assert lines.info["text_tokens"] == text_tokens  # = tokens of "".join(rows), as published
        assert len(tokenizer("".join(text.rows), add_special_tokens=False)["input_ids"]) == text_tokens
    assert lines.info["sequences"] == 2891
    val = tokenize_split(load_split_text("validation", WIKITEXT_DIR), tokenizer, "lines", 128, lengths, tmp_path)
    assert (val.info["truncated_sequences"], val.info["tokens"]) == (880, 180_464)
    packed = tokenize_split(load_split_text("validation", WIKITEXT_DIR), tokenizer, "packed", 128, lengths, tmp_path)
    assert packed.info["sequences"] == 247_289 // 128


def hub_layout_repository(root: Path, rows: dict[str, list[str]]) -> Path:
    """A local dataset repository laid out like the hub's Salesforce/wikitext: a parquet file per
    split under wikitext-2-raw-v1/, and the README's YAML naming the config and its files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    config = data_utils.HUB_DATASET[1]
    (root / config).mkdir(parents=True)
    for split, texts in rows.items():
        pq.write_table(pa.table({"text": texts}), root / config / f"{split}-00000-of-00001.parquet")
    files = "".join(f"  - split: {split}\n    path: {config}/{split}-*\n" for split in rows)
    (root / "README.md").write_text(f"---\nconfigs:\n- config_name: {config}\n  data_files:\n{files}---\n")
    return root


def test_the_hub_path_loads_a_hub_layout_dataset(tmp_path, monkeypatch):
    # The same datasets.load_dataset call as for the hub, pointed at a local repository: a change that
    # breaks the default (hub) path fails here, although CI cannot reach the hub.
    import datasets

    rows = {split: ["", f" = {split} = \n", "", " Café 🙂 line . \n"] for split in ("train", "validation", "test")}
    repo = hub_layout_repository(tmp_path / "wikitext", rows)
    monkeypatch.setattr(data_utils, "HUB_DATASET", (str(repo), data_utils.HUB_DATASET[1]))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv(data_utils.DATA_DIR_ENV, raising=False)
    text = data_utils.load_split_text("validation")
    assert text.rows == rows["validation"] and text.source == f"hub:{repo}/{data_utils.HUB_DATASET[1]}"
    assert text.sha256 == data_utils.sha256_bytes("".join(rows["validation"]).encode())


def test_unreachable_hub_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data_utils, "HUB_DATASET", (str(tmp_path / "no-such-dataset"), "wikitext-2-raw-v1"))
    monkeypatch.delenv(data_utils.DATA_DIR_ENV, raising=False)
    with pytest.raises(data_utils.DataError, match="--data_dir"):
        data_utils.load_split_text("test")
