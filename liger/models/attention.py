"""LigerAttention: the teacher's attention projections feeding a gated recurrence and a sliding window.

    o = linear_weight · GRM(φ(q), φ(k), v; α(k)) + window_weight · SWA_w(RoPE(q), RoPE(k), v)

Both branches read the pretrained ``q_proj``/``k_proj``/``v_proj`` (the very modules of the teacher, so
biases and Qwen3's ``q_norm``/``k_norm`` come along); the recurrent branch and its gate see the pre-RoPE
q/k, the window branch sees them after RoPE with the teacher's softmax scale. The mix is computed in
float32 and cast back to the input dtype before the pretrained ``o_proj``. No parameter is added.

The module keeps the teacher attention's call signature, so the family's decoder layer, norms and MLP are
reused as they are. It takes one extra keyword, ``token_mask`` (``[B, T]`` bool, False = padding), from
``LigerModel``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import LigerCache, LigerLayerCache
from .variants import VARIANT_CLASSES, resolve_backend
from .window import window_attention


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as in Llama/Mistral/Qwen, for time-first ``x`` ``[B, T, H, D]`` and ``cos``/``sin`` ``[B, T, D]``."""
    return x * cos[:, :, None] + rotate_half(x) * sin[:, :, None]


class LigerAttention(nn.Module):
    def __init__(self, teacher_attention: nn.Module, config, layer_idx: int, teacher_window: int | None = None):
        super().__init__()
        self.layer_idx = layer_idx
        self.q_proj = teacher_attention.q_proj
        self.k_proj = teacher_attention.k_proj
        self.v_proj = teacher_attention.v_proj
        self.o_proj = teacher_attention.o_proj
        # Qwen3: per-head RMSNorms applied before RoPE, kept so the window branch reproduces the teacher
        self.q_norm = getattr(teacher_attention, "q_norm", None)
        self.k_norm = getattr(teacher_attention, "k_norm", None)
        self.head_dim = teacher_attention.head_dim
        self.scaling = teacher_attention.scaling
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.window_size = config.window_size
        self.num_sink_tokens = config.num_sink_tokens
        self.linear_weight = float(config.linear_weight)
        self.window_weight = float(config.window_weight)
        self.use_qk_norm_in_linear = config.use_qk_norm_in_linear
        self.backend = config.linear_backend
        self.recurrence = VARIANT_CLASSES[config.variant](config)
        self.teacher_window = teacher_window
        """The teacher's own attention window in this layer (None = full causal attention)."""
        self.teacher_mode = False
        """When True the layer computes the teacher's softmax attention from the same projections (see
        ``LigerForCausalLM.teacher_mode``): no recurrence, no Liger window, no cache."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values: LigerCache | None = None,
        token_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        B, T, _ = hidden_states.shape
        D = self.head_dim
        q = self.q_proj(hidden_states).view(B, T, self.num_heads, D)
        k = self.k_proj(hidden_states).view(B, T, self.num_key_value_heads, D)
        v = self.v_proj(hidden_states).view(B, T, self.num_key_value_heads, D)
        q_lin, k_lin = q, k
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
            if self.use_qk_norm_in_linear:
                q_lin, k_lin = q, k
        valid = token_mask if token_mask is not None else torch.ones(B, T, dtype=torch.bool, device=q.device)
        if self.teacher_mode:
            if past_key_values is not None:
                raise RuntimeError("teacher_mode is for full-sequence forwards; call the model with use_cache=False")
            cos, sin = position_embeddings
            out = self._teacher_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, token_mask)
            return self.o_proj(out.reshape(B, T, self.num_heads * D)), None
        cache = past_key_values.layers[self.layer_idx] if past_key_values is not None else None
        decoding = cache is not None and cache.seen > 0

        out = 0.0
        state = None
        if self.linear_weight != 0:
            backend = resolve_backend(self.backend, q.device)
            mode = "recurrent" if decoding and T == 1 else "chunk"
            prev = cache.state if decoding else None
            o_rec, state = self.recurrence(q_lin, k_lin, v, valid, prev, mode, backend)
            out = self.linear_weight * o_rec

        scratch = cache if cache is not None else LigerLayerCache(self.window_size, self.num_sink_tokens)
        cos, sin = position_embeddings
        q_rot, k_rot = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys, values, key_valid, sinks = scratch.window_inputs(k_rot, v, valid)
        if self.window_weight != 0:
            o_win = window_attention(q_rot, keys, values, self.window_size, self.scaling, key_valid, sinks)
            out = out + self.window_weight * o_win.float()
        if cache is not None:
            cache.commit(keys, values, key_valid, sinks, state)

        out = out.to(hidden_states.dtype).reshape(B, T, self.num_heads * D)
        return self.o_proj(out), None

    def _teacher_attention(self, q, k, v, token_mask):
        """Causal softmax attention exactly as the teacher computes it (GQA, padding mask, its own window)."""
        if self.teacher_window is not None:
            valid = token_mask if token_mask is not None else None
            return window_attention(q, k, v, self.teacher_window, self.scaling, valid)
        G = self.num_heads // self.num_key_value_heads
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if token_mask is None:
            out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=self.scaling, enable_gqa=G > 1)
        else:
            T = q.shape[1]
            causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
            mask = causal[None, None] & token_mask[:, None, None, :].bool()
            # a padding query sees nothing: let it see itself (its output is ignored) instead of producing NaN
            mask = mask | torch.eye(T, dtype=torch.bool, device=q.device)[None, None]
            out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=self.scaling, enable_gqa=G > 1)
        return out.transpose(1, 2)
