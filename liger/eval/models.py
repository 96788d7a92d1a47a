"""Models to evaluate: checkpoints, and the zero-training students built from a teacher.

A model spec is one of

* a checkpoint directory (a base model or a saved Liger model), or the alias ``smollm2``;
* ``swa:W:S``: the teacher restricted to sliding-window attention over its W most recent keys plus the first
  S tokens ("sinks"), with no training (the baseline of "Sliding-window beats linear attention",
  arXiv 2608.28444, whose setting is ``swa:64:4``). Built as a Liger conversion whose linear branch has
  weight 0, which computes exactly that attention (tests/eval/test_models.py checks it against the teacher
  run with the equivalent attention mask);
* ``swa:W:S:G``: the same plus a bounded global cache of G tokens per layer and KV head (LoLA's sparse
  memory, ``global_cache_size=G``: the tokens a freshly converted GLA state recalls worst once they leave the
  window), still with no training and with decode memory independent of the context length;
* ``swa:W:S:G:P``: the same with ``global_cache_pool=P`` (a token is ranked by the worst recall among the P
  tokens on either side of it, decided P tokens after it leaves the window);
* ``convert:VARIANT``: the teacher freshly converted to Liger-VARIANT with the paper's defaults, not fine-tuned.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from transformers import AutoConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..loading import load_pretrained, to_dtype
from ..loading import load_tokenizer as _load_tokenizer


@dataclass
class Loaded:
    model: PreTrainedModel
    tokenizer: object
    name: str
    """The spec the model was built from (how reports name it)."""


def is_student_spec(spec: str) -> bool:
    return spec.startswith(("swa:", "convert:"))


def parse_swa(spec: str) -> tuple[int, int, int, int]:
    """``swa:W:S``, ``swa:W:S:G`` or ``swa:W:S:G:P`` -> (W, S, G, P), G and P = 0 when not given."""
    parts = spec.split(":")
    try:
        if len(parts) not in (3, 4, 5):
            raise ValueError
        window, sinks = int(parts[1]), int(parts[2])
        size, pool = (int(x) for x in (parts[3:] + ["0", "0"])[:2])
        if window < 1 or sinks < 0 or size < 0 or pool < 0 or (pool and not size):
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"'{spec}' is not a valid sliding-window student: use swa:W:S with W >= 1 keys and "
                         f"S >= 0 sink tokens, e.g. swa:64:4 (or swa:W:S:G with G >= 0 global tokens, "
                         f"swa:W:S:G:P with G >= 1 and a pool of P >= 0 tokens)") from None
    return window, sinks, size, pool


def sliding_window_student(teacher: PreTrainedModel, window: int, sinks: int,
                           global_cache_size: int = 0, global_cache_pool: int = 0) -> PreTrainedModel:
    """The teacher attending to its ``window`` most recent keys (the current one included) plus the first
    ``sinks`` tokens, in every layer, with no training; with ``global_cache_size`` G > 0 also to the G tokens
    per KV head that the (unused, weight 0) GLA state recalls worst (with ``global_cache_pool`` P: ranked by
    the worst recall among the P tokens on either side). Copies the teacher's weights."""
    import liger

    return liger.convert(teacher, linear_weight=0.0, window_weight=1.0, window_size=window, num_sink_tokens=sinks,
                         global_cache_size=global_cache_size, global_cache_pool=global_cache_pool)


def build_student(spec: str, teacher: PreTrainedModel) -> PreTrainedModel:
    """A zero-training student (``swa:W:S[:G[:P]]`` or ``convert:VARIANT``) of ``teacher``."""
    import liger
    from liger.models.configuration_liger import VARIANTS

    if spec.startswith("swa:"):
        return sliding_window_student(teacher, *parse_swa(spec))
    variant = spec[len("convert:"):]
    if variant not in VARIANTS:
        raise ValueError(f"'{spec}': unknown Liger variant '{variant}' (choose from {', '.join(VARIANTS)})")
    return liger.convert(teacher, variant=variant)


def load_checkpoint(path: str | os.PathLike, dtype: str = "float32", device: str = "cpu",
                    tokenizer: str | os.PathLike | None = None) -> Loaded:
    """A causal LM and its tokenizer from a checkpoint directory (or the alias ``smollm2``).

    Raises:
        FileNotFoundError: no such checkpoint, or no tokenizer next to it (and none given).
        ValueError: the checkpoint is not a causal language model, or an unknown dtype.
    """
    to_dtype(dtype)  # an unknown name fails before anything loads
    name = os.fspath(path)
    resolved = _causal_lm_dir(name)
    tok = _tokenizer(resolved, name, tokenizer)
    model = load_pretrained(resolved, dtype).to(device).eval()
    return Loaded(model, tok, name)


def _causal_lm_dir(name: str) -> str:
    """The directory of a causal-LM checkpoint (or of the alias ``smollm2``); FileNotFoundError / ValueError
    otherwise."""
    import liger  # noqa: F401  (registers the liger model type)
    from liger.assets import resolve_model

    resolved = resolve_model(name)
    if not os.path.isdir(resolved):
        raise FileNotFoundError(f"no model directory at '{name}'")
    config = AutoConfig.from_pretrained(resolved)
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type != "liger":
        raise ValueError(f"'{name}' is not a causal language model (model_type '{model_type}')")
    return resolved


def load_tokenizer(path: str | os.PathLike, tokenizer: str | os.PathLike | None = None):
    """The tokenizer of a causal-LM checkpoint directory (or the alias ``smollm2``), or ``tokenizer`` when
    given, without loading the model.

    Raises:
        FileNotFoundError: no such checkpoint, or no tokenizer there. ValueError: not a causal LM.
    """
    name = os.fspath(path)
    return _tokenizer(_causal_lm_dir(name), name, tokenizer)


def _tokenizer(resolved: str, name: str, tokenizer: str | os.PathLike | None):
    try:
        return _load_tokenizer(resolved, tokenizer)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"no tokenizer found for '{name}' (pass --tokenizer): {err}") from None


def check_causal_lm(model) -> None:
    """A clear TypeError for objects that cannot be evaluated as causal LMs."""
    if not isinstance(model, PreTrainedModel) or not hasattr(model, "generate"):
        raise TypeError(f"expected a transformers causal LM (a PreTrainedModel with generate), "
                        f"got {type(model).__name__}")
