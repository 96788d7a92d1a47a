"""Sliding-window softmax attention as Triton kernels (forward and backward), for grouped-query heads.

Same function as :func:`liger.models.window.window_attention`: the query at key index ``p`` (the queries are
the last ``Tq`` of ``Tk`` keys) attends to the keys ``p - W + 1 .. p`` whose ``key_valid`` flag is set, and
always to its own key (so a padding query returns a finite value that nobody reads), plus the sinks and the
global cache's extra keys visible to it.

Why a kernel: the fused-SDPA blocks (``window.sdpa_window_attention``) need the keys of each query block
gathered, padded to a multiple of 16 and repeated to the query heads of their group, a boolean mask per
block and a transpose of the output — copies that cost more than the attention itself (docs/gpu.md). These
kernels read ``q`` ``[B, Tq, HQ, D]`` and ``k``/``v`` ``[B, Tk, H, D]`` where they lie (time-first, the
layout the projections produce), each query block loads only the ``block + W - 1`` keys its windows reach,
the query heads of a group read their KV head directly, and the output is written time-first, ready for
``o_proj``. The backward recomputes the scores from the saved log-sum-exp (as FlashAttention does): one
kernel per query block for ``dq``, one per key block for ``dk``/``dv``, which loops over the query heads of
its group and the query blocks that see it, so no atomics and no ``[T, T]`` tensor anywhere.

Sinks and extra keys (a few, the same for a whole query block) are not in the kernels: they are scored in
PyTorch and merged with the window's output through its log-sum-exp, which the forward kernel returns and the
backward takes a gradient for (``lse`` is an output: its gradient enters the ``delta`` term of the backward,
``dS = P ∘ (dP − (rowsum(dO ∘ O) − dlse))``)::

    o = (o_w · e^(lse_w − m) + Σ_e e^(s_e − m) v_e) / (e^(lse_w − m) + Σ_e e^(s_e − m)),  m = max(lse_w, s_e)

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
    def forward(ctx, q, k, v, key_valid, window_size, scale):  # -> o, lse [B, HQ, Tq] (float32)
        block = _block_for(q.shape[-1])
        o = torch.empty_like(q, memory_format=torch.contiguous_format)
        B, Tq, Tk, HQ, H, valid, strides, meta = _launch_args(q, k, v, o, key_valid, window_size, block)
        lse = torch.empty(B, HQ, Tq, dtype=torch.float32, device=q.device)
        _kernels()._window_fwd[(cdiv(Tq, block), B * HQ)](
            q, k, v, valid, o, lse, *strides, Tq, Tk, HQ, HQ // H, scale, **meta)
        ctx.save_for_backward(q, k, v, key_valid, o, lse)
        ctx.window_size, ctx.scale = window_size, scale
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, key_valid, o, lse = ctx.saved_tensors
        block = _block_for(q.shape[-1])
        B, Tq, Tk, HQ, H, valid, strides, meta = _launch_args(q, k, v, o, key_valid, ctx.window_size, block)
        do = do.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)  # contiguous, as q, k, v
        delta = torch.empty_like(lse)
        if dlse is not None:
            dlse = dlse.contiguous()
        _kernels()._window_bwd_dq[(cdiv(Tq, block), B * HQ)](
            q, k, v, valid, o, do, lse, dlse if dlse is not None else lse, delta, dq, *strides, Tq, Tk, HQ,
            HQ // H, ctx.scale, **meta, HAS_DLSE=dlse is not None)
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
    sinks=None,
    extra=None,
) -> torch.Tensor:
    """:func:`liger.models.window.window_attention` on the Triton kernels (sinks and extra keys merged through
    the log-sum-exp, see the module docstring).

    Args:
        q: ``[B, Tq, HQ, D]``; k, v: ``[B, Tk, H, D]`` with ``Tk >= Tq`` (a ``view`` of a projection's
            output is read in place; other layouts are copied to contiguous first).
        window_size: ``W``, keys per query including itself.
        scale: softmax scale.
        key_valid: ``[B, Tk]`` bool, False = padding (None: all valid).
        sinks: :class:`liger.models.window.Sinks` or None; extra: :class:`liger.models.global_cache.ExtraKeys`
            (blocks of ``extra.block_size`` queries) or None.

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
    o, lse = _WindowAttention.apply(q, k, v, key_valid, int(window_size), float(scale))
    if (sinks is None or not sinks.k.shape[1]) and extra is None:
        return o
    return _merge_outside_keys(q, o, lse, Tk=k.shape[1], window_size=int(window_size), scale=float(scale),
                               sinks=sinks, extra=extra)


def _merge_outside_keys(q, o, lse, Tk, window_size, scale, sinks, extra) -> torch.Tensor:
    """The window's output ``o`` (log-sum-exp ``lse`` ``[B, HQ, Tq]``) merged with the sinks and extra keys
    visible to each query (scored here in float32, as :func:`liger.models.window.window_attention` does)."""
    from .window import blocked_sink_visibility  # (window.py imports this module)

    B, Tq, HQ, D = q.shape
    H = (sinks.k if sinks is not None and sinks.k.shape[1] else extra.k).shape[-2]
    G, L, W = HQ // H, Tk - Tq, window_size
    bq = extra.block_size if extra is not None else max(1, min(64, Tq))
    nb = -(-Tq // bq)
    qpad = torch.nn.functional.pad(q.float(), (0, 0, 0, 0, 0, nb * bq - Tq)).reshape(B, nb, bq, H, G, D)
    scores, masks, values, eqs = [], [], [], []
    if sinks is not None and sinks.k.shape[1]:
        visible = blocked_sink_visibility(sinks, L, nb, bq, W)
        scores.append(torch.einsum("bnqhgd,bshd->bnqhgs", qpad, sinks.k.float()) * scale)
        masks.append(visible[:, :, :, None, None, :])  # [B, nb, bq, 1, 1, S]
        values.append(sinks.v.float())
        eqs.append("bnqhgs,bshd->bnqhgd")
    if extra is not None:
        if extra.block_size != bq or extra.k.shape[1] != nb:
            raise ValueError(f"extra keys built for blocks of {extra.block_size} queries ({extra.k.shape[1]} "
                             f"blocks), the op uses {nb} blocks of {bq}")
        scores.append(torch.einsum("bnqhgd,bnehd->bnqhge", qpad, extra.k.float()) * scale)
        masks.append(extra.visible.permute(0, 1, 3, 2, 4)[:, :, :, :, None])  # [B, nb, bq, H, 1, E]
        values.append(extra.v.float())
        eqs.append("bnqhge,bnehd->bnqhgd")
    scores = [s.masked_fill(~m, float("-inf")) for s, m in zip(scores, masks)]
    lse_w = torch.nn.functional.pad(lse.transpose(1, 2), (0, 0, 0, nb * bq - Tq)).reshape(B, nb, bq, H, G)
    m = torch.stack([lse_w, *(s.amax(-1) for s in scores)]).amax(0).detach()  # finite: lse_w always is
    a = (lse_w - m).exp()
    probs = [(s - m[..., None]).exp() for s in scores]
    den = a + sum(p.sum(-1) for p in probs)
    opad = torch.nn.functional.pad(o.float(), (0, 0, 0, 0, 0, nb * bq - Tq)).reshape(B, nb, bq, H, G, D)
    num = opad * a[..., None] + sum(torch.einsum(e, p, v) for e, p, v in zip(eqs, probs, values))
    return (num / den[..., None]).reshape(B, nb * bq, HQ, D)[:, :Tq].to(q.dtype).contiguous()
