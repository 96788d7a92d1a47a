"""Loading models and tokenizers: the one loader of ``liger finetune`` / ``linearize``, ``liger eval`` and
``liger bench``, and the one map of dtype names.

A model argument (``spec``) is a checkpoint directory (a base model or a saved Liger model), the alias
``smollm2`` (see :mod:`liger.assets`), a Hugging Face hub id, or ``random:NAME``: random weights with a known
architecture (:data:`RANDOM_CONFIGS`), for benchmarks and tests that need no download.
"""

from __future__ import annotations

import logging
import os

import torch

import liger.models  # noqa: F401  (registers the liger model type with transformers' Auto classes)

logger = logging.getLogger("liger")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes a command accepts, by name."""

RANDOM_CONFIGS = {
    # SmolLM2-135M(-Instruct)'s architecture (a Llama): what the GPU benchmark runs, with random weights
    "smollm2": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, hidden_act="silu", rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True,
        max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    ),
    # a toy Llama for testing the benchmark itself on a CPU
    "tiny": dict(
        model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, hidden_act="silu", rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
        max_position_embeddings=4096,
    ),
}
"""Architectures of the ``random:NAME`` models."""

RANDOM_PREFIX = "random:"


def to_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from its name in :data:`DTYPES` (a dtype is returned as is).

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}' (choose from {', '.join(DTYPES)})")
    return DTYPES[dtype]


def random_model(name: str, dtype: str | torch.dtype = "float32", attn_implementation: str | None = None):
    """A causal LM with the architecture ``RANDOM_CONFIGS[name]`` and random weights (seeded: always the same)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if name not in RANDOM_CONFIGS:
        raise ValueError(f"unknown random model '{name}' (known: {', '.join(RANDOM_CONFIGS)})")
    values = dict(RANDOM_CONFIGS[name])
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=to_dtype(dtype),
                                            attn_implementation=attn_implementation).eval()


def is_liger_checkpoint(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names a saved Liger model (``random:`` models are base models)."""
    from transformers import AutoConfig

    from .assets import resolve_model

    if os.fspath(spec).startswith(RANDOM_PREFIX):
        return False
    return getattr(AutoConfig.from_pretrained(resolve_model(spec)), "model_type", None) == "liger"


def load_tokenizer(spec: str | os.PathLike, tokenizer: str | os.PathLike | None = None):
    """The tokenizer saved with ``spec`` (or the one in the directory ``tokenizer``)."""
    from transformers import AutoTokenizer

    from .assets import resolve_model

    return AutoTokenizer.from_pretrained(tokenizer or resolve_model(spec))


def load_pretrained(spec: str | os.PathLike, dtype: str | torch.dtype = "float32",
                    attn_implementation: str | None = None):
    """A causal LM as it was saved — a base model or a Liger model — or a ``random:NAME`` model, in eval mode.

    Args:
        attn_implementation: passed to transformers for a base model (e.g. ``"sdpa"``); None = its default.
    """
    from transformers import AutoModelForCausalLM

    from .assets import resolve_model

    name = os.fspath(spec)
    if name.startswith(RANDOM_PREFIX):
        return random_model(name[len(RANDOM_PREFIX):], dtype, attn_implementation)
    kwargs = dict(attn_implementation=attn_implementation) if attn_implementation else {}
    return AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=to_dtype(dtype), **kwargs).eval()


def load_model(spec: str | os.PathLike, liger_options: dict | None = None, dtype: str | torch.dtype = "float32"):
    """``(model, tokenizer)``: a Liger model in ``dtype`` and its tokenizer — a Liger checkpoint as saved, or a
    base checkpoint converted with ``liger_options`` (ignored, with a note, for a Liger checkpoint: a run config's
    ``model.liger`` section stays valid for either kind).

    Raises:
        ValueError: an invalid Liger option, or an architecture liger does not support.
        FileNotFoundError: no such model.
    """
    import liger

    from .assets import resolve_model

    local = resolve_model(spec)
    if is_liger_checkpoint(local):
        if liger_options:
            logger.info("note: %s is already a Liger checkpoint; model.liger options are ignored", spec)
        model = load_pretrained(local, dtype)
    else:
        model = liger.convert(local, **(liger_options or {})).to(to_dtype(dtype))
    return model, load_tokenizer(local)
