"""The recurrence over a whole sequence in one Triton kernel per direction, grouped-query aware
(``chunk_backend="triton"``).

fla 0.6's ``chunk_gla`` takes keys, values and gates repeated to every query head (``fla_backend.kernel_inputs``),
so for SmolLM2's 9 query heads over 3 KV heads it computes each state three times, and it is five launches behind
Python wrappers forward and more backward (~0.8 ms of host time per layer call each way: at 16 × 2K tokens the
prefill, and at batch 8 the LoRA step, were bound by the host, run F of docs/gpu.md). :func:`chunk_gla_fwd`
computes the same recurrence (``gla_ops.naive_recurrent_gla`` with a key-side gate) in one launch: one program per
(batch row, KV head, block of value columns) walks the sequence in chunks of ``chunk`` tokens, with its state in
registers, and serves every query head of the group from one read of the KV head's keys, values and gates (the
kernels: ``_triton_gla_kernels``). :func:`chunk_gla_bwd` is its backward in one launch (a forward walk rebuilding
the states for dq, a backward walk over the state's gradient for dk, dv and dh0); the log-decays' gradient follows
from dq and dk (:class:`_ChunkGLA`); :func:`chunk_gla` is the differentiable op.

Parallelism is batch × KV heads × value blocks (the sequence is walked in order), so the kernels suit batched
prefills and training steps; a single long sequence has few programs (:func:`worth_it`), and fla's kernels,
parallel over the sequence, take it. ``liger_gla=True`` (forward only) applies Liger-GLA's feature map and gate
inside the kernel (softmax(q), softmax(k), ``logsigmoid(k) / normalizer``, padding zeroed:
``triton_ops.gla_inputs`` without the copies).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from .triton_common import MAX_ELEMENTS, cdiv, next_power_of_2

__all__ = ["chunk_gla", "chunk_gla_fwd", "supports", "worth_it"]

CHUNK = 16
"""Tokens per chunk: the intra-chunk scores are computed pairwise, CHUNK keys per query row."""

MIN_PROGRAMS = 64
"""Below this many programs (batch × KV heads × value blocks) :func:`worth_it` says no: the kernel walks the
sequence in order, fla's chunk kernels are parallel over it."""


def _kernels():
    # (a `from .module import` line: transformers copies the modules named so into saved checkpoints)
    from ._triton_gla_kernels import chunk_gla_bwd, chunk_gla_fwd

    return SimpleNamespace(chunk_gla_fwd=chunk_gla_fwd, chunk_gla_bwd=chunk_gla_bwd)


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the kernel cannot take these inputs (None when it can): q ``[B,T,HQ,K]``, k ``[B,T,H,K]``, v
    ``[B,T,H,V]`` of one dtype, CUDA (or Triton's interpreter), K ≤ 128, V ≤ 256."""
    import os

    if not (q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return "not on CUDA"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtypes {q.dtype}/{k.dtype}/{v.dtype}"
    if q.shape[-1] > 128 or v.shape[-1] > 256:
        return f"head dims {q.shape[-1]}/{v.shape[-1]}"
    if q.shape[2] % k.shape[2] or q.shape[2] // k.shape[2] > 8:
        return f"{q.shape[2]} query heads over {k.shape[2]} KV heads"
    if max(x.numel() for x in (q, k, v)) > MAX_ELEMENTS:
        return "tensors of 2^31 elements or more"
    return None


def _safe_span(dtype: torch.dtype) -> float:
    """The largest decay (nats) within a chunk for which the kernels factor the intra-chunk scores through
    ``exp(−b_j)``: its products' operands must hold ``exp(span)`` (float16's range ends at 65504 ≈ exp(11))."""
    return 8.0 if dtype == torch.float16 else 60.0


def _value_block(B: int, H: int, V: int) -> int:
    # 32 value columns per program; 16 when that leaves fewer programs than MIN_PROGRAMS
    return 32 if B * H * cdiv(V, 32) >= MIN_PROGRAMS or V <= 16 else 16


def worth_it(B: int, H: int, V: int) -> bool:
    """Whether there are enough programs (batch × KV heads × value blocks) to fill a GPU: otherwise fla's kernels,
    parallel over the sequence too, are the better choice."""
    return B * H * cdiv(V, _value_block(B, H, V)) >= MIN_PROGRAMS


@torch.no_grad()
def chunk_gla_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None = None,
                  scale: float = 1.0, initial_state: torch.Tensor | None = None, output_final_state: bool = False,
                  liger_gla: bool = False, valid: torch.Tensor | None = None, normalizer: float = 1.0,
                  chunk: int = CHUNK, value_block: int | None = None):
    """The recurrence ``S_t = diag(exp(g_t)) S_{t-1} + k_tᵀ v_t``, ``o_t = scale · q_t S_t`` (query head
    ``h·G + j`` reading KV head ``h``), forward only.

    Args:
        q: ``[B, T, HQ, K]``; k ``[B, T, H, K]``; v ``[B, T, H, V]``, one dtype (fp16/bf16/fp32).
        g: log-decay per key channel ``[B, T, H, K]`` (float32; one that is not contiguous in its last dim,
            e.g. a stride-0 expansion of a per-head gate, is copied: the kernels read it in rows, and with a
            stride-0 row the bfloat16 forward of a scalar gate hit an illegal address on an H100, run P of
            docs/gpu.md); ignored with ``liger_gla``.
        initial_state: ``[B, H, K, V]`` float32 or None (zeros).
        liger_gla: q and k are Liger-GLA's raw projections: the kernel takes softmax(q), softmax(k) and the
            log-decay ``logsigmoid(k) / normalizer`` itself, with ``valid`` (``[B, T]`` bool, False = padding:
            zero key, value and log-decay there) or None.

    Returns:
        ``o`` ``[B, T, HQ, V]`` in q's dtype, and the final state ``[B, H, K, V]`` float32 (or None).
    """
    B, T, HQ, DK = q.shape
    H, DV = k.shape[2], v.shape[-1]
    GROUP = HQ // H
    o = torch.empty(B, T, HQ, DV, dtype=q.dtype, device=q.device)
    ht = torch.empty(B, H, DK, DV, dtype=torch.float32, device=q.device) if output_final_state else None
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if liger_gla:
        g = k  # (unused by the kernel)
        valid = valid.to(torch.bool).contiguous() if valid is not None else None
    elif g.stride(-1) != 1:
        g = g.contiguous()
    BV = value_block or _value_block(B, H, DV)
    grid = (cdiv(DV, BV), B * H)
    _kernels().chunk_gla_fwd[grid](
        q, k, v, g, valid if valid is not None else q, h0 if h0 is not None else o, o, ht if ht is not None else o,
        T, H, 1.0 / float(normalizer), float(scale),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), g.stride(0), g.stride(1), g.stride(2), g.stride(3),
        o.stride(0), o.stride(1), o.stride(2),
        DK=DK, DV=DV, GROUP=GROUP, BG=next_power_of_2(GROUP), BT=chunk, BK=max(16, next_power_of_2(DK)), BV=BV,
        LIGER_GLA=liger_gla, HAS_VALID=valid is not None, HAS_H0=h0 is not None, STORE_HT=ht is not None,
        PRECISION="ieee" if q.dtype == torch.float32 else "half", SAFE=_safe_span(q.dtype),
    )
    return o, ht


class _ChunkGLA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, initial_state, output_final_state, chunk):
        o, ht = chunk_gla_fwd(q, k, v, g, scale, initial_state, output_final_state, chunk=chunk)
        ctx.save_for_backward(q, k, v, g, initial_state)
        ctx.scale, ctx.chunk = scale, chunk
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0 = ctx.saved_tensors
        dq, dk, dv, dh0, dg_after = chunk_gla_bwd(q, k, v, g, ctx.scale, h0, do, dht, ctx.chunk)
        # the log-decays' gradient: dg_t = Σ_{s ≥ t} (Σ_group q_s ⊙ dq_s − k_s ⊙ dk_s) + Σ_v S_T ⊙ dS_T, the sum
        # taken inside t's chunk, what lies after it from the kernel (Σ_v S_c ⊙ dS_c, `dg_after`)
        B, T, HQ, DK = q.shape
        H = k.shape[2]
        x = (q.float() * dq).view(B, T, H, HQ // H, DK).sum(3) - k.float() * dk
        n = dg_after.shape[1]
        x = F.pad(x, (0, 0, 0, 0, 0, n * ctx.chunk - T)).view(B, n, ctx.chunk, H, DK)
        dg = (x.flip(2).cumsum(2).flip(2) + dg_after[:, :, None]).view(B, n * ctx.chunk, H, DK)[:, :T]
        return (dq.to(q.dtype), dk.to(k.dtype), dv, dg.to(g.dtype),
                None, dh0 if h0 is not None else None, None, None)


@torch.no_grad()
def chunk_gla_bwd(q, k, v, g, scale, initial_state, do, dht, chunk=CHUNK, value_block=None):
    """The gradients of :func:`chunk_gla_fwd` (prepared inputs): ``(dq, dk, dv, dh0, dg_after)``, dq and dk
    float32 (the value blocks' shares summed), dv in v's dtype, dh0 float32 (None without an initial state);
    ``dg_after`` ``[B, chunks, H, K]`` float32 is ``Σ_v S_c ⊙ dS_c`` per chunk c of ``chunk`` tokens (the state
    after it and that state's gradient from the later chunks and ``dht``): the log-decays' gradient from
    everything after the chunk."""
    B, T, HQ, DK = q.shape
    H, DV = k.shape[2], v.shape[-1]
    GROUP = HQ // H
    BV = value_block or _value_block(B, H, DV)
    nv = cdiv(DV, BV)
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if g.stride(-1) != 1:
        g = g.contiguous()
    do = do.contiguous()
    dq = torch.empty(nv, B, T, HQ, DK, dtype=torch.float32, device=q.device)
    dk = torch.empty(nv, B, T, H, DK, dtype=torch.float32, device=q.device)
    dv = torch.empty(B, T, H, DV, dtype=v.dtype, device=q.device)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    dh0 = torch.empty(B, H, DK, DV, dtype=torch.float32, device=q.device) if h0 is not None else None
    dht = dht.float().contiguous() if dht is not None else None
    n = cdiv(T, chunk)
    states = torch.empty(B * H, n, DK, DV, dtype=torch.float32, device=q.device)  # (scratch: S after each chunk)
    dg_after = torch.empty(nv, B, n, H, DK, dtype=torch.float32, device=q.device)
    _kernels().chunk_gla_bwd[(nv, B * H)](
        q, k, v, g, h0 if h0 is not None else dq, do, dht if dht is not None else dq, dq, dk, dv,
        dh0 if dh0 is not None else dq, states, dg_after, T, H, float(scale),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), g.stride(0), g.stride(1), g.stride(2), g.stride(3),
        dq.stride(0), dk.stride(0), dg_after.stride(0),
        DK_=DK, DV_=DV, GROUP=GROUP, BG=next_power_of_2(GROUP), BT=chunk, BK=max(16, next_power_of_2(DK)), BV=BV,
        HAS_H0=h0 is not None, HAS_DHT=dht is not None, STORE_DH0=dh0 is not None,
        PRECISION="ieee" if q.dtype == torch.float32 else "half", SAFE=_safe_span(q.dtype),
    )
    total = (lambda x: x.sum(0)) if nv > 1 else (lambda x: x[0])
    return total(dq), total(dk), dv, dh0, total(dg_after)


def chunk_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float = 1.0,
              initial_state: torch.Tensor | None = None, output_final_state: bool = False, chunk: int = CHUNK):
    """:func:`chunk_gla_fwd` on prepared inputs with gradients (q, k, v, g and the initial state): the backward
    is :func:`chunk_gla_bwd` plus the log-decays' gradient from dq and dk. Same arguments and results."""
    return _ChunkGLA.apply(q, k, v, g, float(scale), initial_state, output_final_state, chunk)
