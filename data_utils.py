"""WikiText-2 (raw) and the GPT-2 tokenizer, from the Hugging Face hub or from local files.

Two layouts turn a split into fixed-length training sequences:
    lines   (the reference study) every non-empty line is its own sequence, truncated to max_length
            tokens and padded with the EOS token; padding carries no loss.
    packed  the split's rows concatenated in order and cut into max_length-token blocks; a final
            partial block is dropped (at most max_length - 1 tokens).
In both, a sequence of L tokens is scored on its L - 1 next-token targets: input = tokens[:-1],
target = tokens[1:], so the first token of each sequence is context only.

Tokenized splits are cached on disk (safetensors), keyed by tokenizer, text hash, layout and length; each
load checks that the file holds what its name claims, and rebuilds it otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import socket
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from safetensors.torch import save as save_safetensors
from torch import Tensor

from run_log import WriteError, atomic_write
from transformer_from_scratch import IGNORE_INDEX, derived_generator

SPLIT_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
# Published sha256 of the original wikitext-2-raw-v1.zip members (see shared/data/README.md).
KNOWN_SHA256 = {
    "wiki.train.raw": "6707892fa3788b5ab9ed78ab5ff37d9fe825f6011a2ad4fcd6a6d467f0e7da57",
    "wiki.valid.raw": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
    "wiki.test.raw": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
}
HUB_DATASET = ("Salesforce/wikitext", "wikitext-2-raw-v1")
HUB_TOKENIZER = "gpt2"
DATA_DIR_ENV = "WIKITEXT2_DIR"  # a folder with the wiki.*.raw files
TOKENIZER_ENV = "GPT2_TOKENIZER"  # a hub name or a local tokenizer folder
CACHE_DIR_ENV = "ACTIVATION_STUDY_CACHE"
LAYOUTS = ("lines", "packed")
CACHE_FORMAT = 3  # bump when the cached tensors' meaning changes (2: safetensors, checked claims; 3: articles)


class DataError(ValueError):
    """Missing or unusable data; the message is one line meant for the user."""


@dataclass(frozen=True)
class SplitText:
    """The rows of one split, as the hub dataset has them (one row per line, "" for blank lines)."""

    name: str
    rows: list[str]
    source: str  # "hub:<dataset>/<config>" or the local file's path
    sha256: str
    articles: str | None = None  # for a half of a split: which of its articles it holds

    def describe(self) -> dict:
        described = {"split": self.name, "source": self.source, "sha256": self.sha256, "rows": len(self.rows)}
        return {**described, "articles": self.articles} if self.articles else described

    def row_articles(self) -> list[int]:
        """The article each row belongs to, numbered from 0 in this text (see article_half); a text
        with no title line is one article."""
        starts = article_starts(self.rows)
        article, out = 0, []
        for i in range(len(self.rows)):
            article += article < len(starts) - 1 and i == starts[article + 1]
            out.append(article)
        return out


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_rows(path: Path) -> tuple[list[str], str]:
    """Rows exactly as the hub's wikitext builder yields them: each line with its newline, blank
    lines (a lone space in the raw files) as ""."""
    raw = path.read_bytes()
    try:
        lines = raw.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (invalid byte at offset {err.start})") from None
    return [line if line.strip() else "" for line in lines], sha256_bytes(raw)


def checked_text(text: SplitText) -> SplitText:
    """The split, if it has any text: an empty split is bad input, not a crash deep in tokenization."""
    if not any(text.rows):
        raise DataError(f"split {text.name!r} ({text.source}) has no text: it is empty or only blank lines")
    return text


HALVES = ("A", "B")
ARTICLE_TITLE = re.compile(r"^ = [^=].* = $")  # " = Title = "; sections are " = = Section = = "


def article_starts(rows: list[str]) -> list[int]:
    """The row where each article starts: 0, then every title line after the first (rows before the
    first title belong to the first article)."""
    titles = [i for i, row in enumerate(rows) if ARTICLE_TITLE.match(row.rstrip("\n"))]
    return [0, *titles[1:]]


def article_half(text: SplitText, half: str) -> SplitText:
    """Half of a split's articles: A the even-numbered ones (0, 2, 4, ...), B the odd ones, so both
    halves span the whole split and neither shares an article with the other. An article runs from
    its ``= Title =`` line to the next; rows before the first title belong to the first article."""
    starts = [i for i, row in enumerate(text.rows) if ARTICLE_TITLE.match(row.rstrip("\n"))]
    if len(starts) < 2:
        raise DataError(f"split {text.name!r} has {len(starts)} article title line(s) (' = Title = '); "
                        f"halving it needs at least two")
    bounds = [*article_starts(text.rows), len(text.rows)]
    articles = [text.rows[a:b] for a, b in zip(bounds, bounds[1:])]
    parity = HALVES.index(half)
    rows = [row for i, article in enumerate(articles) if i % 2 == parity for row in article]
    which = f"{'even' if parity == 0 else 'odd'}-numbered {len(articles[parity::2])} of {len(articles)} articles"
    return checked_text(SplitText(f"{text.name}:{half}", rows, text.source, sha256_bytes("".join(rows).encode()), which))


def article_fraction(text: SplitText, fraction: float) -> SplitText:
    """The first round(fraction x n) of the split's n articles in one fixed random order (fixed by
    nothing but the article count: every run and every rung draws the same, and a smaller fraction's
    articles are part of a larger one's), kept in their order in the split; at least one article."""
    if fraction >= 1:
        return text
    starts = article_starts(text.rows)
    bounds = [*starts, len(text.rows)]
    order = torch.randperm(len(starts), generator=derived_generator(0, "train fraction"))
    kept = sorted(order[: max(1, round(fraction * len(starts)))].tolist())
    rows = [row for i in kept for row in text.rows[bounds[i]:bounds[i + 1]]]
    which = f"{len(kept)} of {len(starts)} articles (train_fraction {fraction:g})"
    return checked_text(SplitText(f"{text.name}*{fraction:g}", rows, text.source, sha256_bytes("".join(rows).encode()),
                                  which if text.articles is None else f"{which} of the {text.articles}"))


def load_split_text(split: str, data_dir: Path | None = None) -> SplitText:
    """A WikiText-2 split by name ("train", "validation", "test") or a plain text file's path;
    ``<split>:A`` and ``<split>:B`` are its two halves by article (see article_half).

    data_dir (or $WIKITEXT2_DIR) holds the original wiki.*.raw files; without it the split comes
    from the Hugging Face hub.
    """
    base, _, half = split.rpartition(":")
    if base and half in HALVES:
        return article_half(load_split_text(base, data_dir), half)
    data_dir = data_dir or (Path(os.environ[DATA_DIR_ENV]) if os.environ.get(DATA_DIR_ENV) else None)
    if split not in SPLIT_FILES:
        path = Path(split)
        if not path.is_file():
            raise DataError(f"split {split!r} is neither one of {sorted(SPLIT_FILES)} nor a text file")
        rows, digest = read_rows(path)
        return checked_text(SplitText(split, rows, str(path.resolve()), digest))
    if data_dir is not None:
        path = Path(data_dir) / SPLIT_FILES[split]
        if not path.is_file():
            raise DataError(f"missing data file {SPLIT_FILES[split]} for split {split!r} in folder {data_dir}")
        rows, digest = read_rows(path)
        if digest != KNOWN_SHA256[path.name]:
            warnings.warn(f"{path} does not match the published sha256 of {path.name}", stacklevel=2)
        return checked_text(SplitText(split, rows, str(path.resolve()), digest))
    return checked_text(load_hub_split(split))


def load_hub_split(split: str) -> SplitText:
    """A split of HUB_DATASET through ``datasets.load_dataset`` (the hub, or its local cache)."""
    try:
        import datasets

        rows = list(datasets.load_dataset(*HUB_DATASET, split=split)["text"])
    except Exception as err:  # no network, no cache, renamed dataset, ...
        raise DataError(
            f"could not load {'/'.join(HUB_DATASET)} split {split!r} from the hub ({type(err).__name__}); "
            f"pass --data_dir or set ${DATA_DIR_ENV} to a folder with the wiki.*.raw files"
        ) from None
    return SplitText(split, rows, "hub:" + "/".join(HUB_DATASET), sha256_bytes("".join(rows).encode()))


HUB_HOST = ("huggingface.co", 443)
# What the local copies replace in a command: the folders, and the splits this machine has (no train
# split: train on test, select on one validation half, report on the other).
LOCAL_FLAGS = {"--data_dir": "../shared/data/wikitext-2-raw-v1", "--tokenizer": "../shared/data/gpt2-tokenizer",
               "--train_split": "test", "--val_split": "validation:A", "--test_split": "validation:B"}


def local_command(command: list[str]) -> str:
    """The user's own command with the local flags put in place of any it gave for the same things."""
    kept, skip = [], False
    for arg in command[1:]:
        flag = arg.split("=", 1)[0]
        if skip:
            skip = False
        elif flag in LOCAL_FLAGS:
            skip = "=" not in arg  # drop the flag and its value
        else:
            kept.append(arg)
    local = [part for flag, value in LOCAL_FLAGS.items() for part in (flag, value)]
    return shlex.join(["python", Path(command[0]).name, *kept, *local])


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached: False at once under HF_HUB_OFFLINE=1, else one
    connection attempt bounded by ``timeout`` in all, name lookup included (the hub's own clients
    retry for about a minute, and a lookup with no network can take 20 s of its own)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    reached = []

    def attempt() -> None:
        try:
            socket.create_connection(HUB_HOST, timeout=timeout).close()
            reached.append(True)
        except OSError:
            pass

    probe = threading.Thread(target=attempt, daemon=True)  # a lookup that hangs is left behind, not waited for
    probe.start()
    probe.join(timeout)
    return bool(reached)


def needs_the_hub(splits: list[str], data_dir: Path | None, tokenizer: str | None) -> list[str]:
    """What would come from the hub: "the tokenizer" and/or "the data" (splits by name, no local folder)."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    tokenizer = tokenizer or os.environ.get(TOKENIZER_ENV) or HUB_TOKENIZER
    missing = [] if Path(tokenizer).is_dir() else [f"the tokenizer ({tokenizer!r}: --tokenizer DIR or ${TOKENIZER_ENV})"]
    by_name = [s for s in splits if (s.rpartition(":")[0] or s) in SPLIT_FILES]
    if by_name and not data_dir:
        missing.append(f"the data (splits {', '.join(sorted(set(by_name)))}: --data_dir DIR or ${DATA_DIR_ENV})")
    return missing


def check_offline_inputs(splits: list[str], data_dir: Path | None, tokenizer: str | None,
                         command: list[str] = ("train_simple.py",)) -> None:
    """Fail in seconds, naming everything missing and the local command (``command``, the user's
    own, with the local flags in), when the hub is needed and cannot be reached (rather than after a
    minute of the hub clients' retries)."""
    missing = needs_the_hub(splits, data_dir, tokenizer)
    if missing and not hub_reachable():
        raise DataError(f"the Hugging Face hub cannot be reached (offline, or HF_HUB_OFFLINE=1) and no local copy was "
                        f"given of {' and '.join(missing)}; with local files: {local_command(list(command))}")


def load_tokenizer(name_or_dir: str | None = None):
    """The GPT-2 tokenizer: a hub name (default "gpt2") or a local folder (or $GPT2_TOKENIZER)."""
    from transformers import AutoTokenizer

    name_or_dir = name_or_dir or os.environ.get(TOKENIZER_ENV) or HUB_TOKENIZER
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_dir)
    except Exception as err:
        raise DataError(
            f"could not load tokenizer {name_or_dir!r} ({type(err).__name__}); pass --tokenizer or set "
            f"${TOKENIZER_ENV} to a local folder with vocab.json and merges.txt"
        ) from None
    if tokenizer.eos_token_id is None:
        raise DataError(f"tokenizer {name_or_dir!r} has no EOS token to pad with")
    return tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    description = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return sha256_bytes(description.encode())


def byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE spells each byte as one printable character (OpenAI's
    ``bytes_to_unicode``: printable Latin-1 bytes stand for themselves, the rest map to 256 + n);
    this maps each such character back to its byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    chars = [*map(chr, printable), *(chr(256 + n) for n in range(len(others)))]
    return dict(zip(chars, [*printable, *others]))


def token_byte_lengths(tokenizer) -> Int[Tensor, " d_vocab"]:
    """UTF-8 bytes each token id stands for (0 for special tokens, which are not text).

    Counted from the token's own bytes, so a token holding part of a multibyte character counts just
    the bytes it holds, and the lengths of a text's tokens sum to len(text.encode("utf-8")).
    """
    decoder = byte_level_decoder()
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()
    lengths = torch.zeros(max(len(tokenizer), max(vocab.values()) + 1), dtype=torch.int64)
    for piece, token_id in vocab.items():
        if token_id in special:
            continue
        if not all(char in decoder for char in piece):
            raise DataError(f"tokenizer is not byte-level BPE (token {piece!r}); bytes per token are undefined")
        lengths[token_id] = len(piece)  # one character per byte
    return lengths


@dataclass
class TokenizedSplit:
    """Fixed-length sequences of one split; ``lengths`` says how many leading tokens are real.
    ``reference_nll``, when set, is the strongest n-gram's NLL of each scored token at its place
    (NaN elsewhere): what an evaluation interpolates the model with (metrics.py). ``articles``, when
    set, is the article each token comes from (-1 on padding): evaluations sum their loss per article,
    so that an analysis can resample the articles as well as the seeds."""

    tokens: Int[Tensor, "n_seq max_length"]
    lengths: Int[Tensor, " n_seq"]
    info: dict = field(default_factory=dict)
    reference_nll: Float[Tensor, "n_seq max_length"] | None = None
    articles: Int[Tensor, "n_seq max_length"] | None = None

    def subset(self, index: Int[Tensor, " n"]) -> "TokenizedSplit":
        """These sequences, with everything known of them per token."""
        def rows(values: Tensor | None) -> Tensor | None:
            return None if values is None else values[index]

        return TokenizedSplit(self.tokens[index], self.lengths[index], dict(self.info), rows(self.reference_nll),
                              rows(self.articles))

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def batch(self, index: Int[Tensor, " batch"]) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """(inputs, targets) for these sequences, padded only to the batch's longest sequence.

        Dropping the trailing all-padding columns changes nothing under a causal mask (no position
        sees later ones) and saves the work of the padded tail.
        """
        lengths = self.lengths[index]
        longest = max(int(lengths.max()), 2)
        seq = self.tokens[index, :longest]
        inputs, targets = seq[:, :-1], seq[:, 1:].clone()
        padded = torch.arange(1, longest, device=seq.device)[None, :] >= lengths[:, None]
        targets[padded] = IGNORE_INDEX
        return inputs, targets

    def scored_targets(self) -> Int[Tensor, " n_scored"]:
        """Every target token that carries loss, in order."""
        inputs, targets = self.batch(torch.arange(len(self)))
        return targets[targets != IGNORE_INDEX]


def layout_sequences(
    token_lists: list[list[int]], layout: str, max_length: int, pad_id: int
) -> tuple[Tensor, Tensor, dict]:
    """Arrange tokenized rows into (n_seq, max_length) sequences plus their real lengths.

    Raises DataError for a ``packed`` split shorter than one block (it would have no sequence).
    """
    if layout == "lines":
        token_lists = [ids for ids in token_lists if ids]
        truncated = sum(len(ids) > max_length for ids in token_lists)
        tokens = torch.full((len(token_lists), max_length), pad_id, dtype=torch.int64)
        lengths = torch.zeros(len(token_lists), dtype=torch.int64)
        for i, ids in enumerate(token_lists):
            ids = ids[:max_length]
            tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
            lengths[i] = len(ids)
        return tokens, lengths, {"truncated_sequences": truncated}
    if layout == "packed":
        stream = torch.tensor([t for ids in token_lists for t in ids], dtype=torch.int64)
        n_blocks = len(stream) // max_length
        if n_blocks == 0:
            raise DataError(f"{len(stream)} tokens are fewer than one packed block of max_length {max_length}")
        tokens = stream[: n_blocks * max_length].view(n_blocks, max_length)
        lengths = torch.full((n_blocks,), max_length, dtype=torch.int64)
        return tokens, lengths, {"dropped_tail_tokens": len(stream) - n_blocks * max_length}
    raise DataError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}")


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "activation-study")


def warn(message: str) -> None:
    """One line on stderr for something that costs time but not correctness."""
    print(f"warning: {message}", file=sys.stderr)


def cache_claims(text: SplitText, tokenizer, layout: str, max_length: int) -> dict[str, str]:
    """What a cache file of this split must say it holds: checked on every load, so a file copied
    under another split's name, or written by another tokenizer, is rebuilt rather than trained on."""
    return {"format": str(CACHE_FORMAT), "tokenizer": tokenizer_fingerprint(tokenizer), "source_sha256": text.sha256,
            "rows": str(len(text.rows)), "layout": layout, "max_length": str(max_length)}


def load_cache(path: Path, claims: dict[str, str], d_vocab: int) -> tuple[Tensor, Tensor, Tensor, dict] | None:
    """The cached (tokens, lengths, articles, layout info), or None (with a warning) when the file is missing,
    unreadable, or holds anything other than what ``claims`` says. safetensors holds only tensors
    and strings, so reading a hostile file cannot run code."""
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tokens, lengths, articles = (f.get_tensor(name) for name in ("tokens", "lengths", "articles"))
        problem = cache_problem(metadata, claims, tokens, lengths, d_vocab) or (
            None if articles.shape == tokens.shape and articles.dtype == torch.int64 else "articles do not fit the tokens")
        info = json.loads(metadata.get("info", "null"))
    except Exception as err:  # SafetensorError, a missing tensor, bad JSON: anything but a valid cache
        problem = f"unreadable ({type(err).__name__})"
    if problem is None and not (isinstance(info, dict) and all(isinstance(v, int) for v in info.values())):
        problem = "its layout info is not a table of counts"
    if problem is not None:
        warn(f"ignoring tokenized-data cache {path}: {problem}; rebuilding it")
        return None
    return tokens, lengths, articles, info


def cache_problem(metadata: dict, claims: dict, tokens: Tensor, lengths: Tensor, d_vocab: int) -> str | None:
    """Why a cache file's contents are not the split it claims to be, or None."""
    for key, value in claims.items():
        if metadata.get(key) != value:
            return f"{key} is {metadata.get(key)!r}, expected {value!r}"
    max_length = int(claims["max_length"])
    if tokens.dtype != torch.int64 or lengths.dtype != torch.int64:
        return f"dtypes {tokens.dtype}, {lengths.dtype} (expected int64)"
    if tokens.ndim != 2 or tokens.shape[1] != max_length or lengths.shape != tokens.shape[:1]:
        return f"shapes {tuple(tokens.shape)} and {tuple(lengths.shape)} do not fit max_length {max_length}"
    if tokens.numel() and not 0 <= int(tokens.min()) <= int(tokens.max()) < d_vocab:
        return f"token ids outside [0, {d_vocab})"
    if lengths.numel() and not 1 <= int(lengths.min()) <= int(lengths.max()) <= max_length:
        return f"sequence lengths outside [1, {max_length}]"
    return None


def save_cache(path: Path, claims: dict[str, str], tokens: Tensor, lengths: Tensor, articles: Tensor,
               info: dict) -> None:
    """Write the cache; a cache that cannot be written (read-only, full disk) only costs time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, save_safetensors({"tokens": tokens, "lengths": lengths, "articles": articles},
                                            metadata={**claims, "info": json.dumps(info)}))
    except (OSError, WriteError) as err:
        warn(f"could not cache tokenized data: {err}")


def tokenize_split(
    text: SplitText,
    tokenizer,
    layout: str = "lines",
    max_length: int = 128,
    byte_lengths: Tensor | None = None,
    cache_dir: Path | None = None,
) -> TokenizedSplit:
    """Tokenize one split into the chosen layout (cached), and count its scored tokens and bytes."""
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}")
    if max_length < 2:
        raise DataError(f"max_length must be at least 2 (one input, one target), got {max_length}")
    claims = cache_claims(text, tokenizer, layout, max_length)
    key = sha256_bytes(json.dumps(claims, sort_keys=True).encode())[:32]
    cache_file = (cache_dir or default_cache_dir()) / f"{key}.safetensors"
    cached = load_cache(cache_file, claims, len(tokenizer))
    if cached is not None:
        tokens, lengths, articles, layout_info = cached
    else:
        token_lists = tokenizer(text.rows, add_special_tokens=False)["input_ids"] if text.rows else []
        try:
            tokens, lengths, layout_info = layout_sequences(token_lists, layout, max_length, tokenizer.eos_token_id)
        except DataError as err:
            raise DataError(f"split {text.name!r}: {err}") from None
        # each token's article, laid out exactly as the tokens are (padding: -1)
        article_lists = [[article] * len(ids) for article, ids in zip(text.row_articles(), token_lists)]
        articles = layout_sequences(article_lists, layout, max_length, -1)[0]
        layout_info = {**layout_info, "text_tokens": sum(map(len, token_lists))}
        save_cache(cache_file, claims, tokens, lengths, articles, layout_info)
    split = TokenizedSplit(tokens, lengths, articles=articles)
    scored = split.scored_targets()
    if byte_lengths is None:
        byte_lengths = token_byte_lengths(tokenizer)
    split.info = {
        **text.describe(),
        "layout": layout,
        "max_length": max_length,
        "sequences": len(split),
        **layout_info,
        "tokens": int(scored.numel()),
        "bytes": int(byte_lengths[scored].sum()),
        "n_articles": int(articles.max()) + 1,
    }
    return split
