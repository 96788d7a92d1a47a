"""The configuration of ``liger eval``: a typed dataclass that a YAML file maps onto 1:1 (the machinery is
:mod:`liger.typed_config`, as for ``liger finetune`` and ``liger bench``).

Precedence: command line (flags and ``key=value`` overrides) > YAML file (``--config``) > the defaults below. Every
check of the settings happens here, once, before any model loads; the library functions keep the checks of their
own arguments for callers that use them directly. This module imports neither torch nor transformers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..typed_config import ConfigError, build, read_yaml, reference_table


@dataclass
class EvalConfig:
    model: str | None = None
    """One model to evaluate: a checkpoint directory (base or Liger) or the alias ``smollm2``."""
    compare: list[str] = field(default_factory=list)
    """TEACHER STUDENT...: measure all the same way and write a recovery report. Students: checkpoint directories,
    ``swa:W:S`` (the teacher on a W-key window + S sinks, no training), ``convert:VARIANT`` (converted, not
    fine-tuned)."""
    tasks: str | None = None
    """Comma-separated suites (``paper``, ``offline``) and lm-eval task names; unset = ``offline`` when no other
    measure is asked for, else none."""
    include_path: str | None = None
    """Folder of extra lm-eval task YAMLs."""
    limit: int | None = None
    """Documents per task (unset = all)."""
    batch_size: int = 8
    """lm-eval batch size."""
    ppl: list[str] = field(default_factory=list)
    """Plain-text files to measure perplexity on."""
    ppl_context: int = 512
    """Tokens per perplexity window."""
    ppl_stride: int = 256
    """Tokens between perplexity windows."""
    ppl_max_tokens: int | None = None
    """Score only the first N tokens of each perplexity file."""
    passkey: list[int] = field(default_factory=list)
    """Passkey retrieval at these prompt lengths in tokens (``--passkey`` alone: 1024,2048,4096,8192)."""
    passkey_trials: int = 20
    """Passkey prompts per length."""
    multikey: list[int] = field(default_factory=list)
    """Multi-key retrieval at these prompt lengths in tokens (needs ``long_text``)."""
    multikey_trials: int = 20
    """Multi-key prompts per length."""
    multikey_pairs: int = 4
    """Key-value pairs per multi-key prompt."""
    position_loss: bool = False
    """Mean loss per position bucket on ``long_text`` sequences."""
    position_length: int = 4096
    """Tokens per loss-by-position sequence."""
    position_sequences: int = 20
    """Loss-by-position sequences scored."""
    position_buckets: list[int] | None = None
    """First position of each bucket after 1-63 (unset = 64, 256, 1024, ... below the length)."""
    repeat_recall: list[int] = field(default_factory=list)
    """Repeated-span recall at these distances in tokens (needs ``long_text``)."""
    repeat_trials: int = 20
    """Paragraphs per repeated-span distance."""
    long_text: list[str] = field(default_factory=list)
    """Text for multi-key retrieval, loss by position and repeated-span recall (.txt or .jsonl files)."""
    tokenizer: str | None = None
    """Tokenizer directory (unset = the model's own)."""
    device: str | None = None
    """cpu, cuda, cuda:1... (unset = cuda if available)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the evaluated models' weights."""
    seed: int = 0
    """Seed of lm-eval and of every random choice of the long-context measures."""
    output: str | None = None
    """With ``model``: write the results JSON here."""
    output_dir: str | None = None
    """With ``compare``: write report.json, report.md and the plots here (unset = eval-report)."""

    def __post_init__(self):
        check(self)

    @property
    def needs_text(self) -> list[str]:
        """The measures asked for that read ``long_text``."""
        return [name for name, on in (("multikey", self.multikey), ("position_loss", self.position_loss),
                                      ("repeat_recall", self.repeat_recall)) if on]

    @property
    def resolved_tasks(self) -> str | None:
        """``tasks``, or the offline suite when nothing else is asked for."""
        if self.tasks is None and not self.ppl and not self.passkey and not self.needs_text:
            return "offline"
        return self.tasks or None


def need(ok: bool, key: str, message: str, value) -> None:
    if not ok:
        raise ConfigError(f"{flag(key)} {message}, got {value!r}")


def check(cfg: EvalConfig) -> None:
    """Value checks beyond the types (the message names the key); :func:`load_eval_config` also needs a model or
    a comparison."""
    need(not cfg.compare or len(cfg.compare) >= 2, "compare", "needs a teacher and at least one student", cfg.compare)
    need(cfg.limit is None or cfg.limit >= 1, "limit", "must be >= 1 or null", cfg.limit)
    need(cfg.batch_size >= 1, "batch_size", "must be >= 1", cfg.batch_size)
    need(cfg.include_path is None or Path(cfg.include_path).is_dir(), "include_path", "must be a directory",
         cfg.include_path)
    for key in ("passkey_trials", "multikey_trials", "multikey_pairs", "position_sequences", "repeat_trials"):
        need(getattr(cfg, key) >= 1, key, "must be >= 1", getattr(cfg, key))
    need(cfg.position_length >= 2, "position_length", "must be >= 2", cfg.position_length)
    for key in ("passkey", "multikey", "repeat_recall"):
        need(all(v >= 1 for v in getattr(cfg, key)), key, "must be positive token counts", getattr(cfg, key))
    if cfg.ppl_context < 2 or not 1 <= cfg.ppl_stride <= cfg.ppl_context:
        raise ConfigError(f"need --ppl-context >= 2 and 1 <= --ppl-stride <= --ppl-context, got {cfg.ppl_context} "
                          f"and {cfg.ppl_stride}")
    need(cfg.ppl_max_tokens is None or cfg.ppl_max_tokens >= 2, "ppl_max_tokens", "must be >= 2 or null",
         cfg.ppl_max_tokens)
    for path in cfg.ppl:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no text file at '{path}'")
    needs = [flag(name) for name in cfg.needs_text]
    if needs and not cfg.long_text:
        raise ConfigError(f"{', '.join(needs)} need{'s' if len(needs) == 1 else ''} --long-text FILE...")
    if cfg.long_text and not needs:
        raise ConfigError("--long-text is read by --multikey, --position-loss and --repeat-recall; none was given")
    if cfg.output and cfg.compare:
        raise ConfigError("--output is for --model; --compare writes to --output-dir")
    if cfg.output_dir and cfg.model:
        raise ConfigError("--output-dir is for --compare; --model writes to --output")


def flag(key: str) -> str:
    """The command-line flag of config key ``key`` (``passkey_trials`` -> ``--passkey-trials``): messages name the
    flag, which names the key."""
    return "--" + key.replace("_", "-")


def load_eval_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                     settings: dict[str, Any] | None = None) -> EvalConfig:
    """The resolved evaluation config: defaults, then the YAML file ``path``, then ``settings`` (from
    command-line flags, ``{"limit": 50}``), then the ``key=value`` overrides in order.

    Raises:
        ConfigError: unknown key, wrong type or invalid value (the message names the key).
        FileNotFoundError: no such config file, or a missing perplexity file.
    """
    data = {}
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no config file '{path}'")
        data = read_yaml(Path(path))
    cfg = build(EvalConfig, data, settings, overrides)
    if (cfg.model is None) == (not cfg.compare):
        raise ConfigError("give exactly one of --model MODEL and --compare TEACHER STUDENT...")
    return cfg


def eval_config_reference() -> str:
    """A Markdown table of every key, its type, default and docstring (for docs/evaluation.md)."""
    return reference_table(EvalConfig)


def defaults() -> dict[str, Any]:
    """Every key's default value (for the command line's help)."""
    return {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            for f in dataclasses.fields(EvalConfig)}
