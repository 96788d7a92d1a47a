"""Sliding-window softmax attention as Triton kernels (forward and backward), for grouped-query heads.

Same function as :func:`liger.models.window.window_attention` without sinks: the query at key index ``p``
(the queries are the last ``Tq`` of ``Tk`` keys) attends to the keys ``p - W + 1 .. p`` whose ``key_valid``
flag is set, and always to its own key (so a padding query returns a finite value that nobody reads).

Why a kernel: the fused-SDPA blocks (``window.sdpa_window_attention``) need the keys of each query block
gathered, padded to a multiple of 16 and repeated to the query heads of their group, a boolean mask per
block and a transpose of the output — copies that cost more than the attention itself (docs/gpu.md). These
kernels read ``q`` ``[B, Tq, HQ, D]`` and ``k``/``v`` ``[B, Tk, H, D]`` where they lie (time-first, the
layout the projections produce), each query block loads only the ``block + W - 1`` keys its windows reach,
the query heads of a group read their KV head directly, and the output is written time-first, ready for
``o_proj``. The backward recomputes the scores from the saved log-sum-exp (as FlashAttention does): one
kernel per query block for ``dq``, one per key block for ``dk``/``dv``, which loops over the query heads of
its group and the query blocks that see it, so no atomics and no ``[T, T]`` tensor anywhere.

Scores and the softmax are float32; for half-precision inputs the two products run on tensor cores with
float32 accumulation (the probabilities are rounded to the input dtype for ``P·V``, as FlashAttention does).
For float32 inputs Triton computes the products as tf32 unless ``TRITON_F32_DEFAULT=ieee``.

Triton is imported lazily; :func:`is_available` says whether the kernels can run here. They also run under
Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors), which is how the CPU tests check them.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


@functools.cache
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def is_available() -> bool:
    """Triton is importable and a CUDA device exists (or Triton's CPU interpreter is switched on)."""
    return _has_triton() and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


def supports(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Shapes the kernels take: head dims up to 256, query heads a multiple of the key heads."""
    D = q.shape[-1]
    return D <= 256 and q.shape[2] % k.shape[2] == 0 and k.shape[-1] == D


def _kernels():
    from . import _triton_window_kernels

    return _triton_window_kernels


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _launch_args(q, k, key_valid, rope, window_size, block):
    B, Tq, HQ, D = q.shape
    Tk, H = k.shape[1], k.shape[2]
    BD = max(16, _next_power_of_2(D))
    n_iters = _cdiv(block + window_size - 1, block)
    valid = key_valid if key_valid is not None else q  # placeholder pointers, never read
    s_valid = key_valid.stride(0) if key_valid is not None else 0
    cos, sin = rope if rope is not None else (q, q)
    s_cos = (cos.stride(0) if cos.shape[0] > 1 else 0, cos.stride(1)) if rope is not None else (0, 0)
    meta = dict(W=window_size, D=D, BD=BD, BM=block, BN=block, N_ITERS=n_iters, HAS_VALID=key_valid is not None,
                ROPE=rope is not None)
    return B, Tq, Tk, HQ, H, (valid, cos, sin), (s_valid, *s_cos), meta


def _block_for(D: int) -> int:
    return 64 if D <= 128 else 32


class _WindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_valid, cos, sin, window_size, scale):
        block = _block_for(q.shape[-1])
        rope = (cos, sin) if cos is not None else None
        B, Tq, Tk, HQ, H, aux, s_aux, meta = _launch_args(q, k, key_valid, rope, window_size, block)
        o = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = torch.empty(B, HQ, Tq, dtype=torch.float32, device=q.device)
        strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], *s_aux)
        _kernels()._window_fwd[(_cdiv(Tq, block), B * HQ)](
            q, k, v, *aux, o, lse, *strides, Tq, Tk, HQ, HQ // H, scale, **meta)
        ctx.save_for_backward(q, k, v, key_valid, cos, sin, o, lse)
        ctx.window_size, ctx.scale = window_size, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, key_valid, cos, sin, o, lse = ctx.saved_tensors
        block = _block_for(q.shape[-1])
        rope = (cos, sin) if cos is not None else None
        B, Tq, Tk, HQ, H, aux, s_aux, meta = _launch_args(q, k, key_valid, rope, ctx.window_size, block)
        do = do.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)  # contiguous, as q, k, v
        delta = torch.empty_like(lse)
        strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], *s_aux)
        _kernels()._window_bwd_dq[(_cdiv(Tq, block), B * HQ)](
            q, k, v, *aux, o, do, lse, delta, dq, *strides, Tq, Tk, HQ, HQ // H, ctx.scale, **meta)
        _kernels()._window_bwd_dkdv[(_cdiv(Tk, block), B * H)](
            q, k, v, *aux, do, lse, delta, dk, dv, *strides, Tq, Tk, HQ, HQ // H, ctx.scale, **meta)
        return dq, dk, dv, None, None, None, None, None


def triton_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: int,
    scale: float,
    key_valid: torch.Tensor | None = None,
    rope: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """:func:`liger.models.window.window_attention` without sinks, on the Triton kernels.

    Args:
        q: ``[B, Tq, HQ, D]``; k, v: ``[B, Tk, H, D]`` with ``Tk >= Tq`` (a ``view`` of a projection's
            output is read in place; other layouts are copied to contiguous first).
        window_size: ``W``, keys per query including itself.
        scale: softmax scale.
        key_valid: ``[B, Tk]`` bool, False = padding (None: all valid).
        rope: ``(cos, sin)``, ``[B or 1, Tq, D]``: ``q`` and the last ``Tq`` keys are given *before* RoPE and
            rotated inside the kernels (``x·cos + rotate_half(x)·sin``, as ``attention.apply_rope``); the first
            ``Tk − Tq`` keys (a cache's window) are taken as already rotated. Gradients are w.r.t. the
            unrotated inputs. None: q and k are used as given.

    Returns:
        ``[B, Tq, HQ, D]`` (contiguous) in ``q.dtype``; differentiable in ``q``, ``k``, ``v``.
    """
    if not is_available():
        raise RuntimeError("the Triton window kernels need triton and a CUDA device")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    q, k, v = (x.contiguous() for x in (q, k, v))  # no copy for the projections' views
    if key_valid is not None:
        key_valid = key_valid.to(torch.bool).contiguous()
    cos = sin = None
    if rope is not None:
        cos, sin = (x.contiguous() for x in rope)
        if q.shape[-1] % 2 or cos.shape[-2:] != (q.shape[1], q.shape[-1]) or cos.shape != sin.shape:
            raise ValueError(f"rope: cos/sin must be [B or 1, {q.shape[1]}, {q.shape[-1]}] (even head dim), "
                             f"got {tuple(cos.shape)}")
    return _WindowAttention.apply(q, k, v, key_valid, cos, sin, int(window_size), float(scale))
