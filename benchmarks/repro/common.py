"""The students, their token budgets and what every step of ``reproduce.py`` shares (paths, the
manifest, run summaries)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from liger.recipes import RECIPES  # (reproduce.py puts the checkout on the path; no torch import there)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "reproduce.py"
"""The entry script: student and long-context processes run it again (``_student``, ``_longctx``)."""
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
    # and trained on longer sequences (4096 tokens, 2 per step: the same 8,192 tokens per step); the combined
    # recipes keep 256 global keys per KV head (without training, 256 retrieve the passkey at 1K-4K and 64 do not:
    # docs/results-memory.md)
    "gla-norm": dict(liger={"variant": "gla", "linear_normalizer": "sum"}),
    "gla-global": dict(liger={"variant": "gla", "global_cache_size": 64}),
    "deltanet": dict(liger={"variant": "gated_deltanet"}),
    "window-global": dict(liger={"variant": "gla", "linear_weight": 0.0, "window_weight": 1.0,
                                 "global_cache_size": 256}),
    # the cache ranked by pooled recall errors (global_cache_pool), 4 sinks, on 4,096-token sequences
    "window-pool": dict(liger={"variant": "gla", "linear_weight": 0.0, "window_weight": 1.0,
                               "global_cache_size": 256, "global_cache_pool": 8, "num_sink_tokens": 4},
                        train={"data.max_length": 4096}),
    "memory": dict(liger={"variant": "gla", "linear_normalizer": "sum", "global_cache_size": 256,
                          "num_sink_tokens": 4}, train={"data.max_length": 4096}),
    # liger/recipes.py's `memory` recipe (window 512 + 4 sinks + 512 pooled global keys, window-only) trained on
    # 4,096-token sequences, and its control without the global cache (issue 14's 20 M-token matrix)
    "memory-recipe": dict(liger={"variant": "gla", **RECIPES["memory"]}, train={"data.max_length": 4096}),
    "window512": dict(liger={"variant": "gla", **{k: v for k, v in RECIPES["memory"].items()
                                                   if not k.startswith("global_cache")}},
                      train={"data.max_length": 4096}),
    # attention transfer (LoLCATs' stage 1) for the first quarter of the steps, then the usual LoRA objective
    "gla-at": dict(liger={"variant": "gla"}, transfer_fraction=0.25),
    "memory-at": dict(liger={"variant": "gla", "linear_normalizer": "sum", "global_cache_size": 256,
                             "num_sink_tokens": 4}, train={"data.max_length": 4096}, transfer_fraction=0.25),
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


def load_manifest(corpus: Path) -> dict:
    path = corpus / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"{corpus} has no manifest.json (build it with `reproduce.py corpus --out {corpus}`)")
    return json.loads(path.read_text())


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


def read_summary(runs: Path, name: str) -> dict:
    path = runs / name / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else dict(student=name, status="missing")


def _num(value, fmt="{:.3f}"):
    return "–" if value is None else fmt.format(value)
