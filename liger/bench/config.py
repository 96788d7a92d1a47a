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
    decode: bool = True
    """Measure prefill and decoding (and check the fast path against the reference ops first)."""
    train: bool = False
    """Also measure LoRA fine-tuning throughput."""
    train_batch_sizes: list[int] = field(default_factory=lambda: [8, 32])
    """Sequences per training step, one measurement each."""
    train_length: int = 1024
    """Tokens per training sequence."""
    train_steps: int = 10
    """Timed training steps (after 3 untimed ones)."""
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
                "train_length", "train_steps"):
        need(getattr(cfg, key) >= 1, key, "must be >= 1", getattr(cfg, key))
    need(cfg.warmup_steps >= 0, "warmup_steps", "must be >= 0", cfg.warmup_steps)
    need(bool(cfg.contexts) and min(cfg.contexts) >= 1, "contexts", "must be positive integers", cfg.contexts)
    need(bool(cfg.train_batch_sizes) and min(cfg.train_batch_sizes) >= 1, "train_batch_sizes",
         "must be positive integers", cfg.train_batch_sizes)
    need(cfg.time_budget is None or cfg.time_budget > 0, "time_budget", "must be > 0 or null", cfg.time_budget)
    need(bool(cfg.output), "output", "must be a file path", cfg.output)
    check_lora(cfg.lora)
    cfg.contexts = sorted(set(cfg.contexts))


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
