"""Real text for the long-context measures, and per-token losses from one forward pass.

:class:`LongText` reads user-given files once per tokenizer:

* a ``.jsonl`` file holds one document per line (a JSON object with a ``"text"`` string), so its document
  boundaries are known;
* any other file is plain UTF-8 text read as one document. Files that join several documents with blank
  lines, as ``benchmarks/reproduce.py`` writes its held-out files ``DIR/heldout/SOURCE.txt`` (documents and
  the paragraphs inside them are both separated by one blank line), cannot show where a document starts, so
  they are read as one stream.

Each document is tokenized whole (``add_special_tokens=False``, with character offsets), so every token is
the one the model sees in running text; paragraphs (text between blank lines) are located in it by their
offsets. A fast (Rust) tokenizer is needed for the offsets: every tokenizer on the Hub for the supported
families has one.
"""

from __future__ import annotations

import bisect
import json
import os
import re
from dataclasses import dataclass

import torch

PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")


@dataclass(frozen=True)
class Paragraph:
    doc: int
    """Index of its document in :attr:`LongText.documents`."""
    char_start: int
    char_end: int
    tok_start: int
    """Its tokens are ``documents[doc].ids[tok_start:tok_end]``."""
    tok_end: int
    sep_start: int
    """``ids[sep_start:tok_start]`` are the separator tokens (the blank line) before it; empty for the first
    paragraph of a document."""

    @property
    def tokens(self) -> int:
        return self.tok_end - self.tok_start


@dataclass
class Document:
    source: str
    """``path`` for a plain-text file, ``path:LINE`` for a document of a ``.jsonl`` file."""
    text: str
    ids: list[int]


def read_documents(path: str | os.PathLike) -> tuple[list[tuple[str, str]], bool]:
    """``([(source, text)], marked)`` of one file; ``marked`` is True for ``.jsonl`` (document boundaries known).

    Raises:
        FileNotFoundError: no such file. ValueError: an empty file, or a ``.jsonl`` line that is not a JSON
            object with a ``"text"`` string.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no text file at '{path}'")
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    if path.endswith(".jsonl"):
        docs = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ValueError(f"'{path}' line {number}: expected a JSON object with a \"text\" string "
                                 "(one document per line)")
            if obj["text"].strip():
                docs.append((f"{path}:{number}", obj["text"]))
        marked = True
    else:
        docs = [(path, raw)] if raw.strip() else []
        marked = False
    if not docs:
        raise ValueError(f"'{path}' holds no text")
    return docs, marked


def special_prefix(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text (e.g. ``[bos]`` for Llama 2/3; none for SmolLM2)."""
    plain = tokenizer("a", add_special_tokens=False).input_ids
    full = tokenizer("a", add_special_tokens=True).input_ids
    if plain and len(full) >= len(plain) and full[len(full) - len(plain):] == plain:
        return list(full[:len(full) - len(plain)])
    return []


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizer objects tokenize identically (the same object, or the same serialized tokenizer)."""
    if a is b:
        return True
    backend_a, backend_b = getattr(a, "backend_tokenizer", None), getattr(b, "backend_tokenizer", None)
    if backend_a is None or backend_b is None:
        return False
    return backend_a.to_str() == backend_b.to_str() and special_prefix(a) == special_prefix(b)


class LongText:
    """User-given text files tokenized once for one tokenizer (see the module docstring)."""

    def __init__(self, files, tokenizer):
        files = [os.fspath(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]
        if not files:
            raise ValueError("no text file given")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"the long-context measures need a fast tokenizer (character offsets); "
                             f"got {type(tokenizer).__name__}")
        self.files = files
        self.tokenizer = tokenizer
        self.prefix = special_prefix(tokenizer)
        self.documents: list[Document] = []
        self.file_documents: dict[str, list[int]] = {}
        self.marked: dict[str, bool] = {}
        self.paragraphs: list[Paragraph] = []
        for path in files:
            docs, marked = read_documents(path)
            self.marked[path] = marked
            self.file_documents[path] = []
            for source, text in docs:
                enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                index = len(self.documents)
                self.file_documents[path].append(index)
                self.documents.append(Document(source, text, list(enc.input_ids)))
                self.paragraphs += _paragraphs(index, text, [o[0] for o in enc.offset_mapping])
        self.tokens = sum(len(d.ids) for d in self.documents)
        if self.tokens == 0:
            raise ValueError(f"{', '.join(files)}: no tokens")
        self.chars_per_token = sum(len(d.text) for d in self.documents) / self.tokens

    def stream(self) -> tuple[list[int], list[int]]:
        """All documents' tokens concatenated, and each document's offset in that stream."""
        if not hasattr(self, "_stream"):
            ids, offsets = [], []
            for d in self.documents:
                offsets.append(len(ids))
                ids += d.ids
            self._stream = (ids, offsets)
        return self._stream

    def sequences(self, length: int, count: int) -> list[dict]:
        """``count`` token sequences of exactly ``length`` tokens (the tokenizer's special prefix, e.g. BOS,
        then text): from a ``.jsonl`` file the first tokens of each document that has enough, from a
        plain-text file consecutive non-overlapping segments. Taken round-robin over the files and evenly
        spaced within each file. When the documents' beginnings are fewer than ``count``, the ``.jsonl``
        documents' further non-overlapping segments are candidates too (such a sequence starts mid-document).

        Returns:
            ``[{"source": str, "start": first text token's index in its document, "ids": [length ints]}]``.

        Raises:
            ValueError: the files hold fewer than ``count`` such sequences.
        """
        if length <= len(self.prefix) + 1:
            raise ValueError(f"sequence length must be > {len(self.prefix) + 1} tokens, got {length}")
        body = length - len(self.prefix)
        def segments(whole_documents: bool) -> dict[str, list[tuple[int, int]]]:
            candidates = {}
            for path in self.files:
                found = []
                for index in self.file_documents[path]:
                    doc = self.documents[index]
                    starts = [0] if self.marked[path] and not whole_documents else range(0, len(doc.ids) - body + 1,
                                                                                         body)
                    found += [(index, s) for s in starts if s + body <= len(doc.ids)]
                candidates[path] = found
            return candidates

        candidates = segments(whole_documents=False)
        if sum(len(c) for c in candidates.values()) < count:
            candidates = segments(whole_documents=True)
        available = sum(len(c) for c in candidates.values())
        if available < count:
            raise ValueError(
                f"loss by position needs {count} sequences of {length} tokens but the text files hold {available} "
                f"({'; '.join(f'{os.path.basename(p)}: {len(c)}' for p, c in candidates.items())}): give more text, "
                "fewer sequences or a shorter length")
        quota = {p: 0 for p in self.files}
        while sum(quota.values()) < count:
            for p in self.files:
                if quota[p] < len(candidates[p]) and sum(quota.values()) < count:
                    quota[p] += 1
        out = []
        for path in self.files:
            found, n = candidates[path], quota[path]
            for i in range(n):
                index, start = found[i * len(found) // n]
                doc = self.documents[index]
                out.append({"source": doc.source, "start": start, "ids": self.prefix + doc.ids[start:start + body]})
        return out

    def paragraph_text(self, p: Paragraph) -> str:
        return self.documents[p.doc].text[p.char_start:p.char_end]


def _paragraphs(doc: int, text: str, starts: list[int]) -> list[Paragraph]:
    """The paragraphs (non-blank text between blank lines) of a document, located in its tokens by the
    tokens' start offsets."""
    spans, pos = [], 0
    for m in PARAGRAPH_BREAK.finditer(text):
        spans.append((pos, m.start()))
        pos = m.end()
    spans.append((pos, len(text)))
    out, prev_end = [], None
    for cs, ce in spans:
        segment = text[cs:ce]
        if not segment.strip():
            continue
        cs += len(segment) - len(segment.lstrip())
        ce -= len(segment) - len(segment.rstrip())
        ts, te = bisect.bisect_left(starts, cs), bisect.bisect_left(starts, ce)
        if te <= ts:
            continue
        out.append(Paragraph(doc, cs, ce, ts, te, ts if prev_end is None else prev_end))
        prev_end = te
    return out


def as_long_text(texts, tokenizer) -> LongText:
    """``texts`` (file paths, or a :class:`LongText`) tokenized for ``tokenizer``: a LongText built for a
    tokenizer that tokenizes identically is reused, any other is rebuilt from its files."""
    if isinstance(texts, LongText):
        return texts if same_tokenizer(texts.tokenizer, tokenizer) else LongText(texts.files, tokenizer)
    return LongText(texts, tokenizer)


@torch.no_grad()
def token_nlls(model, ids, chunk: int = 1024) -> torch.Tensor:
    """Negative log-likelihood (nats, float32, on the CPU) of every token of a sequence but the first, from
    one forward pass without a cache: element ``t - 1`` is the loss of ``ids[t]`` given ``ids[:t]``. The
    softmax runs over ``chunk`` positions at a time in float32."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    device = next(model.parameters()).device
    logits = model(input_ids=ids[None].to(device), use_cache=False).logits[0]
    targets = ids[1:].to(device)
    out = torch.empty(len(targets), dtype=torch.float32)
    for start in range(0, len(targets), chunk):
        end = min(start + chunk, len(targets))
        out[start:end] = torch.nn.functional.cross_entropy(
            logits[start:end].float(), targets[start:end], reduction="none").cpu()
    return out
