"""LigerCache: constant-size decoding state of a Liger model.

Per Liger layer it holds (:class:`LayerBuffers`, one bundle that the static decode step takes whole)
* the recurrent state of the linear branch (a tuple of float32 tensors, once per KV head);
* the post-RoPE keys/values of the last ``L = window_size - 1`` tokens, which is all the window branch of
  the next token can see besides itself, in a **ring buffer**: token ``i`` (counted from the start, padding
  included) lives in slot ``i % L``, with a validity flag per slot;
* when ``num_sink_tokens > 0``, the post-RoPE keys/values of the first real tokens of each sequence and
  their positions;
* when ``global_cache_size > 0``, the global cache (``global_cache.py``): up to G tokens per KV head that have
  left the window, with their keys/values, scores and positions, and the ring's pre-RoPE keys (what a token
  leaving the window is scored with).
Layers kept as full softmax attention use a standard growing ``DynamicLayer``.

The cache layer owns the window geometry: the decode step reads ``W - 1``, the number of sinks and the global
cache's size from its buffers' shapes. Every tensor is allocated once (on the first forward) and later written in
place, so its address never changes: the single-token decode step has fixed shapes, no host synchronisation and
no allocation that outlives it, and can be captured in a CUDA graph. Multi-token calls (prefill) read the ring in
time order (:meth:`LigerLayerCache.window_inputs`) and write it back (:meth:`LigerLayerCache.commit`).

Positions are token counts: ``seen`` counts every token fed so far (padding included, like
``DynamicCache.get_seq_length``); ``seen_t`` is the same count as a device tensor, read by the decode step;
each sequence's count of real tokens (``real_seen``) places its sinks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .window import Sinks


class LayerBuffers(NamedTuple):
    """The tensors of one Liger layer's cache (a pytree: it compiles and graphs as one argument).

    Shapes: ring ``[B, L, H, D]`` / ``[B, L]``, sinks ``[B, S, H, D]`` / ``[B, S]``, global cache ``[B, G, H, D]``
    / ``[B, G, H]``; ``real_seen`` ``[B]``, ``seen_t`` 0-d (long). With ``global_cache_pool`` P > 0, the P tokens
    that left the window and await their decision (``global_pend_k``/``_v`` ``[B, P, H, D]``, oldest first) and
    the self-recall errors of the last 2P tokens that left it (``global_recent`` ``[B, 2P, H]``, oldest first,
    −inf for padding and sinks). Optional parts are None when off.
    """

    state: tuple[torch.Tensor, ...] | None
    ring_k: torch.Tensor
    ring_v: torch.Tensor
    ring_valid: torch.Tensor
    real_seen: torch.Tensor
    seen_t: torch.Tensor
    sink_k: torch.Tensor | None = None
    sink_v: torch.Tensor | None = None
    sink_pos: torch.Tensor | None = None
    sink_valid: torch.Tensor | None = None
    ring_k_lin: torch.Tensor | None = None
    global_k: torch.Tensor | None = None
    global_v: torch.Tensor | None = None
    global_score: torch.Tensor | None = None
    global_index: torch.Tensor | None = None
    global_pend_k: torch.Tensor | None = None
    global_pend_v: torch.Tensor | None = None
    global_recent: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the bundle (the state's included), in a fixed order."""
        out = [t for name, t in self._asdict().items() if name != "state" and t is not None]
        return out + list(self.state or ())

    def sinks(self) -> Sinks | None:
        """The sinks with absolute positions as their index (None without sinks)."""
        return Sinks(self.sink_k, self.sink_v, self.sink_pos, self.sink_valid) if self.sink_k is not None else None


def write_decoded_token(buffers: LayerBuffers, k: torch.Tensor, v: torch.Tensor, k_lin: torch.Tensor | None,
                        valid: torch.Tensor) -> None:
    """Write one decoded token into a layer's buffers, in place, with no host synchronisation.

    Args:
        buffers: a :class:`LigerLayerCache`'s buffers.
        k, v: post-RoPE key and value of the new token, ``[B, 1, H, D]``; ``k_lin`` its pre-RoPE key (kept in
            the ring when there is a global cache).
        valid: ``[B]`` bool, False for a padding token.
    """
    b = buffers
    L = b.ring_k.shape[1]
    k, v = k.detach(), v.detach()
    if L:
        slot = torch.remainder(b.seen_t, L).view(1)
        b.ring_k.index_copy_(1, slot, k.to(b.ring_k.dtype))
        b.ring_v.index_copy_(1, slot, v.to(b.ring_v.dtype))
        b.ring_valid.index_copy_(1, slot, valid[:, None])
        if b.ring_k_lin is not None:
            b.ring_k_lin.index_copy_(1, slot, k_lin.detach().to(b.ring_k_lin.dtype))
    if b.sink_k is not None:
        # the token becomes sink number real_seen[b] while that is < S
        S = b.sink_k.shape[1]
        take = (torch.arange(S, device=k.device) == b.real_seen[:, None]) & valid[:, None]  # [B, S]
        b.sink_k.copy_(torch.where(take[:, :, None, None], k.to(b.sink_k.dtype), b.sink_k))
        b.sink_v.copy_(torch.where(take[:, :, None, None], v.to(b.sink_v.dtype), b.sink_v))
        b.sink_pos.copy_(torch.where(take, b.seen_t, b.sink_pos))
        b.sink_valid.logical_or_(take)
    b.real_seen.add_(valid.long())
    b.seen_t.add_(1)


class LigerLayerCache:
    """The cache of one Liger layer (see module docstring)."""

    is_compileable = False
    is_croppable = False
    is_sliding = False
    supports_early_init = False

    def __init__(self, window_size: int, num_sink_tokens: int, global_cache_size: int = 0, global_cache_pool: int = 0):
        self.window_size = window_size
        self.global_cache_pool = global_cache_pool
        self.num_sink_tokens = num_sink_tokens
        self.global_cache_size = global_cache_size
        self.seen = 0
        self.buffers: LayerBuffers | None = None
        self.version = 0
        """Bumped whenever a buffer is replaced by a new tensor (e.g. a batch-size change), which invalidates
        anything that captured the old addresses (a CUDA graph)."""

    @property
    def is_initialized(self) -> bool:
        return self.buffers is not None

    @property
    def state(self) -> tuple[torch.Tensor, ...] | None:
        return self.buffers.state if self.buffers is not None else None

    @property
    def ring_size(self) -> int:
        return self.window_size - 1

    def _lazy_init(self, k: torch.Tensor, v: torch.Tensor) -> None:
        B, _, H, D = k.shape
        L, S, G = self.ring_size, self.num_sink_tokens, self.global_cache_size
        device = k.device
        extra = {}
        if S:
            extra.update(sink_k=k.new_zeros(B, S, H, D), sink_v=v.new_zeros(B, S, H, v.shape[-1]),
                         sink_pos=torch.zeros(B, S, dtype=torch.long, device=device),
                         sink_valid=torch.zeros(B, S, dtype=torch.bool, device=device))
        if G:
            extra.update(ring_k_lin=k.new_zeros(B, L, H, D), global_k=k.new_zeros(B, G, H, D),
                         global_v=v.new_zeros(B, G, H, v.shape[-1]),
                         global_score=torch.full((B, G, H), float("-inf"), device=device,
                                                 dtype=torch.promote_types(k.dtype, torch.float32)),
                         global_index=torch.full((B, G, H), -1, dtype=torch.long, device=device))
            P = self.global_cache_pool
            if P:
                extra.update(global_pend_k=k.new_zeros(B, P, H, D), global_pend_v=v.new_zeros(B, P, H, v.shape[-1]),
                             global_recent=torch.full((B, 2 * P, H), float("-inf"), device=device,
                                                      dtype=extra["global_score"].dtype))
        self.buffers = LayerBuffers(
            state=None, ring_k=k.new_zeros(B, L, H, D), ring_v=v.new_zeros(B, L, H, v.shape[-1]),
            ring_valid=torch.zeros(B, L, dtype=torch.bool, device=device),
            real_seen=torch.zeros(B, dtype=torch.long, device=device),
            seen_t=torch.full((), self.seen, dtype=torch.long, device=device), **extra)

    def _in_time_order(self, ring: torch.Tensor) -> torch.Tensor:
        # slot (seen + j) % L holds the j-th oldest of the last L tokens (already in order at a multiple of L, e.g.
        # an empty cache's first prefill: no copy then)
        shift = self.seen % self.ring_size if self.ring_size else 0
        return ring.roll(-shift, dims=1) if shift else ring

    def window_inputs(self, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor):
        """What the window branch attends over for the new tokens ``k``, ``v`` ``[B, T, H, D]``.

        Returns ``(keys, values, key_valid, sinks)``: the cached window in time order followed by the new
        tokens, and the sinks (the first ``num_sink_tokens`` real tokens of each sequence, new ones included)
        with their positions relative to ``keys[:, 0]``. Nothing is stored: :meth:`commit` does that.
        """
        if not self.is_initialized:
            self._lazy_init(k, v)
        b = self.buffers
        keys = torch.cat([self._in_time_order(b.ring_k).to(k.dtype), k], dim=1)
        values = torch.cat([self._in_time_order(b.ring_v).to(v.dtype), v], dim=1)
        key_valid = torch.cat([self._in_time_order(b.ring_valid), valid], dim=1)
        sinks = self._sinks_with(k, v, valid) if self.num_sink_tokens else None
        return keys, values, key_valid, sinks

    def ring_k_lin(self) -> torch.Tensor:
        """The pre-RoPE keys of the ring in time order (global cache only), ``[B, L, H, D]``."""
        return self._in_time_order(self.buffers.ring_k_lin)

    def global_members(self):
        """The global cache's members ``(k, v, score, index)``: ``[B, G, H, D]`` twice, ``[B, G, H]`` twice."""
        b = self.buffers
        return b.global_k, b.global_v, b.global_score, b.global_index

    def global_pending(self):
        """``(pend_k, pend_v, recent)`` of ``global_cache_pool`` (see :class:`LayerBuffers`), None without it."""
        b = self.buffers
        return None if b.global_recent is None else (b.global_pend_k, b.global_pend_v, b.global_recent)

    def _sinks_with(self, k, v, valid) -> Sinks:
        B, T = valid.shape
        b, S = self.buffers, self.num_sink_tokens
        real_index = b.real_seen[:, None] + valid.long().cumsum(1) - 1  # [B, T]
        slot = torch.where(valid & (real_index < S), real_index, S)  # S = a discarded overflow slot
        start = self.seen - self.ring_size  # absolute position of keys[:, 0]
        position = self.seen - start + torch.arange(T, device=k.device).expand(B, T)

        def put(buffer, src):
            extra = buffer.new_zeros(B, 1, *buffer.shape[2:])
            buffer = torch.cat([buffer, extra], 1).to(src.dtype)
            index = slot.view(B, T, *([1] * (src.dim() - 2))).expand_as(src)
            return buffer.scatter(1, index, src)[:, :S]

        return Sinks(put(b.sink_k, k), put(b.sink_v, v), put(b.sink_pos - start, position),
                     put(b.sink_valid, valid))

    def commit(self, keys, values, key_valid, sinks: Sinks | None, state, k_lin=None, members=None) -> None:
        """Store what the next tokens need: the last ``window_size - 1`` keys/values (and pre-RoPE keys
        ``k_lin``, aligned with ``keys``, when there is a global cache), the sinks, the recurrent state, the
        global cache's ``members`` (``(k, v, score, index)`` as :meth:`global_members` returns them) and the
        token counts. ``keys``/``values``/``key_valid``/``sinks`` are :meth:`window_inputs`'s outputs."""
        b = self.buffers
        L = self.ring_size
        T = keys.shape[1] - L
        seen = self.seen + T
        if L:
            # the last L keys in time order are the tokens seen - L .. seen - 1, whose slots start at seen % L
            shift = seen % L
            b.ring_k.copy_(keys[:, T:].detach().roll(shift, dims=1))
            b.ring_v.copy_(values[:, T:].detach().roll(shift, dims=1))
            b.ring_valid.copy_(key_valid[:, T:].roll(shift, dims=1))
            if b.ring_k_lin is not None:
                b.ring_k_lin.copy_(k_lin[:, T:].detach().roll(shift, dims=1))
        if sinks is not None:
            start = self.seen - L
            b.sink_k.copy_(sinks.k.detach())
            b.sink_v.copy_(sinks.v.detach())
            b.sink_pos.copy_(sinks.index + start)
            b.sink_valid.copy_(sinks.valid)
        if members is not None:
            # (k, v, score, index), then with global_cache_pool (pend_k, pend_v, recent)
            pending = self.global_pending() or ()
            for dst, src in zip((*self.global_members(), *pending), members):
                dst.copy_(src.detach())
        if state is not None:
            self._store_state(state)
        b.real_seen.add_(key_valid[:, L:].long().sum(1))
        self.seen = seen
        b.seen_t.fill_(seen)

    def _store_state(self, state) -> None:
        state = tuple(x.detach() for x in state)
        current = self.buffers.state
        if current is None or [x.shape for x in current] != [x.shape for x in state]:
            self.buffers = self.buffers._replace(state=tuple(x.contiguous() for x in state))
            self.version += 1
        else:
            for dst, src in zip(current, state):
                dst.copy_(src)

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor this layer holds (the ones a decode step reads and writes)."""
        return self.buffers.tensors() if self.buffers is not None else []

    def _apply(self, fn, in_place: bool) -> None:
        if self.buffers is None:
            return
        updates = {}
        for name, t in self.buffers._asdict().items():
            if name == "state":
                if t is None:
                    continue
                new_state = tuple(fn(x) for x in t)
                if in_place and all(a.shape == b.shape for a, b in zip(new_state, t)):
                    for dst, src in zip(t, new_state):
                        dst.copy_(src)
                else:
                    updates["state"] = new_state
                continue
            if t is None or t.dim() == 0:
                continue
            new = fn(t)
            if in_place and new.shape == t.shape:
                t.copy_(new)
            else:
                updates[name] = new
        if updates:
            self.buffers = self.buffers._replace(**updates)
            self.version += 1

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        # in place: buffers keep their addresses (a captured decode graph stays valid)
        self._apply(lambda x: x.index_select(0, beam_idx.to(x.device)), in_place=True)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda x: x[indices], in_place=False)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda x: x.repeat_interleave(repeats, dim=0), in_place=False)

    def reset(self) -> None:
        self.__init__(self.window_size, self.num_sink_tokens, self.global_cache_size, self.global_cache_pool)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "a Liger cache cannot be cropped: the recurrent state cannot forget tokens "
            "(assisted/speculative decoding is not supported)"
        )

    def offload(self) -> None:
        pass

    def prefetch(self) -> None:
        pass

    def state_bytes(self) -> int:
        """Bytes held by this layer's cache."""
        return sum(t.numel() * t.element_size() for t in self.tensors())


class LigerCache(Cache):
    """One cache for the whole model: a :class:`LigerLayerCache` per Liger layer, a ``DynamicLayer`` per
    layer kept as full attention."""

    def __init__(self, config):
        full = set(config.full_attention_layers)
        layers = [
            DynamicLayer() if i in full
            else LigerLayerCache(config.window_size, config.num_sink_tokens, config.global_cache_size,
                                 config.global_cache_pool)
            for i in range(config.num_hidden_layers)
        ]
        super().__init__(layers=layers)
        self.decoder = None
        """The CUDA-graph decoder bound to this cache's buffers, once one was built (see ``decoding.py``)."""
        self.capture_failed = False
        """A capture was tried for this cache and failed: it decodes with the uncaptured static step."""

    def drop_decoder(self) -> None:
        """Forget the CUDA-graph decoder, freeing its graph and memory pool now (not at garbage collection)."""
        if self.decoder is not None:
            self.decoder.release()
        self.decoder = None

    @property
    def liger_layers(self) -> list[LigerLayerCache]:
        return [layer for layer in self.layers if isinstance(layer, LigerLayerCache)]

    @property
    def is_static(self) -> bool:
        """True when every layer is a Liger layer (no growing full-attention K/V): the decode step then has
        fixed shapes."""
        return all(isinstance(layer, LigerLayerCache) for layer in self.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        layer = self.layers[layer_idx]
        if isinstance(layer, LigerLayerCache):
            return layer.seen
        return layer.get_seq_length()

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def advance(self, tokens: int = 1) -> None:
        """Advance the host token count of every Liger layer after a static decode step."""
        for layer in self.liger_layers:
            layer.seen += tokens

    def buffers(self) -> list[torch.Tensor]:
        """Every tensor of every Liger layer (what a captured decode step reads and writes)."""
        return [t for layer in self.liger_layers for t in layer.tensors()]

    def signature(self) -> tuple:
        """Addresses, shapes and dtypes of every buffer: equal signatures mean a graph captured against one
        still reads and writes the right memory."""
        return tuple((t.data_ptr(), tuple(t.shape), t.dtype) for t in self.buffers())

    def nbytes(self) -> int:
        """Total bytes held by the cache (recurrent states, windows, sinks and full-attention K/V)."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, LigerLayerCache):
                total += layer.state_bytes()
            elif layer.keys is not None:
                total += layer.keys.numel() * layer.keys.element_size() * 2
        return total
