"""The base model families Liger can convert, and the few ways in which they differ.

Every supported family has a decoder layer whose ``self_attn`` owns ``q_proj``/``k_proj``/``v_proj``/``o_proj``
(biases, where the family has them, live inside those ``nn.Linear`` modules) and whose RoPE comes from the
model's ``rotary_emb``. Liger reuses those modules unchanged, so what is left to describe per family is short.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    model_type: str
    """``config.model_type`` of the base checkpoint."""
    description: str
    """What users know the family as."""
    decoder_layer: str
    """Class name of the decoder layer (kept whole by device maps and FSDP wrapping)."""
    qk_norm: bool = False
    """The attention applies per-head RMSNorms ``q_norm``/``k_norm`` before RoPE (Qwen3)."""

    def teacher_layer_is_sliding(self, base_config, layer_idx: int) -> bool:
        """Whether the teacher's own attention in this layer is a sliding window (used for layers kept as
        full softmax attention): Mistral slides in every layer when ``sliding_window`` is set; Qwen2/Qwen3
        say it per layer in ``layer_types``."""
        layer_types = getattr(base_config, "layer_types", None)
        if layer_types is not None:
            return layer_types[layer_idx] == "sliding_attention"
        return self.model_type == "mistral" and getattr(base_config, "sliding_window", None) is not None


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("llama", "Llama 2/3/3.x, SmolLM", "LlamaDecoderLayer"),
        Family("mistral", "Mistral", "MistralDecoderLayer"),
        Family("qwen2", "Qwen2/Qwen2.5 (q/k/v biases)", "Qwen2DecoderLayer"),
        Family("qwen3", "Qwen3 (per-head q_norm/k_norm)", "Qwen3DecoderLayer", qk_norm=True),
    )
}


def get_family(model_type: str) -> Family:
    """The family of a base ``model_type``; a ValueError naming the supported families otherwise."""
    if model_type not in FAMILIES:
        supported = ", ".join(f"{f.model_type} ({f.description})" for f in FAMILIES.values())
        raise ValueError(f"unsupported architecture '{model_type}': Liger supports {supported}")
    return FAMILIES[model_type]
