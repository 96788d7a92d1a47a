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

from .cache import LayerBuffers, LigerCache, write_decoded_token
from .compiling import CompiledOrEager
from .global_cache import ExtraKeys, block_visibility, merge_leaver_, pooled_scores, recall_error
from .triton_common import auto_takes_kernels, pdl_supported
from .triton_common import is_available as triton_window_available
from .triton_common import supports as triton_supports
from .triton_decode import KernelUnavailable, fused_decode_step, log_fallback_once, unsupported_reason
from .triton_layer import fusable_linears, linear
from .triton_ops import rope_pair as triton_rope_pair
from .variants import Recurrence, at_least_fp32, get_recurrence, resolve_backend
from .window import first_real_tokens, sliding_window_attention, window_attention, window_decode_attention


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
        return (window_weight * at_least_fp32(o_win)).to(dtype)
    if o_win is None:
        return (linear_weight * at_least_fp32(o_rec)).to(dtype)
    if dtype in (torch.bfloat16, torch.float16) and linear_weight + window_weight == 1.0:
        return torch.lerp(o_win.to(dtype), o_rec.to(dtype), linear_weight)
    return (linear_weight * at_least_fp32(o_rec) + window_weight * at_least_fp32(o_win)).to(dtype)


@dataclass(frozen=True)
class DecodeSpec:
    """The per-layer constants of the static decode step (equal across layers, so one instance is shared; the
    window geometry comes from the cache's buffers)."""

    recurrence: Recurrence
    scaling: float
    linear_weight: float
    window_weight: float
    needs_state: bool
    """Whether the recurrent state is stepped: for the recurrent branch's output, or for the global cache's
    scores when the branch is off."""
    backend: str = "auto"
    """``LigerConfig.decode_backend``: "triton" takes the fused kernel (:mod:`liger.models.triton_decode`) where
    it covers the layer, "auto" too on an Ampere-or-newer GPU, "torch" the PyTorch step below."""
    pdl: bool = False
    """``LigerConfig.decode_pdl``: the fused kernel and ``o_proj`` launched with programmatic dependent launch
    where the GPU has it."""


@functools.cache
def decode_spec(recurrence, scaling, linear_weight, window_weight, needs_state, backend="auto",
                pdl=False) -> DecodeSpec:
    return DecodeSpec(recurrence, scaling, linear_weight, window_weight, needs_state, backend, pdl)


def uses_fused_step(spec: DecodeSpec, q, v, buffers: LayerBuffers) -> bool:
    """Whether :func:`decode_step_core` takes the fused Triton step for these inputs: ``decode_backend`` "triton"
    (or "auto" on an Ampere-or-newer GPU, :func:`~liger.models.triton_common.auto_takes_kernels`) and a case the
    kernel covers; otherwise the PyTorch step (the reason logged once when "triton" was asked for)."""
    if spec.backend == "torch" or (spec.backend == "auto" and not auto_takes_kernels(q)):
        return False
    reason = unsupported_reason(spec, q, v, buffers)
    if reason is not None and spec.backend == "triton":
        log_fallback_once(reason)
    return reason is None


def decode_step_core(spec: DecodeSpec, q, k, v, q_lin, k_lin, cos, sin, valid, buffers: LayerBuffers) -> torch.Tensor:
    """The static decode step of one Liger layer, between the projections and ``o_proj``.

    Args:
        q, k, v: the new token's projections (after q/k norms), ``[B, 1, HQ|H, D]``; ``q_lin``/``k_lin`` what
            the linear branch reads; ``cos``/``sin`` ``[B, 1, D]``; ``valid`` ``[B]`` bool.
        buffers: the layer cache's buffers, updated in place.

    Returns:
        The mixed attention output ``[B, 1, HQ, D]`` in ``q.dtype``. Shapes are fixed, nothing is allocated
        beyond temporaries and nothing is read back to the host, so the step can be captured in a CUDA graph;
        it computes what the eager path (window concatenation + recurrent step) computes.

    With ``decode_backend="triton"`` the fused kernel (:func:`liger.models.triton_decode.fused_decode_step`, one
    launch) computes the step where it covers the layer and compiles on this machine; the PyTorch code below is
    the reference it is tested against, and what runs otherwise.
    """
    if uses_fused_step(spec, q, v, buffers):
        try:
            return fused_decode_step(spec, q, k, v, q_lin, k_lin, cos, sin, valid, buffers)
        except KernelUnavailable as err:  # (raised before the launch: no buffer was written)
            log_fallback_once(str(err))
    b = buffers
    o_rec = o_win = None
    if spec.needs_state:
        o = spec.recurrence.step(q_lin, k_lin, v, valid[:, None], b.state)
        o_rec = o if spec.linear_weight != 0 else None
    q_rot, k_rot = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    window = b.ring_k.shape[1] + 1
    if spec.window_weight != 0:
        members = b.global_score is not None
        o_win = window_decode_attention(
            q_rot, k_rot, v, valid, b.ring_k, b.ring_v, b.ring_valid, spec.scaling, b.sinks(), b.seen_t - (window - 1),
            b.global_k if members else None, b.global_v if members else None,
            b.global_score > float("-inf") if members else None)
    if b.global_score is not None:
        _merge_leaving_token(spec.recurrence, b, k_rot, v, k_lin, valid)
    write_decoded_token(b, k_rot, v, k_lin, valid)
    return mix_branches(o_rec, o_win, spec.linear_weight, spec.window_weight, q.dtype)


def _merge_leaving_token(recurrence: Recurrence, b: LayerBuffers, k_rot, v, k_lin, valid) -> None:
    """The token leaving the window after this step (the ring's oldest, whose slot the new token takes; the new
    token itself for a window of 1) competes for the global cache, scored against the state after this step.
    Padding and sinks (the new token too, when it becomes one on this step) never compete."""
    L = b.ring_k.shape[1]
    if L:
        slot = torch.remainder(b.seen_t, L).view(1)
        lk, lv, lk_lin = (x.index_select(1, slot) for x in (b.ring_k, b.ring_v, b.ring_k_lin))  # [B, 1, H, D]
        lvalid = b.ring_valid.index_select(1, slot)[:, 0]
    else:
        lk, lv, lk_lin, lvalid = k_rot, v, k_lin, valid
        if b.sink_k is not None:  # a token that becomes a sink on this step (write_decoded_token) does not compete
            lvalid = lvalid & (b.real_seen >= b.sink_k.shape[1])
    index = b.seen_t - L  # the leaver's absolute position
    if b.sink_valid is not None:
        lvalid = lvalid & ~(b.sink_valid & (b.sink_pos == index)).any(1)
    score = recall_error(lv, recurrence.read(b.state, lk_lin))[:, 0]  # [B, H]
    score = torch.where(lvalid[:, None], score, float("-inf"))
    if b.global_recent is None:
        merge_leaver_(b.global_k, b.global_v, b.global_score, b.global_index, lk[:, 0], lv[:, 0], score,
                      index.expand(score.shape[0]))
        return
    # global_cache_pool P: the token that left P steps ago is decided, by the largest error among the 2P + 1
    # leavers around it (global_cache.pooled_scores); then the new leaver joins the pending tokens
    P = b.global_pend_k.shape[1]
    errors = torch.cat([b.global_recent, score[:, None].to(b.global_recent.dtype)], 1)  # [B, 2P + 1, H]
    pooled = pooled_scores(errors, P)[:, 0]
    merge_leaver_(b.global_k, b.global_v, b.global_score, b.global_index, b.global_pend_k[:, 0],
                  b.global_pend_v[:, 0], pooled, (index - P).expand(score.shape[0]))
    b.global_recent.copy_(errors[:, 1:])
    b.global_pend_k.copy_(torch.cat([b.global_pend_k[:, 1:], lk.to(b.global_pend_k.dtype)], 1))
    b.global_pend_v.copy_(torch.cat([b.global_pend_v[:, 1:], lv.to(b.global_pend_v.dtype)], 1))


_compiled_core = CompiledOrEager(decode_step_core, "decode_step")


def run_decode_step_core(compiled: bool, *args) -> torch.Tensor:
    """:func:`decode_step_core`, through ``torch.compile`` when ``compiled`` (one graph serves every layer:
    the spec and the recurrence are shared instances; eager again if compilation fails). The fused Triton step
    is called as it is: it is two launches already."""
    spec, q, v, buffers = args[0], args[1], args[3], args[-1]
    if compiled and not uses_fused_step(spec, q, v, buffers):
        return _compiled_core(*args)
    return decode_step_core(*args)


def _base_layer(module: nn.Module) -> nn.Module:
    """The pretrained module under a peft LoRA wrapper (the module itself when it has no adapter)."""
    return getattr(module, "base_layer", module)


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
        self.window_backend = config.window_backend
        self.decode_backend = config.decode_backend
        self.global_cache_size = config.global_cache_size
        self.global_cache_pool = config.global_cache_pool
        self.recurrence = get_recurrence(config)
        self.needs_state = self.linear_weight != 0 or bool(self.global_cache_size)
        self.decode_spec = decode_spec(self.recurrence, float(self.scaling), self.linear_weight, self.window_weight,
                                       self.needs_state, self.decode_backend, config.decode_pdl)
        self.teacher_window = teacher_window
        """The teacher's own attention window in this layer (None = full causal attention)."""
        self.teacher_mode = False
        """When True the layer computes the teacher's softmax attention from the same projections (see
        ``LigerForCausalLM.teacher_mode``): no recurrence, no Liger window, no cache."""
        self.transfer_losses: list | None = None
        """While a list (``LigerForCausalLM.attention_transfer``): the layer appends the MSE between its Liger output
        and the teacher attention's output on the same input, and passes the teacher's output on."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values: LigerCache | None = None,
        token_mask: torch.Tensor | None = None,
        decode_step: str | None = None,
        projections: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        """``projections``: ``q_proj``/``k_proj``/``v_proj`` of ``hidden_states`` computed by the caller (the fused
        decode layers, :mod:`liger.models.triton_layer`), ``[B, T, heads · D]`` each."""
        if past_key_values is None:  # transformers >= 5.24's decoder layers pass it as `cache`
            past_key_values = kwargs.get("cache")
        if self.teacher_mode or self.transfer_losses is not None:
            if past_key_values is not None:
                raise RuntimeError("teacher_mode and attention_transfer are for full-sequence forwards; call the "
                                   "model with use_cache=False")
            if self.teacher_mode:
                return self._teacher_output(hidden_states, position_embeddings, token_mask), None
            return self._transfer(hidden_states, position_embeddings, token_mask), None
        return self._liger_output(hidden_states, position_embeddings, token_mask, past_key_values, decode_step,
                                  projections), None

    def _project(self, hidden_states, base: bool = False, projections=None):
        """``q, k, v, q_lin, k_lin`` ``[B, T, heads, D]`` of the input; ``base``: through the pretrained
        projections only (the modules peft wraps, without the LoRA deltas); ``projections``: the three
        projections, already computed."""
        B, T, _ = hidden_states.shape
        D = self.head_dim
        proj = _base_layer if base else (lambda m: m)
        if projections is None:
            projections = (proj(self.q_proj)(hidden_states), proj(self.k_proj)(hidden_states),
                           proj(self.v_proj)(hidden_states))
        q = projections[0].view(B, T, self.num_heads, D)
        k = projections[1].view(B, T, self.num_key_value_heads, D)
        v = projections[2].view(B, T, self.num_key_value_heads, D)
        q_lin, k_lin = q, k
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
            if self.use_qk_norm_in_linear:
                q_lin, k_lin = q, k
        return q, k, v, q_lin, k_lin

    def _teacher_output(self, hidden_states, position_embeddings, token_mask, base: bool = False):
        """The teacher attention's output (after ``o_proj``) on this input."""
        B, T, _ = hidden_states.shape
        q, k, v, _, _ = self._project(hidden_states, base)
        cos, sin = position_embeddings
        out = self._teacher_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, token_mask)
        o_proj = _base_layer(self.o_proj) if base else self.o_proj
        return o_proj(out.reshape(B, T, self.num_heads * self.head_dim))

    def _transfer(self, hidden_states, position_embeddings, token_mask):
        """Attention transfer (LoLCATs' stage 1, arXiv 2410.10254): record the MSE between this layer's Liger
        output and the teacher's (the pretrained projections without LoRA deltas, softmax attention) on the same
        input, and return the teacher's output, so that every layer sees the teacher's residual stream and
        learns on its own (no gradient crosses layers)."""
        x = hidden_states.detach()
        with torch.no_grad():
            target = self._teacher_output(x, position_embeddings, token_mask, base=True)
        pred = self._liger_output(x, position_embeddings, token_mask, None, None)
        err = (pred.float() - target.float()).pow(2).mean(-1)  # [B, T]
        if token_mask is not None:
            err = err[token_mask]
        self.transfer_losses.append(err.mean())
        return target

    def _liger_output(self, hidden_states, position_embeddings, token_mask, past_key_values, decode_step,
                      projections=None):
        B, T, _ = hidden_states.shape
        D = self.head_dim
        q, k, v, q_lin, k_lin = self._project(hidden_states, projections=projections)
        cos, sin = position_embeddings
        cache = past_key_values.layers[self.layer_idx] if past_key_values is not None else None
        if decode_step is not None:
            out = self._decode_static(q, k, v, q_lin, k_lin, cos, sin, token_mask, cache, decode_step)
            out = out.reshape(B, T, self.num_heads * D)
            if self.decode_spec.pdl and pdl_supported(out) and fusable_linears(out, self.o_proj):
                return linear(out, self.o_proj, pdl=True)  # (a kernel that takes part in the dependent launches)
            return self.o_proj(out)
        decoding = cache is not None and cache.seen > 0
        single_token = decoding and T == 1

        o_rec = o_win = None
        state = None
        backend = resolve_backend(self.backend, q.device) if self.needs_state else None
        mode = "recurrent" if single_token else "chunk"
        prev = cache.state if decoding else None
        if self.linear_weight != 0:
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
        extra = members = klin_keys = None
        if self.global_cache_size:
            klin_keys = torch.cat([cache.ring_k_lin().to(k_lin.dtype), k_lin], 1) if cache is not None else k_lin
            extra, members, recall_state = self._global_keys(k_lin, v, token_mask, keys, values, key_valid, klin_keys,
                                                             sinks, cache, prev, mode, backend)
            # with the recurrent branch off (linear_weight 0) the state is still kept, for the scores
            state = recall_state if state is None else state
        if self.window_weight != 0:
            o_win = sliding_window_attention(q_rot, keys, values, self.window_size, self.scaling, key_valid, sinks,
                                             backend=self._window_backend(q.is_cuda, single_token), extra=extra)
        if cache is not None:
            cache.commit(keys, values, key_valid, sinks, state, klin_keys, members)

        out = mix_branches(o_rec, o_win, self.linear_weight, self.window_weight, hidden_states.dtype)
        return self.o_proj(out.reshape(B, T, self.num_heads * D))

    def _window_backend(self, cuda: bool, single_token: bool) -> str:
        """The window op of this call (``cuda``: the tensors are on a CUDA device). Single-token eager steps
        always take the banded torch op, and so does every call with ``linear_backend`` "torch" (the reference
        ops)."""
        if single_token:
            return "torch"
        if self.window_backend != "auto":
            return self.window_backend  # "triton" off CUDA raises in the op (it names what is missing)
        if self.backend == "torch":
            return "torch"
        # off CUDA, fused SDPA blocks: on a CPU 1.6-5x the banded op's speed forward and backward, a 2K prefill
        # 1.2x (Liger-GLA) to 1.8x (the memory recipe) faster (benchmarks/results/cpu_window/); on CUDA,
        # Liger's Triton kernels unless there are sinks or a global cache (then SDPA blocks too); FlexAttention
        # measured slower inside the model (docs/gpu.md)
        if not cuda or self.num_sink_tokens or self.global_cache_size or not triton_window_available():
            return "sdpa"
        return "triton"

    def _global_keys(self, k_lin, v, token_mask, keys, values, key_valid, klin_keys, sinks, cache, prev, mode,
                     backend):
        """The global cache's keys for every block of queries of this call, and its members afterwards.

        ``keys``/``values``/``key_valid``/``klin_keys`` ``[B, Tk, H, D]`` are the window's keys (the cached ring, if
        any, then the ``T`` new tokens); the token at key index ``q + Tk − T − W + 1`` leaves the window after query
        ``q``. Its score is the self-recall error against the state after query ``q`` (the variant's normalised
        readout with its key as the query, one recurrence pass without gradient). Returns ``(ExtraKeys, members,
        state)``: ``members`` = ``(k, v, score, index)`` and ``state`` the recurrent state after the call, for the
        cache (None without a cache).
        """
        B, Tk, H, D = keys.shape
        T = k_lin.shape[1]
        W, G = self.window_size, self.global_cache_size
        L = Tk - T
        bq = max(1, min(64, T))
        nb = -(-T // bq)
        pad = nb * bq - T

        def leaving(x, fill=0):
            # [B, Tk, ...] -> [B, nb·bq, ...]: the token leaving the window after each query (fill before the start
            # and after the last query)
            widths = (0, 0) * (x.dim() - 2)
            x = F.pad(x, widths + (W - 1 - L, 0), value=fill)[:, :T]
            return F.pad(x, widths + (0, pad), value=fill)

        sink = torch.zeros(B, Tk, dtype=torch.bool, device=keys.device)
        if sinks is not None:
            at = torch.arange(Tk, device=keys.device)
            sink = (sinks.valid[:, :, None] & (sinks.index[:, :, None] == at)).any(1)
        real = key_valid if key_valid is not None else torch.ones(B, Tk, dtype=torch.bool, device=keys.device)
        cand_valid = leaving(real & ~sink, fill=False)  # [B, nb·bq]
        cand_k, cand_v = leaving(keys), leaving(values)  # [B, nb·bq, H, D]
        start = (cache.seen if cache is not None else 0) - L  # absolute position of keys[:, 0]
        index = start + torch.arange(nb * bq, device=keys.device) + L - (W - 1)
        with torch.no_grad():
            read, state = self.recurrence.recall(leaving(klin_keys)[:, :T], k_lin, v, token_mask, prev, mode, backend,
                                                 need_state=cache is not None)
            score = recall_error(cand_v[:, :T], read)
            score = torch.where(cand_valid[:, :T, None], score, float("-inf"))  # [B, T, H]
            pending = None
            if self.global_cache_pool:
                cand_k, cand_v, score, pending = self._pooled_candidates(cand_k[:, :T], cand_v[:, :T], score, cache)
                cand_k, cand_v = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (cand_k, cand_v))
                index = index - self.global_cache_pool
            score = F.pad(score, (0, 0, 0, pad), value=float("-inf")).transpose(1, 2)  # [B, H, nb·bq]
            index = index.expand(B, H, -1)
            if cache is not None:
                pk, pv, pscore, pindex = cache.global_members()
                score = torch.cat([pscore.transpose(1, 2), score], -1)
                index = torch.cat([pindex.transpose(1, 2), index], -1)
                P = G
            else:
                pk = pv = None
                P = 0
            sel = block_visibility(score, index, P, G, bq)

        def gather(cands, previous):
            # candidates [B, nb·bq, H, D] after the earlier members -> per head, plus an empty row for empty slots
            x = cands if previous is None else torch.cat([previous.to(cands.dtype), cands], 1)
            x = torch.cat([x, x.new_zeros(B, 1, H, x.shape[-1])], 1).transpose(1, 2)  # [B, H, N + 1, D]
            return lambda idx: x.gather(2, idx.reshape(B, H, -1, 1).expand(-1, -1, -1, x.shape[-1])).view(
                *idx.shape, x.shape[-1])

        take_k, take_v = gather(cand_k, pk), gather(cand_v, pv)
        base_k = take_k(sel.base).permute(0, 2, 3, 1, 4)  # [B, nb, G, H, D]
        base_v = take_v(sel.base).permute(0, 2, 3, 1, 4)
        extra = ExtraKeys(
            k=torch.cat([base_k, cand_k.view(B, nb, bq, H, D)], 2),
            v=torch.cat([base_v, cand_v.view(B, nb, bq, H, -1)], 2),
            visible=torch.cat([sel.visible_base, sel.visible_entrants], -1).transpose(1, 2),  # [B, nb, H, bq, E]
            block_size=bq)
        members = None
        if cache is not None:
            with torch.no_grad():
                ok = sel.final_valid
                mk = torch.where(ok[..., None], take_k(sel.final), 0).transpose(1, 2)  # [B, G, H, D]
                mv = torch.where(ok[..., None], take_v(sel.final), 0).transpose(1, 2)
                N = score.shape[-1]
                mscore = torch.where(ok, score.gather(-1, sel.final.clamp(max=N - 1)), float("-inf")).transpose(1, 2)
                mindex = torch.where(ok, index.gather(-1, sel.final.clamp(max=N - 1)), -1).transpose(1, 2)
            members = (mk, mv, mscore, mindex) + (pending or ())
        return extra, members, state

    def _pooled_candidates(self, leaving_k, leaving_v, error, cache):
        """``global_cache_pool`` P: the candidate after query ``q`` is the token that left the window P queries
        earlier, scored by the largest self-recall error among the 2P + 1 tokens that left around it (−inf if it
        is padding or a sink itself). ``leaving_k``/``_v`` ``[B, T, H, D]`` and ``error`` ``[B, T, H]`` are the
        tokens leaving after each query of this call and their errors; the P tokens awaiting their decision and
        the last 2P errors come from the cache (none before the first call). Returns the candidates' keys,
        values and scores and ``(pend_k, pend_v, recent)`` for the cache."""
        B, T, H, _ = leaving_k.shape
        P = self.global_cache_pool
        previous = cache.global_pending() if cache is not None else None
        if previous is None:
            previous = (leaving_k.new_zeros(B, P, H, leaving_k.shape[-1]),
                        leaving_v.new_zeros(B, P, H, leaving_v.shape[-1]),
                        error.new_full((B, 2 * P, H), float("-inf")))
        pend_k, pend_v, recent = previous
        all_k = torch.cat([pend_k.to(leaving_k.dtype), leaving_k], 1)  # [B, P + T, H, D]
        all_v = torch.cat([pend_v.to(leaving_v.dtype), leaving_v], 1)
        errors = torch.cat([recent.to(error.dtype), error], 1)  # [B, 2P + T, H]
        score = pooled_scores(errors, P)  # [B, T, H]
        return all_k[:, :T], all_v[:, :T], score, (all_k[:, T:], all_v[:, T:], errors[:, T:])

    def _decode_static(self, q, k, v, q_lin, k_lin, cos, sin, token_mask, cache, decode_step):
        B, T = q.shape[:2]
        if T != 1 or cache is None or not cache.is_initialized:
            raise ValueError("the static decode step takes one token per sequence and a prefilled LigerCache")
        valid = token_mask[:, 0] if token_mask is not None else torch.ones(B, dtype=torch.bool, device=q.device)
        return run_decode_step_core(decode_step == "compiled", self.decode_spec, q, k, v, q_lin, k_lin, cos, sin, valid,
                                    cache.buffers)

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
