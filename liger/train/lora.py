"""The LoRA recipe as code: peft adapters and the AdamW optimizer from a run config's ``lora`` and ``optim``
sections (``liger finetune`` and ``liger bench``'s training measurement build them here)."""

from __future__ import annotations

import torch

from .config import LoraSettings, OptimConfig
from .errors import TrainingError


def add_adapters(model, lora: LoraSettings):
    """``model`` wrapped by peft with LoRA adapters on ``lora.target_modules``; everything else frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise TrainingError(f"lora.target_modules {lora.target_modules}: {str(err).splitlines()[0]}") from err


def adamw(params, optim: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                             weight_decay=optim.weight_decay)
