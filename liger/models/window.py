"""Sliding-window softmax attention with optional attention sinks, in pure PyTorch.

The queries are the last ``Tq`` positions of a key sequence of length ``Tk >= Tq`` (a decode step sees
the cached window followed by its own key). The query at key index ``p`` attends to

* the keys at indices ``p - W + 1 .. p`` (exactly ``W = window_size`` keys, the current one included)
  whose ``key_valid`` flag is set, and
* the sink keys whose flag is set and whose index is ``<= p - W`` (a sink already inside the window is
  counted once, as a window key).

``naive_window_attention`` builds the dense ``[Tq, Tk]`` mask and is the reference.
``window_attention`` cuts the queries into blocks and gives each block only the ``block + W - 1`` keys it
can see, so memory is ``O(T · W)`` and no ``T × T`` mask is ever built.
Both take grouped-query inputs (``HQ`` query heads over ``H`` key/value heads) without repeating K/V.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
) -> torch.Tensor:
    """Dense reference: the full ``[Tq, Tk]`` score matrix under the window/sink mask.

    Args:
        q: ``[B, Tq, HQ, D]``.
        k, v: ``[B, Tk, H, D]``, ``Tk >= Tq``; ``HQ`` a multiple of ``H``.
        window_size: ``W``, keys per query including itself.
        scale: softmax scale (the teacher's, ``1/sqrt(D)`` for Llama).
        key_valid: ``[B, Tk]`` bool; False marks padding. Default: all valid.
        sinks: optional :class:`Sinks`.

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
    out = _masked_softmax_av(scores, masks, values, eqs)
    return out.reshape(B, Tq, HQ, D).to(q.dtype)


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: int,
    scale: float,
    key_valid: torch.Tensor | None = None,
    sinks: Sinks | None = None,
    block_size: int = 64,
) -> torch.Tensor:
    """Banded form of :func:`naive_window_attention` (same arguments and results).

    Queries are processed in blocks of ``block_size``; each block scores only the ``block_size + W - 1``
    keys that can fall in its windows, so time and memory are linear in the sequence length.
    """
    B, Tq, HQ, D = q.shape
    Tk, H = k.shape[1], k.shape[2]
    G = HQ // H
    W = window_size
    L = Tk - Tq
    bq = max(1, min(block_size, Tq))
    nb = -(-Tq // bq)
    span = bq + W - 1
    if key_valid is None:
        key_valid = torch.ones(B, Tk, dtype=torch.bool, device=q.device)

    def key_blocks(x):
        # [B, Tk, ...] -> [B, nb, ..., span]: the keys each query block can see (zero/False padded)
        pad_right = nb * bq - Tq
        widths = (0, 0) * (x.dim() - 2) + (W - 1, pad_right)
        x = torch.nn.functional.pad(x, widths)[:, L:]
        return x.unfold(1, span, bq)

    kb, vb = key_blocks(k), key_blocks(v)  # [B, nb, H, D, span]
    valid_b = key_blocks(key_valid)  # [B, nb, span]
    qq = torch.arange(bq, device=q.device)[:, None]
    jj = torch.arange(span, device=q.device)[None, :]
    band = (jj >= qq) & (jj <= qq + W - 1)  # [bq, span]
    mask = band[None, None, None, None] & valid_b[:, None, None, :, None, :]  # [B,1,1,nb,bq,span]

    qpad = torch.nn.functional.pad(q, (0, 0, 0, 0, 0, nb * bq - Tq)).reshape(B, nb, bq, H, G, D)
    scores = [torch.einsum("bnqhgd,bnhdj->bhgnqj", qpad, kb) * scale]
    masks, values, eqs = [mask], [vb], ["bhgnqj,bnhdj->bnqhgd"]
    if sinks is not None:
        p = L + torch.arange(nb * bq, device=q.device).reshape(nb, bq)
        visible = sinks.valid[:, None, None, :] & (sinks.index[:, None, None, :] <= p[None, :, :, None] - W)
        scores.append(torch.einsum("bnqhgd,bshd->bhgnqs", qpad, sinks.k) * scale)
        masks.append(visible[:, None, None])  # [B,1,1,nb,bq,S]
        values.append(sinks.v)
        eqs.append("bhgnqs,bshd->bnqhgd")
    out = _masked_softmax_av(scores, masks, values, eqs)
    return out.reshape(B, nb * bq, HQ, D)[:, :Tq].to(q.dtype)
