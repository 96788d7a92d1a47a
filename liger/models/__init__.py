"""Liger model code: config, ops, layers and the HF model classes.

The modules of this folder import each other only relatively and nothing outside it (fla lazily), so
they can also be saved next to a checkpoint as ``trust_remote_code`` modeling code.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import LigerCache
from .configuration_liger import LigerConfig
from .modeling_liger import LigerForCausalLM, LigerModel

AutoConfig.register("liger", LigerConfig, exist_ok=True)
AutoModel.register(LigerConfig, LigerModel, exist_ok=True)
AutoModelForCausalLM.register(LigerConfig, LigerForCausalLM, exist_ok=True)

__all__ = ["LigerCache", "LigerConfig", "LigerForCausalLM", "LigerModel"]
