"""LoRA fine-tuning of Liger models (``liger finetune``): run config, data, and the training loop.

    from liger.train import load_config, finetune
    summary = finetune(load_config("smollm2-cpu", ["train.max_steps=10"]))

Needs the ``train`` extra (peft, accelerate, datasets, matplotlib). ``import liger`` never imports this package.
"""

from .config import ConfigError, TrainConfig, load_config
from .data import DataError, build_data
from .errors import TrainingError
from .loop import finetune

__all__ = ["ConfigError", "DataError", "TrainConfig", "TrainingError", "build_data", "finetune", "load_config"]
