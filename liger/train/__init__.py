"""LoRA fine-tuning of Liger models (``liger finetune``) and the main job (``liger linearize``): run config, data,
the training loop and the convert -> fine-tune -> evaluate pipeline.

    from liger.train import load_config, finetune, linearize
    summary = finetune(load_config("smollm2-cpu", ["train.max_steps=10"]))
    summary = linearize(load_config("smollm2-cpu", ["output=runs/smol"]))

Needs the ``train`` extra (peft, accelerate, datasets, matplotlib). ``import liger`` never imports this package.
"""

from .config import ConfigError, TrainConfig, load_config
from .data import DataError, build_data
from .errors import TrainingError
from .job import linearize
from .loop import finetune

__all__ = ["ConfigError", "DataError", "TrainConfig", "TrainingError", "build_data", "finetune", "linearize",
           "load_config"]
