"""liger: turn a pretrained decoder LLM into a gated linear recurrent model (Liger, arXiv 2503.01496).

    import liger
    model = liger.convert(teacher_or_path, variant="gla")   # a transformers PreTrainedModel

Importing liger registers the "liger" model type with transformers' Auto classes. It never imports fla,
triton, peft or the training/evaluation code.

The ``liger`` command (its console script, or ``python -m liger``) is the one exception: there the model code
is imported on first use instead (``liger.convert`` and the classes below resolve then), so that ``liger
--help`` starts without torch and transformers; its subcommands import what they load.
"""

__version__ = "0.1.0"

import importlib
import os
import re
import sys

_EXPORTS = {"convert": ".convert", "LigerCache": ".models", "LigerConfig": ".models",
            "LigerForCausalLM": ".models", "LigerModel": ".models"}
__all__ = ["LigerCache", "LigerConfig", "LigerForCausalLM", "LigerModel", "__version__", "convert"]


def _started_as_command() -> bool:
    """Whether this process is the ``liger`` command starting up."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 == "-m":  # python -m PACKAGE: sys.argv[0] is "-m" while PACKAGE is imported
        args = list(getattr(sys, "orig_argv", []))
        return any(a == "-mliger" or (a == "-m" and b == "liger") for a, b in zip(args, args[1:] + [""]))
    return re.sub(r"(-script\.pyw?|\.exe)$", "", os.path.basename(argv0)) == "liger"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'liger' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # (importing .convert bound the submodule to this name; the function replaces it)
    return value


if not _started_as_command():
    from .convert import convert
    from .models import LigerCache, LigerConfig, LigerForCausalLM, LigerModel
