"""Triton kernels for the elementwise work around the recurrence and the window, on CUDA.

* :func:`rope_pair`: RoPE of q and k in one launch (forward and backward), as ``attention.apply_rope``.
* :func:`gla_inputs`: Liger-GLA's recurrence inputs with the default softmax feature map — softmax(q),
  softmax(k), v and the log-decay logsigmoid(k)/n, with padding zeroed and k, v and the log-decay repeated to
  the query heads of their group for fla's kernels (as ``variants._fla_inputs`` computes them) — in one launch;
  the backward sums the repeated gradients over the group in one launch too.

Why not ``torch.compile``: the compiled versions of these functions (dynamic shapes, so that one compilation
serves every length) ran about 10× below the GPU's memory bandwidth on an H200 (docs/gpu.md), and each compiled
region costs a few hundred microseconds of host time per call, forward and backward; these kernels read each
input once and write each output once. Both are checked against the PyTorch versions, forward and backward, in
Triton's CPU interpreter (tests/models/test_triton_ops.py) and on the GPU (tests/gpu).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from .triton_common import cdiv, next_power_of_2
from .triton_common import is_available as is_available  # re-exported: same requirement


def _kernels():
    # (a `from .module import` line: transformers copies the modules named so into saved checkpoints)
    from ._triton_ops_kernels import gla_inputs_bwd, gla_inputs_fwd, rope_pair

    return SimpleNamespace(gla_inputs_bwd=gla_inputs_bwd, gla_inputs_fwd=gla_inputs_fwd, rope_pair=rope_pair)


def _rope_launch(q, k, cos, sin, backward: bool):
    B, T, HQ, D = q.shape
    H = k.shape[2]
    qo, ko = torch.empty_like(q), torch.empty_like(k)
    BH = next_power_of_2(max(D // 2, 1))
    BR = max(1, 2048 // BH)
    n_q, n_k = B * T * HQ, B * T * H
    scb = cos.stride(0) if cos.shape[0] > 1 else 0
    grid = (cdiv(n_q, BR) + cdiv(n_k, BR),)
    _kernels().rope_pair[grid](q, k, qo, ko, cos, sin, n_q, n_k, HQ, H, T, scb, cos.stride(1),
                               D=D, BH=BH, BR=BR, BACKWARD=backward)
    return qo, ko


class _RopePair(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rope_launch(q, k, cos, sin, backward=False)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors  # (autograd gives zeros for an output that took no part in the loss)
        dq, dk = _rope_launch(dq.contiguous(), dk.contiguous(), cos, sin, backward=True)
        return dq, dk, None, None


def rope_pair(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """``(apply_rope(q, cos, sin), apply_rope(k, cos, sin))`` on the Triton kernel: q ``[B, T, HQ, D]``, k
    ``[B, T, H, D]``, cos/sin ``[B or 1, T, D]``; outputs contiguous in q's and k's dtypes."""
    if q.shape[-1] % 2:
        raise ValueError(f"RoPE needs an even head dim, got {q.shape[-1]}")
    q, k, cos, sin = (x.contiguous() for x in (q, k, cos, sin))
    return _RopePair.apply(q, k, cos, sin)


class _GLAInputs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, valid, inv_norm, dtype, repeat):
        B, T, HQ, D = q.shape
        H = k.shape[2]
        qf = torch.empty(B, T, HQ, D, dtype=dtype, device=q.device)
        heads = HQ if repeat else H
        kf, ve = (torch.empty(B, T, heads, D, dtype=dtype, device=q.device) for _ in range(2))
        ge = torch.empty(B, T, heads, D, dtype=torch.float32, device=q.device)
        BD = max(16, next_power_of_2(D))
        BT = max(1, 2048 // BD)
        meta = dict(D=D, BD=BD, BT=BT, HAS_VALID=valid is not None, REPEAT=repeat)
        grid = (cdiv(B * T, BT), H)
        _kernels().gla_inputs_fwd[grid](q, k, v, valid if valid is not None else q, qf, kf, ve, ge, B * T, HQ,
                                        HQ // H, inv_norm, **meta)
        ctx.save_for_backward(q, k, valid)
        ctx.inv_norm, ctx.meta, ctx.v_dtype = inv_norm, meta, v.dtype
        return qf, kf, ve, ge

    @staticmethod
    def backward(ctx, dqf, dkf, dve, dge):
        q, k, valid = ctx.saved_tensors
        B, T, HQ, D = q.shape
        H = k.shape[2]
        grads = [g.contiguous() for g in (dqf, dkf, dve, dge)]  # (zeros for outputs that took no part)
        dq, dk = torch.empty_like(q), torch.empty_like(k)
        dv = torch.empty(k.shape, dtype=ctx.v_dtype, device=k.device)
        grid = (cdiv(B * T, ctx.meta["BT"]), H)
        _kernels().gla_inputs_bwd[grid](q, k, valid if valid is not None else q, *grads, dq, dk, dv, B * T, HQ,
                                        HQ // H, ctx.inv_norm, **ctx.meta)
        return dq, dk, dv, None, None, None, None


def gla_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, normalizer: float,
               dtype: torch.dtype, repeat: bool = True):
    """Liger-GLA's inputs to fla's kernels (softmax feature map, log-decay ``logsigmoid(k) / normalizer``):
    ``(softmax(q), softmax(k), v, log-decay)``, each ``[B, T, HQ, D]``; k, v and the log-decay repeated to the
    query heads (``repeat``; else ``[B, T, H, D]``, once per KV head, for :mod:`liger.models.triton_gla`) and zero
    at padding (``valid`` ``[B, T]`` bool, False = padding; None = no padding); the first three in ``dtype``, the
    log-decay in float32. Same values as ``variants._fla_inputs`` for :class:`~liger.models.variants.GLA` with the
    softmax feature map."""
    q, k, v = (x.contiguous() for x in (q, k, v))
    if valid is not None:
        valid = valid.to(torch.bool).contiguous()
    return _GLAInputs.apply(q, k, v, valid, 1.0 / float(normalizer), dtype, bool(repeat))
