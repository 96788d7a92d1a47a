"""The configuration of ``liger bench``: a typed dataclass that a YAML file maps onto 1:1 (the machinery is
:mod:`liger.typed_config`, as for the run config of ``liger finetune``).

Precedence: command line (flags and ``key.sub=value`` overrides) > YAML file (``--config``) > the defaults below.
This module imports neither torch nor transformers (``liger bench --help`` reads its defaults and docstrings).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..train.config import LoraSettings, check_lora
from ..typed_config import build, need, read_yaml, reference_table


@dataclass
class BenchConfig:
    model: str = "random:smollm2"
    """A Liger checkpoint, a base checkpoint (converted with ``liger_options``), the alias ``smollm2``, or
    ``random:smollm2`` / ``random:tiny`` (random weights with a known architecture, no download)."""
    teacher: str | None = None
    """Base model to compare against; unset = the base ``model`` was given as (none when ``model`` is a Liger
    checkpoint)."""
    device: Literal["cuda", "cpu"] = "cuda"
    """Device of the measurements."""
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Dtype of both models' weights."""
    batch_size: int = 16
    """Sequences per prefill and decode step."""
    prompt_length: int = 128
    """Start of the estimated total decode time, and the context of the decode-mode comparison."""
    contexts: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192, 16384, 32768])
    """Context lengths at which prefill time and per-token decode latency are measured."""
    decode_steps: int = 16
    """Timed decode steps per context (the latency is their median)."""
    warmup_steps: int = 3
    """Untimed decode steps before them."""
    prefill_repeats: int = 2
    """Prefill runs per context (the fastest is kept)."""
    graph_batch_size: int = 1
    """Batch of the eager / static / CUDA-graph decode comparison."""
    graph_steps: int = 32
    """Timed steps per mode of that comparison."""
    decode_modes: bool = True
    """Run that comparison (off: the per-context rows alone, e.g. in a short lease: the compiled mode's
    compilation alone can take a minute)."""
    decode: bool = True
    """Measure prefill and decoding (and check the fast path against the reference ops first)."""
    teachers: list[Literal["eager", "static", "gqa_graph"]] = field(
        default_factory=lambda: ["eager", "static", "gqa_graph"])
    """Teachers whose decoding is measured beside Liger's at each context: ``eager`` (HF forward + DynamicCache,
    what ``generate`` does by default), ``static`` (HF StaticCache + ``torch.compile(mode="reduce-overhead")``:
    CUDA graphs, transformers' recipe), ``gqa_graph`` (a hand-written step on a static cache read once per KV
    head, captured in one CUDA graph: ``liger/bench/teacher_decode.py``). Off CUDA the last two run uncompiled
    and uncaptured."""
    teacher_compile: bool = True
    """On CUDA: compile the ``static`` teacher's forward and the ``gqa_graph`` teacher's per-layer functions."""
    gqa_attention: Literal["fold", "enable_gqa"] = "fold"
    """Attention of the ``gqa_graph`` teacher: ``fold`` (a KV head's query heads as its query rows, one fused SDPA
    call with a per-key mask) or ``enable_gqa`` (SDPA's grouped-query flag with the same mask)."""
    train: bool = False
    """Also measure LoRA fine-tuning throughput."""
    train_batch_sizes: list[int] = field(default_factory=lambda: [8, 32])
    """Sequences per training step, one measurement each."""
    train_length: int = 1024
    """Tokens per training sequence."""
    train_modes: list[str] = field(default_factory=lambda: ["eager", "cuda_graph"])
    """How each training step runs: ``eager``, and ``cuda_graph`` (forward, loss and backward captured once and
    replayed, as ``train.cuda_graph`` trains; CUDA only), one measurement each, for both models."""
    train_steps: int = 10
    """Timed training steps (after 3 untimed ones)."""
    serve: bool = False
    """Measure serving throughput: the largest batch whose decoding fits in memory at each of ``serve_contexts``,
    for the ``gqa_graph`` teacher and for Liger, and tokens/s at every batch tried (``liger/bench/serve.py``)."""
    serve_contexts: list[int] = field(default_factory=lambda: [4096, 32768, 131072])
    """Context lengths of the serving throughput search."""
    serve_steps: int = 8
    """Timed decode steps per batch tried (after ``warmup_steps``)."""
    serve_start_batch: int = 1
    """First batch of the search (it doubles from here, then bisects)."""
    serve_max_batch: int = 65536
    """Largest batch tried."""
    serve_tolerance: float = 0.05
    """The bisection stops when the last batch that fit and the first that did not are within this fraction of
    each other (0: the exact boundary)."""
    serve_memory_limit_gib: float | None = None
    """Memory the decoding may use: on CUDA the allocator is capped there; on a CPU (no allocator limit) a batch
    fits when the model's weights plus its decoding state stay under it. Unset: the whole device (CUDA)."""
    serve_search_seconds: float | None = None
    """Seconds per (model, context) search; when they run out, the largest batch that fit so far is reported (as a
    lower bound, ``stopped: time``)."""
    seed: int = 0
    """Seeds the random tokens."""
    profile: bool = False
    """Also record a torch.profiler table (top kernels by device time) for one prefill at 2K (or the first
    context), one decode step at the longest context, and one training step, per model."""
    autotune: Literal["full", "fast"] = "full"
    """fla's Triton autotuning on first use: every config, or a subset (4 warps, 2-3 stages) that makes the first
    call about 5x quicker (see ``liger/bench/autotune.py``)."""
    liger_options: dict[str, Any] = field(default_factory=dict)
    """LigerConfig fields for the conversion of a base ``model``, e.g. ``{window_size: 64}`` (unset = the paper's
    values); refused for a Liger checkpoint."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """The LoRA of the training measurement: the run config's ``lora`` section (default: the paper's r=8,
    alpha=8 on q/k/v)."""
    time_budget: float | None = None
    """Seconds; sections that would start after it are skipped (and reported as skipped)."""
    output: str = "bench.json"
    """The JSON report, written after every measurement; the plot goes next to it (.png)."""

    def __post_init__(self):
        check(self)


def check(cfg: BenchConfig) -> None:
    """Value checks beyond the types (the message names the key)."""
    for key in ("batch_size", "prompt_length", "decode_steps", "prefill_repeats", "graph_batch_size", "graph_steps",
                "train_length", "train_steps", "serve_steps", "serve_start_batch", "serve_max_batch"):
        need(getattr(cfg, key) >= 1, key, "must be >= 1", getattr(cfg, key))
    need(cfg.warmup_steps >= 0, "warmup_steps", "must be >= 0", cfg.warmup_steps)
    need(bool(cfg.contexts) and min(cfg.contexts) >= 1, "contexts", "must be positive integers", cfg.contexts)
    need(bool(cfg.train_batch_sizes) and min(cfg.train_batch_sizes) >= 1, "train_batch_sizes",
         "must be positive integers", cfg.train_batch_sizes)
    need(bool(cfg.train_modes) and set(cfg.train_modes) <= {"eager", "cuda_graph"}, "train_modes",
         "must be eager and/or cuda_graph", cfg.train_modes)
    need(bool(cfg.serve_contexts) and min(cfg.serve_contexts) >= 1, "serve_contexts", "must be positive integers",
         cfg.serve_contexts)
    need(cfg.serve_start_batch <= cfg.serve_max_batch, "serve_start_batch", "must be <= serve_max_batch",
         cfg.serve_start_batch)
    need(0 <= cfg.serve_tolerance < 1, "serve_tolerance", "must be in [0, 1)", cfg.serve_tolerance)
    need(cfg.serve_memory_limit_gib is None or cfg.serve_memory_limit_gib > 0, "serve_memory_limit_gib",
         "must be > 0 or null", cfg.serve_memory_limit_gib)
    need(cfg.serve_search_seconds is None or cfg.serve_search_seconds > 0, "serve_search_seconds",
         "must be > 0 or null", cfg.serve_search_seconds)
    need(cfg.serve_memory_limit_gib is not None or cfg.device == "cuda" or not cfg.serve, "serve_memory_limit_gib",
         "must be set to search for the largest batch on a CPU (there is no allocator limit to run into)",
         cfg.serve_memory_limit_gib)
    need(len(set(cfg.teachers)) == len(cfg.teachers), "teachers", "must not repeat a teacher", cfg.teachers)
    need(cfg.time_budget is None or cfg.time_budget > 0, "time_budget", "must be > 0 or null", cfg.time_budget)
    need(bool(cfg.output), "output", "must be a file path", cfg.output)
    check_lora(cfg.lora)
    cfg.contexts = sorted(set(cfg.contexts))
    cfg.serve_contexts = sorted(set(cfg.serve_contexts))


def load_bench_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                      settings: dict[str, Any] | None = None) -> BenchConfig:
    """The resolved benchmark config: defaults, then the YAML file ``path``, then ``settings`` (from command-line
    flags, ``{"batch_size": 8}``), then the ``key.sub=value`` overrides in order.

    Raises:
        ConfigError: unknown key, wrong type or invalid value (the message names the key).
        FileNotFoundError: no such config file.
    """
    data = {}
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no config file '{path}'")
        data = read_yaml(Path(path))
    return build(BenchConfig, data, settings, overrides)


def bench_config_reference() -> str:
    """A Markdown table of every key, its type, default and docstring (for docs/gpu.md)."""
    return reference_table(BenchConfig)


def defaults() -> dict[str, Any]:
    """Every key's default value (for the command line's help)."""
    return dataclasses.asdict(BenchConfig())
