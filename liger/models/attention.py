"""LigerAttention: the teacher's attention projections feeding a gated recurrence and a sliding window.

    o = linear_weight · GRM(φ(q), φ(k), v; α(k)) + window_weight · SWA_w(RoPE(q), RoPE(k), v)

Both branches read the pretrained ``q_proj``/``k_proj``/``v_proj`` (the very modules of the teacher, so
biases and Qwen3's ``q_norm``/``k_norm`` come along); the recurrent branch and its gate see the pre-RoPE
q/k, the window branch sees them after RoPE with the teacher's softmax scale. The mix is computed in
float32 and cast back to the input dtype before the pretrained ``o_proj``. No parameter is added.

The module keeps the teacher attention's call signature, so the family's decoder layer, norms and MLP are
reused as they are. It takes two extra keywords from ``LigerModel``: ``token_mask`` (``[B, T]`` bool, False =
padding) and ``decode_step`` (None, or "eager"/"compiled" for the static single-token decode step, see
:func:`decode_step_core`).

Kernels: the recurrence runs on fla's Triton kernels on CUDA (``linear_backend`` "auto"/"fla") and on the
pure-PyTorch ops otherwise; the window branch of multi-token calls runs through fused SDPA over query blocks
on CUDA (unless ``linear_backend`` is "torch") and through the banded PyTorch op otherwise.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cache import LigerCache, write_decoded_token
from .compiling import CompiledOrEager
from .triton_ops import rope_pair as triton_rope_pair
from .triton_window import is_available as triton_window_available
from .triton_window import supports as triton_supports
from .variants import Recurrence, get_recurrence, resolve_backend
from .window import Sinks, first_real_tokens, sliding_window_attention, window_attention, window_decode_attention


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as in Llama/Mistral/Qwen, for time-first ``x`` ``[B, T, H, D]`` and ``cos``/``sin`` ``[B, T, D]``."""
    return x * cos[:, :, None] + rotate_half(x) * sin[:, :, None]


def mix_branches(o_rec: torch.Tensor | None, o_win: torch.Tensor | None, linear_weight: float,
                 window_weight: float, dtype: torch.dtype) -> torch.Tensor:
    """``linear_weight · o_rec + window_weight · o_win`` in float32, cast to ``dtype``.

    For half-precision models with weights summing to 1 (the paper's 0.5/0.5) this is one ``lerp`` kernel,
    which also computes in float32 and rounds once.
    """
    if o_rec is None:
        return (window_weight * _at_least_fp32(o_win)).to(dtype)
    if o_win is None:
        return (linear_weight * _at_least_fp32(o_rec)).to(dtype)
    if dtype in (torch.bfloat16, torch.float16) and linear_weight + window_weight == 1.0:
        return torch.lerp(o_win.to(dtype), o_rec.to(dtype), linear_weight)
    return (linear_weight * _at_least_fp32(o_rec) + window_weight * _at_least_fp32(o_win)).to(dtype)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


@dataclass(frozen=True)
class DecodeSpec:
    """The per-layer constants of the static decode step (equal across layers, so one instance is shared)."""

    recurrence: Recurrence
    window_size: int
    num_sinks: int
    scaling: float
    linear_weight: float
    window_weight: float


@functools.cache
def decode_spec(recurrence, window_size, num_sinks, scaling, linear_weight, window_weight) -> DecodeSpec:
    return DecodeSpec(recurrence, window_size, num_sinks, scaling, linear_weight, window_weight)


def decode_step_core(spec: DecodeSpec, q, k, v, q_lin, k_lin, cos, sin, valid, state, ring_k, ring_v, ring_valid,
                     sink_k, sink_v, sink_pos, sink_valid, real_seen, seen_t) -> torch.Tensor:
    """The static decode step of one Liger layer, between the projections and ``o_proj``.

    Args:
        q, k, v: the new token's projections (after q/k norms), ``[B, 1, HQ|H, D]``; ``q_lin``/``k_lin`` what
            the linear branch reads; ``cos``/``sin`` ``[B, 1, D]``; ``valid`` ``[B]`` bool.
        state, ring_*, sink_*, real_seen, seen_t: the layer cache's buffers, updated in place.

    Returns:
        The mixed attention output ``[B, 1, HQ, D]`` in ``q.dtype``. Shapes are fixed, nothing is allocated
        beyond temporaries and nothing is read back to the host, so the step can be captured in a CUDA graph;
        it computes what the eager path (window concatenation + recurrent step) computes.
    """
    o_rec = o_win = None
    if spec.linear_weight != 0:
        o_rec = spec.recurrence.step(q_lin, k_lin, v, valid[:, None], state)
    q_rot, k_rot = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if spec.window_weight != 0:
        sinks = Sinks(sink_k, sink_v, sink_pos, sink_valid) if spec.num_sinks else None
        o_win = window_decode_attention(q_rot, k_rot, v, valid, ring_k, ring_v, ring_valid, spec.scaling, sinks,
                                        seen_t - (spec.window_size - 1))
    write_decoded_token(ring_k, ring_v, ring_valid, sink_k, sink_v, sink_pos, sink_valid, real_seen, seen_t,
                        k_rot, v, valid)
    return mix_branches(o_rec, o_win, spec.linear_weight, spec.window_weight, q.dtype)


_compiled_core = CompiledOrEager(decode_step_core, "decode_step")


def run_decode_step_core(compiled: bool, *args) -> torch.Tensor:
    """:func:`decode_step_core`, through ``torch.compile`` when ``compiled`` (one graph serves every layer:
    the spec and the recurrence are shared instances; eager again if compilation fails)."""
    return _compiled_core(*args) if compiled else decode_step_core(*args)


def rope_pair(q, k, cos, sin):
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


_compiled_rope = CompiledOrEager(rope_pair, "rope", dynamic=True)


def _rope_op(fast: bool, q: torch.Tensor):
    """RoPE of q and k: the Triton kernel on the fast path (the compiled function where Triton is missing or q
    is too large for the kernel), the PyTorch function otherwise."""
    if not fast:
        return rope_pair
    return triton_rope_pair if triton_window_available() and triton_supports(q) else _compiled_rope


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
        self.window_backend = getattr(config, "window_backend", "auto")
        self.recurrence = get_recurrence(config)
        self.decode_spec = decode_spec(self.recurrence, self.window_size, self.num_sink_tokens, float(self.scaling),
                                       self.linear_weight, self.window_weight)
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
        decode_step: str | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        if past_key_values is None:  # transformers >= 5.24's decoder layers pass it as `cache`
            past_key_values = kwargs.get("cache")
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
        cos, sin = position_embeddings
        if self.teacher_mode:
            if past_key_values is not None:
                raise RuntimeError("teacher_mode is for full-sequence forwards; call the model with use_cache=False")
            out = self._teacher_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, token_mask)
            return self.o_proj(out.reshape(B, T, self.num_heads * D)), None
        cache = past_key_values.layers[self.layer_idx] if past_key_values is not None else None
        if decode_step is not None:
            out = self._decode_static(q, k, v, q_lin, k_lin, cos, sin, token_mask, cache, decode_step)
            return self.o_proj(out.reshape(B, T, self.num_heads * D)), None
        decoding = cache is not None and cache.seen > 0
        single_token = decoding and T == 1

        o_rec = o_win = None
        state = None
        if self.linear_weight != 0:
            backend = resolve_backend(self.backend, q.device)
            mode = "recurrent" if single_token else "chunk"
            prev = cache.state if decoding else None
            o_rec, state = self.recurrence(q_lin, k_lin, v, token_mask, prev, mode, backend,
                                           need_state=cache is not None)

        fast = q.is_cuda and self.backend != "torch"
        q_rot, k_rot = _rope_op(fast, q)(q, k, cos, sin)
        if cache is not None:
            valid = token_mask if token_mask is not None else torch.ones(B, T, dtype=torch.bool, device=q.device)
            keys, values, key_valid, sinks = cache.window_inputs(k_rot, v, valid)
        else:
            keys, values, key_valid = k_rot, v, token_mask
            sinks = first_real_tokens(k_rot, v, token_mask, self.num_sink_tokens) if self.num_sink_tokens else None
        if self.window_weight != 0:
            o_win = sliding_window_attention(q_rot, keys, values, self.window_size, self.scaling, key_valid, sinks,
                                             backend=self._window_backend(fast, single_token))
        if cache is not None:
            cache.commit(keys, values, key_valid, sinks, state)

        out = mix_branches(o_rec, o_win, self.linear_weight, self.window_weight, hidden_states.dtype)
        return self.o_proj(out.reshape(B, T, self.num_heads * D)), None

    def _window_backend(self, fast: bool, single_token: bool) -> str:
        """The window op of this call. ``fast``: on CUDA with the fast paths allowed (``linear_backend`` is not
        "torch"). Single-token eager steps always take the banded torch op."""
        if single_token:
            return "torch"
        if self.window_backend != "auto":
            return self.window_backend  # "triton" off CUDA raises in the op (it names what is missing)
        if not fast:
            return "torch"
        # Liger's Triton kernels unless there are sinks (then fused SDPA blocks); FlexAttention measured slower
        # inside the model (docs/gpu.md)
        return "sdpa" if self.num_sink_tokens or not triton_window_available() else "triton"

    def _decode_static(self, q, k, v, q_lin, k_lin, cos, sin, token_mask, cache, decode_step):
        B, T = q.shape[:2]
        if T != 1 or cache is None or not cache.is_initialized:
            raise ValueError("the static decode step takes one token per sequence and a prefilled LigerCache")
        valid = token_mask[:, 0] if token_mask is not None else torch.ones(B, dtype=torch.bool, device=q.device)
        return run_decode_step_core(
            decode_step == "compiled", self.decode_spec, q, k, v, q_lin, k_lin, cos, sin, valid, cache.state,
            cache.ring_k, cache.ring_v, cache.ring_valid, cache.sink_k, cache.sink_v, cache.sink_pos,
            cache.sink_valid, cache.real_seen, cache.seen_t,
        )

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
