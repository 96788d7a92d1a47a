"""Sliding-window softmax attention with optional attention sinks, in pure PyTorch.

The queries are the last ``Tq`` positions of a key sequence of length ``Tk >= Tq`` (a decode step sees
the cached window followed by its own key). The query at key index ``p`` attends to

* the keys at indices ``p - W + 1 .. p`` (exactly ``W = window_size`` keys, the current one included)
  whose ``key_valid`` flag is set, and
* the sink keys whose flag is set and whose index is ``<= p - W`` (a sink already inside the window is
  counted once, as a window key).

``naive_window_attention`` builds the dense ``[Tq, Tk]`` mask and is the reference.
``window_attention`` cuts the queries into blocks and gives each block only the ``block + W - 1`` keys it
can see, so memory is ``O(T · W)`` and no ``T × T`` mask is ever built (the CPU path).
``sdpa_window_attention`` is the same blocking with each block computed by PyTorch's fused
``scaled_dot_product_attention`` (the CUDA path of the model). ``flex_window_attention`` is the same function
through FlexAttention with a block-sparse mask built from block indices (kept and tested; slower inside the
model on an H100, see docs/gpu.md).
``window_decode_attention`` is the single-token decode step over the cache's ring buffer (fixed shapes).
All take grouped-query inputs (``HQ`` query heads over ``H`` key/value heads) and read them without repeating
K/V (the SDPA blocks stack a group's query heads as rows of one query block).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .compiling import CompiledOrEager
from .global_cache import ExtraKeys
from .triton_common import supports as triton_supports
from .triton_window import triton_window_attention


@dataclass
class Sinks:
    """Sink keys/values in the coordinates of the key sequence they are attended with.

    k, v: ``[B, S, H, D]``; index: ``[B, S]`` (long; the key index of each sink, may be negative when the
    sink lies before the first key of the sequence); valid: ``[B, S]`` (bool).
    """

    k: torch.Tensor
    v: torch.Tensor
    index: torch.Tensor
    valid: torch.Tensor


def _masked_softmax_av(scores: list[torch.Tensor], masks: list[torch.Tensor], values: list[torch.Tensor],
                       eq: list[str]) -> torch.Tensor:
    """softmax over the concatenation of several score blocks, then the weighted sum of their values.

    Rows whose keys are all masked (padding queries) return zeros instead of NaN.
    """
    dtype = torch.promote_types(scores[0].dtype, torch.float32)
    scores = [s.to(dtype).masked_fill(~m, float("-inf")) for s, m in zip(scores, masks)]
    row_max = torch.stack([s.amax(-1) for s in scores]).amax(0).nan_to_num(neginf=0.0)[..., None]
    probs = [(s - row_max).exp() for s in scores]
    denom = sum(p.sum(-1) for p in probs)[..., None].clamp_min(torch.finfo(dtype).tiny)
    return sum(torch.einsum(e, (p / denom).to(v.dtype), v) for e, p, v in zip(eq, probs, values))


def naive_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: int,
    scale: float,
    key_valid: torch.Tensor | None = None,
    sinks: Sinks | None = None,
    extra: ExtraKeys | None = None,
) -> torch.Tensor:
    """Dense reference: the full ``[Tq, Tk]`` score matrix under the window/sink mask.

    Args:
        q: ``[B, Tq, HQ, D]``.
        k, v: ``[B, Tk, H, D]``, ``Tk >= Tq``; ``HQ`` a multiple of ``H``.
        window_size: ``W``, keys per query including itself.
        scale: softmax scale (the teacher's, ``1/sqrt(D)`` for Llama).
        key_valid: ``[B, Tk]`` bool; False marks padding. Default: all valid.
        sinks: optional :class:`Sinks`.
        extra: optional keys per block of queries (the global cache), with per-head visibility.

    Returns:
        ``[B, Tq, HQ, D]`` in ``q.dtype``.
    """
    B, Tq, HQ, D = q.shape
    Tk, H = k.shape[1], k.shape[2]
    G = HQ // H
    qg = q.reshape(B, Tq, H, G, D)
    p = torch.arange(Tk - Tq, Tk, device=q.device)[:, None]  # key index of each query
    j = torch.arange(Tk, device=q.device)[None, :]
    mask = ((j <= p) & (j > p - window_size))[None, None, None]  # [1,1,1,Tq,Tk]
    if key_valid is not None:
        mask = mask & key_valid[:, None, None, None, :]
    scores = [torch.einsum("bqhgd,bkhd->bhgqk", qg, k) * scale]
    masks, values, eqs = [mask], [v], ["bhgqk,bkhd->bqhgd"]
    if sinks is not None:
        scores.append(torch.einsum("bqhgd,bshd->bhgqs", qg, sinks.k) * scale)
        visible = sinks.valid[:, None, :] & (sinks.index[:, None, :] <= p[None] - window_size)  # [B,Tq,S]
        masks.append(visible[:, None, None])
        values.append(sinks.v)
        eqs.append("bhgqs,bshd->bqhgd")
    if extra is not None:
        block = torch.arange(Tq, device=q.device) // extra.block_size  # each query's block
        ek, ev = extra.k[:, block], extra.v[:, block]  # [B, Tq, E, H, D]
        local = torch.arange(Tq, device=q.device) % extra.block_size
        visible = extra.visible[:, block].transpose(2, 3)[:, torch.arange(Tq, device=q.device), local]  # [B,Tq,H,E]
        scores.append(torch.einsum("bqhgd,bqehd->bhgqe", qg, ek) * scale)
        masks.append(visible.permute(0, 2, 1, 3)[:, :, None])  # [B,H,1,Tq,E]
        values.append(ev)
        eqs.append("bhgqe,bqehd->bqhgd")
    out = _masked_softmax_av(scores, masks, values, eqs)
    return out.reshape(B, Tq, HQ, D).to(q.dtype)


class _QueryBlocks:
    """The blocking shared by :func:`window_attention` and :func:`sdpa_window_attention`: the ``Tq`` queries in
    ``nb`` blocks of ``bq``, each seeing the ``span = bq + W − 1`` keys (rounded up to a multiple of ``align``)
    from ``W − 1`` before its first query to its last."""

    def __init__(self, q, k, window_size: int, block_size: int, key_valid, align: int = 1):
        B, Tq = q.shape[:2]
        Tk = k.shape[1]
        self.W, self.L = window_size, Tk - Tq
        self.bq = max(1, min(block_size, Tq))
        self.nb = -(-Tq // self.bq)
        self.span = -(-(self.bq + self.W - 1) // align) * align
        self.pad_right = self.nb * self.bq - Tq + self.span - (self.bq + self.W - 1)
        self.key_valid = key_valid if key_valid is not None else torch.ones(B, Tk, dtype=torch.bool,
                                                                             device=q.device)

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, Tk, ...]`` -> ``[B, nb, ..., span]``: the keys each query block can see (zero/False padded)."""
        widths = (0, 0) * (x.dim() - 2) + (self.W - 1, self.pad_right)
        return F.pad(x, widths)[:, self.L:].unfold(1, self.span, self.bq)

    def band(self, own_key: bool = False) -> torch.Tensor:
        """``[bq, span]``: which of its block's keys each query's window holds (with ``own_key``, only its own
        key: the block's key ``W − 1`` places after the query's row)."""
        qq = torch.arange(self.bq, device=self.key_valid.device)[:, None]
        jj = torch.arange(self.span, device=self.key_valid.device)[None, :]
        return jj == qq + self.W - 1 if own_key else (jj >= qq) & (jj <= qq + self.W - 1)


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: int,
    scale: float,
    key_valid: torch.Tensor | None = None,
    sinks: Sinks | None = None,
    block_size: int = 64,
    extra: ExtraKeys | None = None,
) -> torch.Tensor:
    """Banded form of :func:`naive_window_attention` (same arguments and results; ``extra`` must be built for
    this op's query blocks, ``min(block_size, Tq)``).

    Queries are processed in blocks of ``block_size``; each block scores only the ``block_size + W - 1``
    keys that can fall in its windows, so time and memory are linear in the sequence length.
    """
    B, Tq, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    blocks = _QueryBlocks(q, k, window_size, block_size, key_valid)
    L, bq, nb = blocks.L, blocks.bq, blocks.nb
    kb, vb = blocks.keys(k), blocks.keys(v)  # [B, nb, H, D, span]
    mask = blocks.band()[None, None, None, None] & blocks.keys(blocks.key_valid)[:, None, None, :, None, :]
    # (mask: [B,1,1,nb,bq,span])
    qpad = F.pad(q, (0, 0, 0, 0, 0, nb * bq - Tq)).reshape(B, nb, bq, H, G, D)
    scores = [torch.einsum("bnqhgd,bnhdj->bhgnqj", qpad, kb) * scale]
    masks, values, eqs = [mask], [vb], ["bhgnqj,bnhdj->bnqhgd"]
    if sinks is not None:
        visible = blocked_sink_visibility(sinks, L, nb, bq, window_size)
        scores.append(torch.einsum("bnqhgd,bshd->bhgnqs", qpad, sinks.k) * scale)
        masks.append(visible[:, None, None])  # [B,1,1,nb,bq,S]
        values.append(sinks.v)
        eqs.append("bhgnqs,bshd->bnqhgd")
    if extra is not None:
        _check_extra(extra, bq, nb)
        scores.append(torch.einsum("bnqhgd,bnehd->bhgnqe", qpad, extra.k) * scale)
        masks.append(extra.visible.permute(0, 2, 1, 3, 4)[:, :, None])  # [B,H,1,nb,bq,E]
        values.append(extra.v)
        eqs.append("bhgnqe,bnehd->bnqhgd")
    out = _masked_softmax_av(scores, masks, values, eqs)
    return out.reshape(B, nb * bq, HQ, D)[:, :Tq].to(q.dtype)


def blocked_sink_visibility(sinks: Sinks, first: int, nb: int, bq: int, window_size: int) -> torch.Tensor:
    """``[B, nb, bq, S]``: which sinks the queries of ``nb`` blocks of ``bq`` (positions ``first``, ``first + 1``,
    ...) see — the valid ones outside their windows (a sink inside a window is counted once, as a window key)."""
    p = first + torch.arange(nb * bq, device=sinks.index.device).reshape(nb, bq)
    return sinks.valid[:, None, None, :] & (sinks.index[:, None, None, :] <= p[None, :, :, None] - window_size)


def _check_extra(extra: ExtraKeys, bq: int, nb: int) -> None:
    if extra.block_size != bq or extra.k.shape[1] != nb:
        raise ValueError(f"extra keys built for blocks of {extra.block_size} queries ({extra.k.shape[1]} blocks), "
                         f"the op uses {nb} blocks of {bq}")


def sdpa_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: int,
    scale: float,
    key_valid: torch.Tensor | None = None,
    sinks: Sinks | None = None,
    block_size: int = 64,
    extra: ExtraKeys | None = None,
) -> torch.Tensor:
    """:func:`window_attention`'s blocking with each block computed by ``F.scaled_dot_product_attention``.

    Every block of ``block_size`` queries attends to its ``block_size + W - 1`` candidate keys (rounded up to
    a multiple of 16 for the fused kernels) plus the sinks, under a small boolean mask; the fused kernel never
    writes the scores to memory, which is what makes this fast on GPUs. A query always sees its own key, so
    a padding query returns its own value (finite; padding outputs are never read) instead of zeros.
    """
    B, Tq, HQ, D = q.shape
    H = k.shape[2]
    G = HQ // H
    W = window_size
    blocks = _QueryBlocks(q, k, W, block_size, key_valid, align=16)  # (span a multiple of 16: fused kernels)
    L, bq, nb = blocks.L, blocks.bq, blocks.nb
    kb, vb = blocks.keys(k).movedim(-1, 2), blocks.keys(v).movedim(-1, 2)  # [B, nb, span, H, D]
    # [B, nb, bq, span]; a query always sees its own key
    mask = (blocks.band() & blocks.keys(blocks.key_valid)[:, :, None, :]) | blocks.band(own_key=True)
    if sinks is not None and sinks.k.shape[1]:
        S = sinks.k.shape[1]
        visible = blocked_sink_visibility(sinks, L, nb, bq, W)
        mask = torch.cat([visible, mask], dim=-1)
        kb = torch.cat([sinks.k.to(kb.dtype)[:, None].expand(B, nb, S, H, D), kb], dim=2)
        vb = torch.cat([sinks.v.to(vb.dtype)[:, None].expand(B, nb, S, H, D), vb], dim=2)
    heads = 1  # the mask is shared by the heads, unless the extra keys' visibility differs per KV head
    if extra is not None:
        _check_extra(extra, bq, nb)
        heads = H
        mask = torch.cat([extra.visible, mask[:, :, None].expand(B, nb, H, bq, mask.shape[-1])], dim=-1)
        kb = torch.cat([extra.k.to(kb.dtype), kb], dim=2)
        vb = torch.cat([extra.v.to(vb.dtype), vb], dim=2)
    pad = -kb.shape[2] % 16  # sinks and extra keys unalign the key count again: fused kernels want multiples of 16
    if pad:
        kb, vb = F.pad(kb, (0, 0, 0, 0, 0, pad)), F.pad(vb, (0, 0, 0, 0, 0, pad))
        mask = F.pad(mask, (0, pad), value=False)
    n_keys = kb.shape[2]
    # the G query heads of a KV head stacked as the rows of one query block (query head h·G + g: rows g·bq + i), so
    # each block's keys and values are read once per KV head, not repeated to every query head (a copy 2·G times
    # the key blocks' size, and the blocks of a 512-key window already hold each key about nine times: run O's
    # profile of the memory recipe's 2K prefill spent 130 of its 344 ms of GPU time in such copies); the mask is
    # copied G times instead (one byte per query row and key, against 2·2·D bytes per key for K and V)
    qb = F.pad(q, (0, 0, 0, 0, 0, nb * bq - Tq)).reshape(B * nb, bq, H, G, D).permute(0, 2, 3, 1, 4)
    qb = qb.reshape(B * nb, H, G * bq, D)
    kb = kb.reshape(B * nb, n_keys, H, D).transpose(1, 2)
    vb = vb.reshape(B * nb, n_keys, H, D).transpose(1, 2)
    mask = mask.reshape(B * nb, heads, 1, bq, n_keys)
    if G > 1:
        mask = mask.expand(B * nb, heads, G, bq, n_keys)
    mask = mask.reshape(B * nb, heads, G * bq, n_keys)
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale)  # [B·nb, H, G·bq, D]
    out = out.reshape(B, nb, H, G, bq, D).permute(0, 1, 4, 2, 3, 5)
    return out.reshape(B, nb * bq, HQ, D)[:, :Tq]


def first_real_tokens(k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None, num_sinks: int) -> Sinks:
    """The sinks of a sequence read from its start: the first ``num_sinks`` real tokens of each sequence.

    Args:
        k, v: ``[B, T, H, D]``.
        valid: ``[B, T]`` bool (None = all real).
        num_sinks: ``S``.

    Returns:
        :class:`Sinks` with ``index`` relative to ``k[:, 0]``; slots of sequences with fewer than ``S`` real
        tokens are invalid.
    """
    B, T = k.shape[:2]
    S = num_sinks
    if valid is None:
        valid = torch.ones(B, T, dtype=torch.bool, device=k.device)
    real_index = valid.long().cumsum(1) - 1
    slot = torch.where(valid & (real_index < S), real_index, S)  # S = a discarded overflow slot

    def put(src):
        buffer = src.new_zeros(B, S + 1, *src.shape[2:])
        index = slot.view(B, T, *([1] * (src.dim() - 2))).expand_as(src)
        return buffer.scatter(1, index, src)[:, :S]

    position = torch.arange(T, device=k.device).expand(B, T)
    return Sinks(put(k), put(v), put(position), put(valid))


def window_decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    valid: torch.Tensor,
    ring_k: torch.Tensor,
    ring_v: torch.Tensor,
    ring_valid: torch.Tensor,
    scale: float,
    sinks: Sinks | None = None,
    visible_before: torch.Tensor | None = None,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    extra_visible: torch.Tensor | None = None,
) -> torch.Tensor:
    """One decode step of the window branch, over a ring buffer (shapes fixed, no concatenation).

    The ring holds the ``W - 1`` tokens before the new one, in any slot order (attention does not depend on
    the order of its keys), so the new token sees exactly its window: the ring's valid slots plus itself.

    Args:
        q: ``[B, 1, HQ, D]`` (post-RoPE).
        k, v: the new token's ``[B, 1, H, D]``; ``valid`` ``[B]`` bool.
        ring_k, ring_v: ``[B, L, H, D]``; ``ring_valid`` ``[B, L]`` bool.
        scale: softmax scale.
        sinks: sink keys with ``index`` as absolute token positions.
        visible_before: a sink is visible when ``index < visible_before`` (``t - W + 1`` for the token at
            absolute position ``t``: sinks inside the window are counted once, as window keys). A 0-d long
            tensor, so that the step needs no host value.
        extra_k, extra_v: ``[B, E, H, D]`` further keys (the global cache), ``extra_visible`` ``[B, E, H]`` bool.

    Returns:
        ``[B, 1, HQ, D]`` in ``q.dtype``.
    """
    B, _, HQ, D = q.shape
    H = k.shape[2]
    qg = q.reshape(B, H, HQ // H, D)
    scores = [torch.einsum("bhgd,bhd->bhg", qg, k[:, 0])[..., None] * scale]
    masks = [valid[:, None, None, None]]
    values = [v]
    eqs = ["bhgs,bshd->bhgd"]
    if ring_k.shape[1]:
        scores.append(torch.einsum("bhgd,blhd->bhgl", qg, ring_k.to(q.dtype)) * scale)
        masks.append(ring_valid[:, None, None, :])
        values.append(ring_v.to(v.dtype))
        eqs.append("bhgl,blhd->bhgd")
    if sinks is not None:
        scores.append(torch.einsum("bhgd,bshd->bhgs", qg, sinks.k.to(q.dtype)) * scale)
        visible = sinks.valid & (sinks.index < visible_before)  # [B, S]
        masks.append(visible[:, None, None, :])
        values.append(sinks.v.to(v.dtype))
        eqs.append("bhgs,bshd->bhgd")
    if extra_k is not None:
        scores.append(torch.einsum("bhgd,behd->bhge", qg, extra_k.to(q.dtype)) * scale)
        masks.append(extra_visible.permute(0, 2, 1)[:, :, None, :])  # [B,H,1,E]
        values.append(extra_v.to(v.dtype))
        eqs.append("bhge,behd->bhgd")
    out = _masked_softmax_av(scores, masks, values, eqs)
    return out.reshape(B, 1, HQ, D).to(q.dtype)


def window_block_indices(Tq: int, Tk: int, num_sinks: int, window_size: int, block_size: int, device):
    """Which key blocks each query block can see (for a FlexAttention ``BlockMask``), computed from block
    indices alone: O((T / block)²) integers, never a per-token mask.

    Keys are ``num_sinks`` sink keys followed by the ``Tk`` window keys; query ``i`` sits at window-key index
    ``p = i + Tk - Tq`` and sees window keys ``p - W + 1 .. p`` and any sink.

    Returns:
        ``(kv_num_blocks [nq], kv_indices [nq, nk])`` as int32 (listed blocks first, in increasing order).
    """
    S, W, bs = num_sinks, window_size, block_size
    nq, nk = -(-Tq // bs), -(-(S + Tk) // bs)
    q_first = torch.arange(nq, device=device) * bs
    q_last = torch.clamp(q_first + bs, max=Tq) - 1
    offset = Tk - Tq + S  # key index of query 0's own key
    lo = torch.clamp(q_first + offset - W + 1, min=0) // bs
    hi = (q_last + offset) // bs
    kb = torch.arange(nk, device=device)
    needed = (kb[None, :] >= lo[:, None]) & (kb[None, :] <= hi[:, None])
    if S:
        needed |= kb[None, :] <= (S - 1) // bs
    num = needed.sum(-1).to(torch.int32)
    order = torch.argsort(needed.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return num, order


def window_block_mask(B: int, Tq: int, Tk: int, window_size: int, key_valid: torch.Tensor | None,
                      sinks: Sinks | None, block_size: int, device):
    """The FlexAttention ``BlockMask`` of :func:`flex_window_attention`: keys are the sinks (if any)
    followed by the ``Tk`` window keys; the block lists come from :func:`window_block_indices`."""
    W, S = window_size, (sinks.k.shape[1] if sinks is not None else 0)
    offset = Tk - Tq
    structure = _block_structure(Tq, Tk, S, W, block_size, torch.device(device))
    block_mask = copy.copy(structure)
    if key_valid is None and not S:
        # no padding, no sinks (training on packed sequences): the rule needs no per-key table
        def band(b, h, q_idx, kv_idx):
            p = q_idx + offset
            return (kv_idx <= p) & (kv_idx > p - W)

        block_mask.mask_mod = band
        return block_mask
    if key_valid is None:
        key_valid = torch.ones(B, Tk, dtype=torch.bool, device=device)
    position = torch.arange(Tk, device=device).expand(B, Tk)
    if S:
        key_valid = torch.cat([sinks.valid, key_valid], dim=1)
        position = torch.cat([sinks.index.to(position.dtype), position], dim=1)
    # per-key tables padded to whole blocks, so mask_mod never reads past their end
    pad = structure.kv_indices.shape[-1] * block_size - (S + Tk)
    key_valid = F.pad(key_valid, (0, pad))
    position = F.pad(position, (0, pad))

    def mask_mod(b, h, q_idx, kv_idx):
        p = q_idx + offset
        pos = position[b, kv_idx]
        is_sink = kv_idx < S
        in_window = (pos <= p) & (pos > p - W)
        visible = key_valid[b, kv_idx] & torch.where(is_sink, pos <= p - W, in_window)
        return visible | (~is_sink & (pos == p))

    block_mask.mask_mod = mask_mod
    return block_mask


@functools.lru_cache(maxsize=64)
def _block_structure(Tq: int, Tk: int, S: int, W: int, block_size: int, device: torch.device):
    """The block lists of a window mask (they depend on sizes only; every layer and step with the same sizes
    shares them), as a ``BlockMask`` whose ``mask_mod`` the caller replaces."""
    from torch.nn.attention.flex_attention import BlockMask

    num, order = window_block_indices(Tq, Tk, S, W, block_size, device)
    return BlockMask.from_kv_blocks(num[None, None], order[None, None], BLOCK_SIZE=block_size,
                                    seq_lengths=(Tq, S + Tk))


def flex_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: int,
    scale: float,
    key_valid: torch.Tensor | None = None,
    sinks: Sinks | None = None,
    block_size: int = 128,
    kernel=None,
) -> torch.Tensor:
    """:func:`naive_window_attention` through FlexAttention (same arguments and results on real rows).

    The block mask lists, per block of ``block_size`` queries, the key blocks its windows (and the sinks)
    can reach; the ``mask_mod`` applies the exact per-token rule inside them, with padding. A query always
    sees its own key, so a padding query gets a finite output (its own value) instead of the reference's
    zeros: outputs at padding positions are never read.

    Args:
        kernel: the ``flex_attention`` callable (``torch.compile(flex_attention)`` on CUDA). Default: the
            eager one (slow, dense: for tests).
    """
    from torch.nn.attention.flex_attention import flex_attention

    B, Tq, HQ, D = q.shape
    Tk, H = k.shape[1], k.shape[2]
    if sinks is not None and sinks.k.shape[1]:
        k = torch.cat([sinks.k.to(k.dtype), k], dim=1)
        v = torch.cat([sinks.v.to(v.dtype), v], dim=1)
    block_mask = window_block_mask(B, Tq, Tk, window_size, key_valid, sinks, block_size, q.device)
    kernel = kernel or flex_attention
    out = kernel(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask, scale=scale,
                 enable_gqa=HQ != H)
    return out.transpose(1, 2).to(q.dtype)


def _flex_attention(*args, **kwargs):
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(*args, **kwargs)


class FlexUnavailable(RuntimeError):
    pass


def _no_flex(*args, **kwargs):
    # eager FlexAttention materialises every score: never a fallback for long sequences
    raise FlexUnavailable("FlexAttention could not be compiled")


_compiled_flex = CompiledOrEager(_flex_attention, "flex_attention", fallback=_no_flex, dynamic=True)


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: int,
    scale: float,
    key_valid: torch.Tensor | None = None,
    sinks: Sinks | None = None,
    backend: str = "torch",
    extra: ExtraKeys | None = None,
) -> torch.Tensor:
    """Dispatch: ``"torch"`` = :func:`window_attention` (any device); ``"triton"`` =
    :func:`liger.models.triton_window.triton_window_attention` (CUDA; the CUDA default without sinks and
    global cache; with them, the window in the kernels and the few outside keys merged in PyTorch through the
    log-sum-exp); ``"sdpa"`` = :func:`sdpa_window_attention` (fused SDPA blocks; the CUDA default with sinks or
    a global cache); ``"flex"`` = compiled :func:`flex_window_attention` (CUDA). If FlexAttention cannot be
    compiled here, a warning is logged once and the torch op is used from then on (eager FlexAttention would
    materialise every score). ``extra`` keys (the global cache) run on ``"sdpa"`` where ``"flex"`` is asked
    for."""
    if backend == "triton":
        if triton_supports(q, k, v):
            return triton_window_attention(q, k, v, window_size, scale, key_valid, sinks, extra)
        backend = "sdpa"  # tensors too large for the kernels' 32-bit indexing, or head dims above 256
    if extra is not None:
        if backend in ("flex", "sdpa"):
            return sdpa_window_attention(q, k, v, window_size, scale, key_valid, sinks, extra.block_size, extra)
        return window_attention(q, k, v, window_size, scale, key_valid, sinks, extra.block_size, extra)
    if backend == "sdpa":
        return sdpa_window_attention(q, k, v, window_size, scale, key_valid, sinks)
    if backend == "flex" and not _compiled_flex.failed:
        try:
            return flex_window_attention(q, k, v, window_size, scale, key_valid, sinks, kernel=_compiled_flex)
        except FlexUnavailable:
            pass
    return window_attention(q, k, v, window_size, scale, key_valid, sinks)
