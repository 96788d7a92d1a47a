"""liger: turn a pretrained decoder LLM into a gated linear recurrent model (Liger, arXiv 2503.01496).

    import liger
    model = liger.convert(teacher_or_path, variant="gla")   # a transformers PreTrainedModel

Importing liger registers the "liger" model type with transformers' Auto classes. It never imports fla,
triton, peft or the training/evaluation code.
"""

__version__ = "0.1.0"

from .convert import convert
from .models import LigerCache, LigerConfig, LigerForCausalLM, LigerModel

__all__ = ["LigerCache", "LigerConfig", "LigerForCausalLM", "LigerModel", "__version__", "convert"]
