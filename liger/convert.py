"""Teacher checkpoint -> Liger model: a strict, parameter-for-parameter conversion."""

from __future__ import annotations

import itertools
import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .models import LigerConfig, LigerForCausalLM
from .models.families import get_family
from .recipes import recipe_options


def convert(model_or_path: PreTrainedModel | str | os.PathLike, recipe: str | None = None,
            **options) -> LigerForCausalLM:
    """Convert a Hugging Face decoder (Llama, Mistral, Qwen2/2.5, Qwen3) into a Liger model.

    Args:
        model_or_path: a loaded causal LM (left unchanged: its weights are copied) or a local checkpoint
            directory (loaded with ``dtype="auto"``).
        recipe: a named set of options (:data:`liger.recipes.RECIPES`: "paper", "memory"); ``options`` override
            its values.
        **options: :class:`~liger.LigerConfig` fields, e.g. ``variant="gla"``, ``window_size=64``.

    Returns:
        A :class:`~liger.LigerForCausalLM` with exactly the teacher's parameters (no new ones), in the
        teacher's dtype and device, in the teacher's train/eval mode.

    Raises:
        ValueError: unsupported architecture, unknown or invalid option.
        FileNotFoundError: a path that does not exist.
    """
    options = recipe_options(recipe, **options)
    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no model directory at '{path}'")
        base_config = AutoConfig.from_pretrained(path)
        if getattr(base_config, "model_type", None) == "liger":
            raise ValueError(f"'{path}' is already a Liger checkpoint")
        config = LigerConfig.from_base_config(base_config, **options)
        teacher = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
        return _from_teacher(teacher, config, copy=False)
    if not isinstance(model_or_path, PreTrainedModel):
        raise TypeError(f"expected a transformers PreTrainedModel or a path, got {type(model_or_path).__name__}")
    get_family(getattr(model_or_path.config, "model_type", ""))
    config = LigerConfig.from_base_config(model_or_path.config, **options)
    return _from_teacher(model_or_path, config, copy=True)


def _from_teacher(teacher: PreTrainedModel, config: LigerConfig, copy: bool) -> LigerForCausalLM:
    config.dtype = teacher.dtype
    with torch.device("meta"):
        student = LigerForCausalLM(config)
    teacher_tensors = dict(itertools.chain(teacher.named_parameters(remove_duplicate=False),
                                           teacher.named_buffers(remove_duplicate=False)))
    student_tensors = dict(itertools.chain(student.named_parameters(remove_duplicate=False),
                                           student.named_buffers(remove_duplicate=False)))
    missing = sorted(set(student_tensors) - set(teacher_tensors))
    unexpected = sorted(set(teacher_tensors) - set(student_tensors))
    if missing or unexpected:
        raise RuntimeError(f"conversion key mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in teacher_tensors.items():
        module_name, _, attr = name.rpartition(".")
        module = student.get_submodule(module_name)
        value = tensor.detach().clone() if copy else tensor.detach()
        if attr in module._parameters:
            module._parameters[attr] = torch.nn.Parameter(value, requires_grad=tensor.requires_grad)
        else:
            module._buffers[attr] = value
    if config.tie_word_embeddings:
        student.lm_head.weight = student.model.embed_tokens.weight
    still_meta = [n for n, t in itertools.chain(student.named_parameters(), student.named_buffers()) if t.is_meta]
    if still_meta:
        raise RuntimeError(f"conversion left tensors uninitialised: {still_meta[:5]}")
    student.generation_config = teacher.generation_config
    student.train(teacher.training)
    return student
