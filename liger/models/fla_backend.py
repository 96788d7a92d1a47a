"""Adapters from Liger's recurrence API to fla's Triton kernels (CUDA only).

This is the only module that imports fla, and it does so lazily. fla 0.6 is time-first ``[B, T, H, D]``
(``head_first`` is gone; ``fused_chunk_gla`` raises; ``fused_recurrent_gla`` silently ignores unknown keyword
arguments), so every call here passes time-first tensors and keyword arguments that fla's signatures name.

Precision: queries/keys/values go to the kernels in the model's dtype when it is bfloat16/float16 (no
float32 copies: the kernels multiply them on tensor cores and accumulate in float32, which is what an
upcast would compute from the same bf16 numbers), and in float32 otherwise; log-decays always go in
float32, and states are float32. Outputs come back in the kernels' input dtype.

fla's GLA kernels want as many key heads as query heads: keys, values and gates are expanded for the kernel
and the final state is read back once per KV head (all query heads of a group carry the same state).
``chunk_gsa`` and ``fused_recurrent_gsa`` take grouped queries themselves. fla's gated-delta-rule kernels
group the other way round (several value heads per query/key head, "GVA"), so for Liger's grouped queries keys,
values, gates and write strengths are expanded like GLA's.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


@functools.cache
def is_available() -> bool:
    """fla and triton are importable and a CUDA device exists."""
    if importlib.util.find_spec("fla") is None or importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available()


def _missing_fla(err: ImportError) -> ImportError:
    # the imports of fla sit in try blocks, which also keeps transformers' trust_remote_code import check (it
    # skips try blocks) from demanding fla when a saved checkpoint's code is loaded on a machine without it
    return ImportError(f"the fla kernels need flash-linear-attention: pip install 'liger-linearize[gpu]' ({err})")


def kernel_dtype(x: torch.Tensor) -> torch.dtype:
    """Dtype of the q/k/v tensors handed to fla: half-precision models stay in their dtype."""
    return x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.float32


def _expand(x: torch.Tensor | None, groups: int) -> torch.Tensor | None:
    # [B, T, H, ...] -> [B, T, H * groups, ...], query head h * groups + j reading KV head h
    if x is None or groups == 1:
        return x
    return x.repeat_interleave(groups, dim=2)


def kernel_inputs(q, k, v, gk=None, gv=None):
    """Tensors as fla's GLA kernels take them: q/k/v in :func:`kernel_dtype`, log-decays in float32, keys,
    values and gates repeated to the query heads. Pure tensor code (it is compiled together with the feature
    maps and gates that produce its inputs)."""
    G = q.shape[2] // k.shape[2]
    dtype = kernel_dtype(q)
    gk = _expand(gk.float(), G) if gk is not None else None
    gv = _expand(gv.float(), G) if gv is not None else None
    return q.to(dtype), _expand(k.to(dtype), G), _expand(v.to(dtype), G), gk, gv


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@functools.cache
def scalar_gate_backward_refused() -> bool:
    """fla 0.6 raises in the backward of its scalar-gate chunk kernel (``chunk_simple_gla``) on Hopper GPUs with
    Triton >= 3.4 and < 3.7.1, which compute it wrongly (fla issue #640). There, training with a scalar-gate
    variant (mamba2, mlstm, gated_retention) runs ``chunk_gla`` with the gate broadcast over the key channels:
    the same recurrence, through the vector-gate kernels."""
    try:
        from fla.utils import IS_NVIDIA_HOPPER, TRITON_ABOVE_3_4_0, TRITON_ABOVE_3_7_1
    except ImportError:
        return False
    return bool(IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1)


def gla_kernels(q, k, v, gk, gv, scale, initial_state, output_final_state, mode, groups):
    """fla's GLA kernels on :func:`kernel_inputs`' tensors; ``initial_state`` and the returned final state
    are ``[B, H, K, V]`` float32, once per KV head (``groups`` query heads per KV head)."""
    try:
        from fla.ops.gla import chunk_gla, fused_recurrent_gla
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
    except ImportError as err:
        raise _missing_fla(err) from err

    G = groups
    h0 = initial_state.float().repeat_interleave(G, dim=1) if initial_state is not None else None
    common = dict(scale=scale, initial_state=h0, output_final_state=output_final_state)
    if gv is not None or mode == "recurrent":
        if gk is not None and gk.dim() == 3:
            o, ht = fused_recurrent_simple_gla(q, k, v, g=gk, **common)
        else:
            o, ht = fused_recurrent_gla(q, k, v, gk=gk, gv=gv, **common)
    elif gk is not None and gk.dim() == 3 and not (_needs_grad(q, k, v, gk, h0) and scalar_gate_backward_refused()):
        o, ht = chunk_simple_gla(q, k, v, g=gk, **common)
    else:
        if gk is None:
            gk = torch.zeros_like(k, dtype=torch.float32)
        elif gk.dim() == 3:  # a scalar gate is a vector gate equal across the key channels
            gk = gk[..., None].expand_as(k).contiguous()
        o, ht = chunk_gla(q, k, v, g=gk, **common)
    if ht is not None:
        ht = ht[:, ::G].contiguous()
    return o, ht


def gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gk: torch.Tensor | None = None,
    gv: torch.Tensor | None = None,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    mode: str = "chunk",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract as ``gla_ops.naive_recurrent_gla`` (``o`` in :func:`kernel_dtype`, the final state
    ``[B, H, K, V]`` float32 once per KV head), computed by fla's kernels."""
    groups = q.shape[2] // k.shape[2]
    return gla_kernels(*kernel_inputs(q, k, v, gk, gv), scale, initial_state, output_final_state, mode, groups)


def gsa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    s: torch.Tensor,
    g: torch.Tensor,
    scale: float = 1.0,
    initial_state: tuple[torch.Tensor, torch.Tensor] | None = None,
    output_final_state: bool = False,
    mode: str = "chunk",
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """fla's gated slot attention (GQA native): q ``[B,T,HQ,K]``, k ``[B,T,H,K]``, v ``[B,T,H,V]``,
    s and g ``[B,T,H,M]``; state ``(Sk [B,H,K,M], Sv [B,H,M,V])`` float32."""
    try:
        from fla.ops.gsa import chunk_gsa, fused_recurrent_gsa
    except ImportError as err:
        raise _missing_fla(err) from err

    dtype = kernel_dtype(q)
    q, k, v, s, g = q.to(dtype), k.to(dtype), v.to(dtype), s.to(dtype), g.float()
    h0 = tuple(x.float() for x in initial_state) if initial_state is not None else None
    if mode != "recurrent":
        return chunk_gsa(q, k, v, s, g=g, scale=scale, initial_state=h0, output_final_state=output_final_state)
    G = q.shape[2] // k.shape[2]
    grad = _needs_grad(q, k, v, s, g, *(h0 or ()))
    if G == 1 or (q.shape[1] == 1 and not grad):
        # fused_recurrent_gsa reads grouped queries itself, but only in its single-token inference kernel, which
        # it takes only when no input (the initial state included) requires a gradient
        if not grad:
            q, k, v, s, g = (x.detach() for x in (q, k, v, s, g))
            h0 = tuple(x.detach() for x in h0) if h0 is not None else None
        return fused_recurrent_gsa(q, k, v, s, g=g, scale=scale, initial_state=h0,
                                   output_final_state=output_final_state)
    k, v, s, g = (_expand(x, G) for x in (k, v, s, g))
    h0 = tuple(x.repeat_interleave(G, dim=1) for x in h0) if h0 is not None else None
    o, final = fused_recurrent_gsa(q, k, v, s, g=g, scale=scale, initial_state=h0,
                                   output_final_state=output_final_state)
    return o, [x[:, ::G].contiguous() if x is not None else None for x in final]


def delta_kernel_inputs(q, k, v, g, beta):
    """Tensors as fla's gated-delta-rule kernels take them: q/k/v in :func:`kernel_dtype`, log-decays ``g`` and
    write strengths ``beta`` (``[B, T, H]``) in float32, keys, values, ``g`` and ``beta`` repeated to the query
    heads. Pure tensor code (compiled together with the normalisation and gates that produce its inputs)."""
    G = q.shape[2] // k.shape[2]
    dtype = kernel_dtype(q)
    q, k, v = q.to(dtype), _expand(k.to(dtype), G), _expand(v.to(dtype), G)
    return q, k, v, _expand(g.float(), G), _expand(beta.float(), G)


@functools.cache
def gated_delta_rule_backward_refused() -> bool:
    """fla 0.6's ``chunk_gated_delta_rule`` backward runs the gated ``chunk_bwd_dqkwg``, which raises on Hopper GPUs
    with Triton >= 3.4 and < 3.7.1 (fla issue #640: those compute it wrongly) unless fla's TileLang backend takes
    that kernel (``tilelang`` installed, not disabled). There, the gated_deltanet variant trains with the
    pure-PyTorch chunked form instead (see ``variants.GatedDeltaNet``)."""
    try:
        from fla.utils import IS_NVIDIA_HOPPER, TRITON_ABOVE_3_4_0, TRITON_ABOVE_3_7_1
    except ImportError:
        return False
    if not (IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1):
        return False
    try:
        from fla.ops.common.backends.tilelang import CommonTileLangBackend
    except ImportError:
        return True
    dispatch_on = os.environ.get("FLA_DISABLE_BACKEND_DISPATCH") != "1"
    return not (dispatch_on and CommonTileLangBackend.is_available() and CommonTileLangBackend().is_enabled())


def gated_delta_rule_kernels(q, k, v, g, beta, scale, initial_state, output_final_state, mode, groups):
    """fla's gated-delta-rule kernels on :func:`delta_kernel_inputs`' tensors (q/k already L2-normalised: the
    kernels' ``use_qk_l2norm_in_kernel`` stays off); ``initial_state`` and the returned final state are
    ``[B, H, K, V]`` float32, once per KV head (``groups`` query heads per KV head).

    fla 0.6: ``chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
    use_qk_l2norm_in_kernel=False, ...)`` and ``fused_recurrent_gated_delta_rule(q, k, v, g=None, gk=None,
    gv=None, beta=None, scale=None, ...)`` (note the different positional order: everything goes by keyword
    here); both default ``scale`` to 1/sqrt(K), so it is always passed. ``fused_recurrent_gated_delta_rule`` has
    no backward: "recurrent" calls that need gradients take the chunk kernel (the same recurrence)."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
    except ImportError as err:
        raise _missing_fla(err) from err

    G = groups
    h0 = initial_state.float().repeat_interleave(G, dim=1) if initial_state is not None else None
    common = dict(g=g, beta=beta, scale=scale, initial_state=h0, output_final_state=output_final_state,
                  use_qk_l2norm_in_kernel=False)
    if mode == "recurrent" and not _needs_grad(q, k, v, g, beta, h0):
        o, ht = fused_recurrent_gated_delta_rule(q, k, v, **common)
    else:
        o, ht = chunk_gated_delta_rule(q, k, v, **common)
    if ht is not None:
        ht = ht[:, ::G].contiguous()
    return o, ht


def gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float = 1.0,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    mode: str = "chunk",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract as ``delta_rule.naive_recurrent_gated_delta_rule`` (``o`` in :func:`kernel_dtype`, the final
    state ``[B, H, K, V]`` float32 once per KV head), computed by fla's kernels."""
    groups = q.shape[2] // k.shape[2]
    return gated_delta_rule_kernels(*delta_kernel_inputs(q, k, v, g, beta), scale, initial_state, output_final_state,
                                    mode, groups)
