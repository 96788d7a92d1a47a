"""A bounded global cache of the tokens the recurrent state recalls worst (after LoLA, arXiv 2505.23666).

Per layer and KV head, up to ``G = global_cache_size`` past tokens keep their post-RoPE key and value and are
attended by the window branch's softmax, beside the window and the sinks. A token competes for a place once it
leaves the window: token ``i`` is scored after query ``i + W - 1`` (the last one whose window holds it), by its
**self-recall error**

    e_i = ‖v_i − read(S_{i+W-1}, k_i)‖₂

where ``read(S, k)`` is the variant's readout of the state with the token's own raw key as the query, normalised
(``φ(k)S / φ(k)·z`` for the generic recurrences, see ``Recurrence.recall``): what the state returns for this
key, against what was written. Token ``i`` is visible to query ``t >= i + W`` while it is among the ``G``
highest-scoring tokens that have left the window by ``t`` (ties: the earlier token wins); once out-ranked it is
gone for good. Padding and sink tokens never compete (sinks are always visible anyway).

Liger's recurrence holds every token, the window's included, so nothing is taken out of the state: the cache
is exact softmax memory beside it for what the state blurs (LoLA, built on LoLCATs' window + linear split,
moves cached tokens out of its state instead). Decoding memory is ``G`` keys/values per KV head, whatever the
context length.

Three forms, tested against each other:

* :func:`naive_visibility`: for every query, the sorted top-``G`` of the tokens that have left its window —
  the specification (a Python loop over queries).
* :func:`block_visibility`: the same sets for queries in blocks, as the window ops consume them. A token's
  membership changes only when a better one arrives, so for a block of ``bq`` queries the members are the
  block's starting top-``G`` (``base``) plus the ``bq`` tokens that leave the window during the block, and a
  candidate ``x`` is visible to query ``t`` iff it has left the window and fewer than ``G`` of the candidates
  that have left by ``t`` beat it (no other past token can beat a base member). Starting sets come from one sort
  of all scores and a prefix count, so nothing loops over time.
* :func:`merge_leaver_`: the decode step's in-place update (the new leaver replaces the worst member if it
  beats it), fixed shapes and no host synchronisation, for CUDA graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ExtraKeys:
    """Keys attended by each block of queries besides its window (the global cache, per KV head).

    k, v: ``[B, nb, E, H, D]`` (E keys per block of ``block_size`` queries); visible: ``[B, nb, H, bq, E]`` bool,
    which query of the block sees which key, per KV head.
    """

    k: torch.Tensor
    v: torch.Tensor
    visible: torch.Tensor
    block_size: int


def recall_error(v: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    """``‖v − read‖₂`` over the value channels, in float32 at least: ``[B, T, H, V]`` -> ``[B, T, H]``."""
    dtype = torch.promote_types(torch.promote_types(v.dtype, read.dtype), torch.float32)
    return (v.to(dtype) - read.to(dtype)).norm(dim=-1)


def pooled_scores(errors: torch.Tensor, pool: int) -> torch.Tensor:
    """``global_cache_pool``: the scores of consecutive leavers from their self-recall errors.

    ``errors`` ``[B, 2P + N, H]`` are the errors of consecutive tokens that left the window, oldest first (−inf
    for padding and sinks); candidate ``i`` (of N) is token ``P + i``, scored by the largest error among
    tokens ``i .. i + 2P`` — itself, the P before and the P after — or −inf if it does not compete itself.
    Returns ``[B, N, H]``. The prefill and the decode step (N = 1) both score through this.
    """
    N = errors.shape[1] - 2 * pool
    window_max = F.max_pool1d(errors.transpose(1, 2), 2 * pool + 1, stride=1).transpose(1, 2)
    return torch.where(errors[:, pool:pool + N] > float("-inf"), window_max, float("-inf"))


def _beats(score_a, index_a, score_b, index_b):
    """Whether a beats b: a higher score, or the same score and an earlier token."""
    return (score_a > score_b) | ((score_a == score_b) & (index_a < index_b))


def naive_visibility(score: torch.Tensor, index: torch.Tensor, entry: torch.Tensor, size: int,
                     num_queries: int) -> torch.Tensor:
    """Reference: ``visible[b, h, t, x]`` = candidate ``x`` is among the ``size`` best candidates with
    ``entry <= t`` (and a finite score).

    Args:
        score: ``[B, H, N]`` float (``-inf`` = never a member).
        index: ``[B, H, N]`` long, distinct absolute token indices (the tie-break: earlier wins).
        entry: ``[N]`` long, the first query that may see each candidate.
        size: ``G``.
        num_queries: ``Tq``.

    Returns:
        ``[B, H, Tq, N]`` bool.
    """
    B, H, N = score.shape
    visible = torch.zeros(B, H, num_queries, N, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for t in range(num_queries):
                entered = [x for x in range(N) if entry[x] <= t and score[b, h, x] > float("-inf")]
                entered.sort(key=lambda x: (-float(score[b, h, x]), int(index[b, h, x])))
                for x in entered[:size]:
                    visible[b, h, t, x] = True
    return visible


@dataclass
class Selection:
    """What :func:`block_visibility` returns.

    base: ``[B, H, nb, G]`` long, the members at each block's first query (candidate indices in ``[0, N)``,
    or ``N`` for an empty slot), in rank order; visible_base ``[B, H, nb, bq, G]``; visible_entrants
    ``[B, H, nb, bq, bq]`` (the candidates ``P + n·bq + j`` that leave the window during block ``n``);
    final: ``[B, H, G]`` the members after the last candidate (the cache to keep), ``final_valid`` ``[B, H, G]``.
    """

    base: torch.Tensor
    visible_base: torch.Tensor
    visible_entrants: torch.Tensor
    final: torch.Tensor
    final_valid: torch.Tensor


def block_visibility(score: torch.Tensor, index: torch.Tensor, num_previous: int, size: int, block_size: int,
                     max_elements: int = 1 << 24) -> Selection:
    """:func:`naive_visibility` for blocks of queries, with the candidates laid out as the layer produces them.

    Candidates are ``num_previous = P`` members of an earlier cache (entry 0: visible from the first query)
    followed by one candidate per query position ``q`` (the token that leaves the window after query ``q``,
    entry ``q + 1``); ``score``/``index`` ``[B, H, P + nb·bq]`` (pad the positions past the last query with
    ``-inf`` scores).

    Args:
        size: ``G``; block_size: ``bq`` queries per block; max_elements: bound on the ``[nb, N]`` prefix-count
            tensor per step (blocks are processed in groups under it).
    """
    B, H, N = score.shape
    P, G, bq = num_previous, size, block_size
    nb = (N - P) // bq
    if nb * bq != N - P:
        raise ValueError(f"{N - P} positional candidates are not a whole number of blocks of {bq}")
    device = score.device
    score = torch.where(score.isnan(), float("-inf"), score)
    finite = score > float("-inf")
    # one order for everything: by score (descending), ties by index (ascending); candidates are laid out in
    # index order (earlier caches' members first, sorted by their indices below), so a stable sort keeps ties right
    prev_order = index[..., :P].argsort(-1)
    order0 = torch.cat([prev_order, torch.arange(P, N, device=device).expand(B, H, N - P)], -1)
    score0 = score.gather(-1, order0)
    sorted_score, perm = torch.sort(score0, dim=-1, descending=True, stable=True)
    perm = order0.gather(-1, perm)  # [B, H, N] candidate at each sorted position
    pos = torch.empty_like(perm).scatter_(-1, perm, torch.arange(N, device=device).expand(B, H, N))
    entry = torch.cat([torch.zeros(P, dtype=torch.long, device=device),
                       torch.arange(1, N - P + 1, device=device)])
    entry_sorted = entry[perm]  # [B, H, N]
    ok_sorted = sorted_score > float("-inf")

    # the members at each block's first query: the first G finite candidates (in sorted order) entered by n·bq
    base = torch.empty(B, H, nb, G, dtype=torch.long, device=device)
    group = max(1, max_elements // max(1, B * H * N))
    for start in range(0, nb, group):
        n = torch.arange(start, min(nb, start + group), device=device)
        entered = (entry_sorted[:, :, None, :] <= (n * bq)[:, None]) & ok_sorted[:, :, None, :]  # [B,H,g,N]
        rank = entered.cumsum(-1, dtype=torch.int32)
        slot = torch.where(entered & (rank <= G), rank.long() - 1, G)
        members = torch.full((B, H, len(n), G + 1), N, dtype=torch.long, device=device)
        members.scatter_(-1, slot, perm[:, :, None, :].expand_as(slot))
        base[:, :, start:start + len(n)] = members[..., :G]

    big = torch.full((B, H, 1), N + 1, dtype=torch.long, device=device)
    pos_ext = torch.cat([pos, big], -1)  # the empty slot N sorts after everything
    pos_base = pos_ext.gather(-1, base.flatten(2)).view(B, H, nb, G)
    filled = base < N
    pos_e = pos[..., P:].view(B, H, nb, bq)
    ok_e = finite[..., P:].view(B, H, nb, bq)

    def before(x):
        # exclusive cumulative sum over the entrants axis (-2): entrants j' < i have entered by query i
        c = x.cumsum(-2, dtype=torch.int32)
        return torch.cat([torch.zeros_like(c[..., :1, :]), c[..., :-1, :]], -2)

    rank_base = torch.arange(G, device=device, dtype=torch.int32)
    beat_eb = pos_e[..., :, None] < pos_base[..., None, :]  # [B,H,nb,bq(j'),G]
    visible_base = filled[..., None, :] & (rank_base + before(beat_eb) < G)  # [B,H,nb,bq(i),G]
    from_base = ((pos_base[..., :, None] < pos_e[..., None, :]) & filled[..., :, None]).sum(-2, dtype=torch.int32)
    beat_ee = pos_e[..., :, None] < pos_e[..., None, :]  # [B,H,nb,bq(j'),bq(j)]
    i = torch.arange(bq, device=device)
    visible_entrants = ((i[None, :] < i[:, None]) & ok_e[..., None, :]
                        & (from_base[..., None, :] + before(beat_ee) < G))  # [B,H,nb,bq(i),bq(j)]

    final = perm[..., :G]
    final_valid = ok_sorted[..., :G]
    if final.shape[-1] < G:  # fewer candidates than places
        pad = G - final.shape[-1]
        final = torch.cat([final, final.new_full((B, H, pad), N)], -1)
        final_valid = torch.cat([final_valid, final_valid.new_zeros(B, H, pad)], -1)
    return Selection(base, visible_base, visible_entrants, final, final_valid)


def merge_leaver_(k_buf, v_buf, score_buf, index_buf, k, v, score, index) -> None:
    """One decode step of the cache, in place: the token leaving the window replaces the worst member if it
    beats it (it is the newest token, so on a tie the member stays). Fixed shapes, no host synchronisation.

    Args:
        k_buf, v_buf: ``[B, G, H, D]``; score_buf ``[B, G, H]`` float32 (``-inf`` = empty); index_buf
            ``[B, G, H]`` long.
        k, v: the leaver's ``[B, H, D]``; score ``[B, H]`` (``-inf`` = it does not compete); index ``[B]`` long.
    """
    G = score_buf.shape[1]
    worst_score = score_buf.amin(1)  # [B, H]
    # the worst member: lowest score, and among equal scores the latest token
    is_min = score_buf == worst_score[:, None]
    worst = torch.where(is_min, index_buf, torch.iinfo(index_buf.dtype).min).argmax(1)  # [B, H]
    replace = score > worst_score
    take = (torch.arange(G, device=score_buf.device)[None, :, None] == worst[:, None, :]) & replace[:, None, :]
    k_buf.copy_(torch.where(take[..., None], k[:, None].to(k_buf.dtype), k_buf))
    v_buf.copy_(torch.where(take[..., None], v[:, None].to(v_buf.dtype), v_buf))
    score_buf.copy_(torch.where(take, score[:, None].to(score_buf.dtype), score_buf))
    index_buf.copy_(torch.where(take, index[:, None, None].expand_as(index_buf), index_buf))
