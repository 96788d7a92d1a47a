"""LigerCache: constant-size decoding state of a Liger model.

Per Liger layer it holds
* the recurrent state of the linear branch (a tuple of float32 tensors, once per KV head);
* the post-RoPE keys/values of the last ``L = window_size - 1`` tokens, which is all the window branch of
  the next token can see besides itself, in a **ring buffer**: token ``i`` (counted from the start, padding
  included) lives in slot ``i % L``, with a validity flag per slot;
* when ``num_sink_tokens > 0``, the post-RoPE keys/values of the first real tokens of each sequence and
  their positions.
Layers kept as full softmax attention use a standard growing ``DynamicLayer``.

Every tensor is allocated once (on the first forward) and later written in place, so its address never
changes: the single-token decode step (:meth:`LigerLayerCache.decode_update`) has fixed shapes, no host
synchronisation and no allocation that outlives it, and can be captured in a CUDA graph. Multi-token calls
(prefill) read the ring in time order (:meth:`window_inputs`) and write it back (:meth:`commit`).

Positions are token counts: ``seen`` counts every token fed so far (padding included, like
``DynamicCache.get_seq_length``); ``seen_t`` is the same count as a device tensor, read by the decode step;
each sequence's count of real tokens (``real_seen``) places its sinks.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .window import Sinks

_BUFFERS = ("ring_k", "ring_v", "ring_valid", "sink_k", "sink_v", "sink_pos", "sink_valid", "real_seen", "seen_t")


def write_decoded_token(ring_k, ring_v, ring_valid, sink_k, sink_v, sink_pos, sink_valid, real_seen, seen_t,
                        k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> None:
    """Write one decoded token into a layer's buffers, in place, with no host synchronisation.

    Args:
        ring_k, ring_v, ring_valid, sink_*, real_seen, seen_t: a :class:`LigerLayerCache`'s buffers (sink
            buffers None without sinks).
        k, v: post-RoPE key and value of the new token, ``[B, 1, H, D]``.
        valid: ``[B]`` bool, False for a padding token.
    """
    L = ring_k.shape[1]
    k, v = k.detach(), v.detach()
    if L:
        slot = torch.remainder(seen_t, L).view(1)
        ring_k.index_copy_(1, slot, k.to(ring_k.dtype))
        ring_v.index_copy_(1, slot, v.to(ring_v.dtype))
        ring_valid.index_copy_(1, slot, valid[:, None])
    if sink_k is not None:
        # the token becomes sink number real_seen[b] while that is < S
        S = sink_k.shape[1]
        take = (torch.arange(S, device=k.device) == real_seen[:, None]) & valid[:, None]  # [B, S]
        sink_k.copy_(torch.where(take[:, :, None, None], k.to(sink_k.dtype), sink_k))
        sink_v.copy_(torch.where(take[:, :, None, None], v.to(sink_v.dtype), sink_v))
        sink_pos.copy_(torch.where(take, seen_t, sink_pos))
        sink_valid.logical_or_(take)
    real_seen.add_(valid.long())
    seen_t.add_(1)


class LigerLayerCache:
    """The cache of one Liger layer (see module docstring)."""

    is_compileable = False
    is_croppable = False
    is_sliding = False
    supports_early_init = False

    def __init__(self, window_size: int, num_sink_tokens: int):
        self.window_size = window_size
        self.num_sink_tokens = num_sink_tokens
        self.seen = 0
        self.state: tuple[torch.Tensor, ...] | None = None
        self.ring_k = self.ring_v = self.ring_valid = None
        self.sink_k = self.sink_v = self.sink_pos = self.sink_valid = None
        self.real_seen: torch.Tensor | None = None
        self.seen_t: torch.Tensor | None = None
        self.version = 0
        """Bumped whenever a buffer is replaced by a new tensor (e.g. a batch-size change), which invalidates
        anything that captured the old addresses (a CUDA graph)."""

    @property
    def is_initialized(self) -> bool:
        return self.ring_k is not None

    @property
    def ring_size(self) -> int:
        return self.window_size - 1

    def _lazy_init(self, k: torch.Tensor, v: torch.Tensor) -> None:
        B, _, H, D = k.shape
        L, S = self.ring_size, self.num_sink_tokens
        self.ring_k = k.new_zeros(B, L, H, D)
        self.ring_v = v.new_zeros(B, L, H, v.shape[-1])
        self.ring_valid = torch.zeros(B, L, dtype=torch.bool, device=k.device)
        self.real_seen = torch.zeros(B, dtype=torch.long, device=k.device)
        self.seen_t = torch.full((), self.seen, dtype=torch.long, device=k.device)
        if S:
            self.sink_k = k.new_zeros(B, S, H, D)
            self.sink_v = v.new_zeros(B, S, H, v.shape[-1])
            self.sink_pos = torch.zeros(B, S, dtype=torch.long, device=k.device)
            self.sink_valid = torch.zeros(B, S, dtype=torch.bool, device=k.device)

    def _in_time_order(self, ring: torch.Tensor) -> torch.Tensor:
        # slot (seen + j) % L holds the j-th oldest of the last L tokens
        return ring.roll(-(self.seen % self.ring_size), dims=1) if self.ring_size else ring

    def window_inputs(self, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor):
        """What the window branch attends over for the new tokens ``k``, ``v`` ``[B, T, H, D]``.

        Returns ``(keys, values, key_valid, sinks)``: the cached window in time order followed by the new
        tokens, and the sinks (the first ``num_sink_tokens`` real tokens of each sequence, new ones included)
        with their positions relative to ``keys[:, 0]``. Nothing is stored: :meth:`commit` does that.
        """
        if not self.is_initialized:
            self._lazy_init(k, v)
        keys = torch.cat([self._in_time_order(self.ring_k).to(k.dtype), k], dim=1)
        values = torch.cat([self._in_time_order(self.ring_v).to(v.dtype), v], dim=1)
        key_valid = torch.cat([self._in_time_order(self.ring_valid), valid], dim=1)
        sinks = self._sinks_with(k, v, valid) if self.num_sink_tokens else None
        return keys, values, key_valid, sinks

    def _sinks_with(self, k, v, valid) -> Sinks:
        B, T = valid.shape
        S = self.num_sink_tokens
        real_index = self.real_seen[:, None] + valid.long().cumsum(1) - 1  # [B, T]
        slot = torch.where(valid & (real_index < S), real_index, S)  # S = a discarded overflow slot
        start = self.seen - self.ring_size  # absolute position of keys[:, 0]
        position = self.seen - start + torch.arange(T, device=k.device).expand(B, T)

        def put(buffer, src):
            extra = buffer.new_zeros(B, 1, *buffer.shape[2:])
            buffer = torch.cat([buffer, extra], 1).to(src.dtype)
            index = slot.view(B, T, *([1] * (src.dim() - 2))).expand_as(src)
            return buffer.scatter(1, index, src)[:, :S]

        return Sinks(put(self.sink_k, k), put(self.sink_v, v), put(self.sink_pos - start, position),
                     put(self.sink_valid, valid))

    def commit(self, keys, values, key_valid, sinks: Sinks | None, state) -> None:
        """Store what the next tokens need: the last ``window_size - 1`` keys/values, the sinks, the
        recurrent state and the token counts. Arguments are :meth:`window_inputs`'s outputs."""
        L = self.ring_size
        T = keys.shape[1] - L
        seen = self.seen + T
        if L:
            # the last L keys in time order are the tokens seen - L .. seen - 1, whose slots start at seen % L
            shift = seen % L
            self.ring_k.copy_(keys[:, T:].detach().roll(shift, dims=1))
            self.ring_v.copy_(values[:, T:].detach().roll(shift, dims=1))
            self.ring_valid.copy_(key_valid[:, T:].roll(shift, dims=1))
        if sinks is not None:
            start = self.seen - L
            self.sink_k.copy_(sinks.k.detach())
            self.sink_v.copy_(sinks.v.detach())
            self.sink_pos.copy_(sinks.index + start)
            self.sink_valid.copy_(sinks.valid)
        if state is not None:
            self._store_state(state)
        self.real_seen.add_(key_valid[:, L:].long().sum(1))
        self.seen = seen
        self.seen_t.fill_(seen)

    def _store_state(self, state) -> None:
        state = tuple(x.detach() for x in state)
        if self.state is None or [x.shape for x in self.state] != [x.shape for x in state]:
            self.state = tuple(x.contiguous() for x in state)
            self.version += 1
        else:
            for dst, src in zip(self.state, state):
                dst.copy_(src)

    def decode_update(self, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> None:
        """Write one decoded token in place (the static decode step; see :func:`write_decoded_token`).

        The host count ``seen`` is advanced separately by :meth:`LigerCache.advance`, so that a CUDA graph
        replaying this step stays in step with it.
        """
        write_decoded_token(self.ring_k, self.ring_v, self.ring_valid, self.sink_k, self.sink_v, self.sink_pos,
                            self.sink_valid, self.real_seen, self.seen_t, k, v, valid)

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1

    def buffers(self) -> list[torch.Tensor]:
        """Every tensor this layer holds (the ones a decode step reads and writes)."""
        tensors = [getattr(self, n) for n in _BUFFERS]
        return [t for t in tensors + list(self.state or ()) if t is not None]

    def _apply(self, fn, in_place: bool) -> None:
        for name in _BUFFERS:
            t = getattr(self, name)
            if t is None or t.dim() == 0:
                continue
            new = fn(t)
            if in_place and new.shape == t.shape:
                t.copy_(new)
            else:
                setattr(self, name, new)
                self.version += 1
        if self.state is not None:
            new_state = tuple(fn(x) for x in self.state)
            if in_place and all(a.shape == b.shape for a, b in zip(new_state, self.state)):
                for dst, src in zip(self.state, new_state):
                    dst.copy_(src)
            else:
                self.state = new_state
                self.version += 1

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        # in place: buffers keep their addresses (a captured decode graph stays valid)
        self._apply(lambda x: x.index_select(0, beam_idx.to(x.device)), in_place=True)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda x: x[indices], in_place=False)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda x: x.repeat_interleave(repeats, dim=0), in_place=False)

    def reset(self) -> None:
        self.__init__(self.window_size, self.num_sink_tokens)

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
        return sum(t.numel() * t.element_size() for t in self.buffers())


class LigerCache(Cache):
    """One cache for the whole model: a :class:`LigerLayerCache` per Liger layer, a ``DynamicLayer`` per
    layer kept as full attention."""

    def __init__(self, config):
        full = set(config.full_attention_layers)
        layers = [
            DynamicLayer() if i in full else LigerLayerCache(config.window_size, config.num_sink_tokens)
            for i in range(config.num_hidden_layers)
        ]
        super().__init__(layers=layers)
        self.decoder = None
        """The CUDA-graph decoder bound to this cache's buffers, once one was built (see ``decoding.py``)."""

    def drop_decoder(self) -> None:
        """Forget the CUDA-graph decoder, freeing its graph and memory pool now (not at garbage collection)."""
        if hasattr(self.decoder, "release"):
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
        return [t for layer in self.liger_layers for t in layer.buffers()]

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
