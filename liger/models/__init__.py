"""Liger model code: config, ops, layers and the HF model classes.

The modules of this folder import each other only relatively (``from .x import y``, the form transformers
follows when it copies remote code) and nothing outside it but torch and transformers (fla lazily, inside
try blocks). ``save_pretrained`` therefore writes them next to each checkpoint with an ``auto_map``, and
``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` loads the checkpoint in a process
that never imports liger (e.g. ``lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True``).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import LigerCache
from .configuration_liger import LigerConfig
from .modeling_liger import LigerForCausalLM, LigerModel

AutoConfig.register("liger", LigerConfig, exist_ok=True)
AutoModel.register(LigerConfig, LigerModel, exist_ok=True)
AutoModelForCausalLM.register(LigerConfig, LigerForCausalLM, exist_ok=True)
# save_pretrained copies the modeling files and writes config.auto_map for these two classes
LigerConfig.register_for_auto_class("AutoConfig")
LigerForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["LigerCache", "LigerConfig", "LigerForCausalLM", "LigerModel"]
