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

from types import SimpleNamespace

import torch

from .triton_common import cdiv, is_available, next_power_of_2, supports

__all__ = ["is_available", "supports", "triton_window_attention"]


def _kernels():
    # (a `from .module import` line: transformers copies the modules named so into saved checkpoints)
    from ._triton_window_kernels import _window_bwd_dkdv, _window_bwd_dq, _window_fwd

    return SimpleNamespace(_window_bwd_dkdv=_window_bwd_dkdv, _window_bwd_dq=_window_bwd_dq, _window_fwd=_window_fwd)


def _launch_args(q, k, v, o, key_valid, window_size, block):
    """Sizes, the key-valid pointer, the strides every kernel takes (q, k, v, o, key_valid) and the constexprs."""
    B, Tq, HQ, D = q.shape
    Tk, H = k.shape[1], k.shape[2]
    BD = max(16, next_power_of_2(D))
    # query blocks a key block is seen by = key blocks a query block sees: the same count in all three kernels
    n_iters = cdiv(block + window_size - 1, block)
    valid = key_valid if key_valid is not None else q  # a placeholder pointer, never read
    s_valid = key_valid.stride(0) if key_valid is not None else 0
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], s_valid)
    meta = dict(W=window_size, D=D, BD=BD, BM=block, BN=block, N_ITERS=n_iters, HAS_VALID=key_valid is not None)
    return B, Tq, Tk, HQ, H, valid, strides, meta


def _block_for(D: int) -> int:
    return 64 if D <= 128 else 32


class _WindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_valid, window_size, scale):
        block = _block_for(q.shape[-1])
        o = torch.empty_like(q, memory_format=torch.contiguous_format)
        B, Tq, Tk, HQ, H, valid, strides, meta = _launch_args(q, k, v, o, key_valid, window_size, block)
        lse = torch.empty(B, HQ, Tq, dtype=torch.float32, device=q.device)
        _kernels()._window_fwd[(cdiv(Tq, block), B * HQ)](
            q, k, v, valid, o, lse, *strides, Tq, Tk, HQ, HQ // H, scale, **meta)
        ctx.save_for_backward(q, k, v, key_valid, o, lse)
        ctx.window_size, ctx.scale = window_size, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, key_valid, o, lse = ctx.saved_tensors
        block = _block_for(q.shape[-1])
        B, Tq, Tk, HQ, H, valid, strides, meta = _launch_args(q, k, v, o, key_valid, ctx.window_size, block)
        do = do.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)  # contiguous, as q, k, v
        delta = torch.empty_like(lse)
        _kernels()._window_bwd_dq[(cdiv(Tq, block), B * HQ)](
            q, k, v, valid, o, do, lse, delta, dq, *strides, Tq, Tk, HQ, HQ // H, ctx.scale, **meta)
        _kernels()._window_bwd_dkdv[(cdiv(Tk, block), B * H)](
            q, k, v, valid, do, lse, delta, dk, dv, *strides, Tq, Tk, HQ, HQ // H, ctx.scale, **meta)
        return dq, dk, dv, None, None, None


def triton_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: int,
    scale: float,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`liger.models.window.window_attention` without sinks, on the Triton kernels.

    Args:
        q: ``[B, Tq, HQ, D]``; k, v: ``[B, Tk, H, D]`` with ``Tk >= Tq`` (a ``view`` of a projection's
            output is read in place; other layouts are copied to contiguous first).
        window_size: ``W``, keys per query including itself.
        scale: softmax scale.
        key_valid: ``[B, Tk]`` bool, False = padding (None: all valid).

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
    return _WindowAttention.apply(q, k, v, key_valid, int(window_size), float(scale))
