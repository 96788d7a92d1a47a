"""LoRA fine-tuning of Liger models (``liger finetune``) and the main job (``liger linearize``): run config, data,
the training loop and the convert -> fine-tune -> evaluate pipeline.

    from liger.train import load_config, finetune, linearize
    summary = finetune(load_config("smollm2-cpu", ["train.max_steps=10"]))
    summary = linearize(load_config("smollm2-cpu", ["output=runs/smol"]))

Needs the ``train`` extra (peft, accelerate, datasets, matplotlib). ``import liger`` never imports this package;
importing it imports none of its modules until a name below is used (the run config alone, ``liger.train.config``,
needs no torch).
"""

import importlib

_EXPORTS = {"ConfigError": ".config", "TrainConfig": ".config", "load_config": ".config", "DataError": ".data",
            "build_data": ".data", "TrainingError": ".errors", "linearize": ".job", "finetune": ".loop"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'liger.train' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
