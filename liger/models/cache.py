"""LigerCache: constant-size decoding state of a Liger model.

Per Liger layer it holds
* the recurrent state of the linear branch (a tuple of float32 tensors, once per KV head);
* the post-RoPE keys/values of the last ``window_size - 1`` tokens (with a validity flag per slot), which is
  all the window branch of the next token can see besides itself;
* when ``num_sink_tokens > 0``, the post-RoPE keys/values of the first real tokens of each sequence and
  their positions.
Layers kept as full softmax attention use a standard growing ``DynamicLayer``.

Positions are token counts: ``seen`` counts every token fed so far (padding included, like
``DynamicCache.get_seq_length``), and each sequence's count of real tokens is tracked to place its sinks.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .window import Sinks


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
        self.window_k = self.window_v = self.window_valid = None
        self.sink_k = self.sink_v = self.sink_pos = self.sink_valid = None
        self.real_seen: torch.Tensor | None = None

    @property
    def is_initialized(self) -> bool:
        return self.window_k is not None

    def _lazy_init(self, k: torch.Tensor, v: torch.Tensor) -> None:
        B, _, H, D = k.shape
        L, S = self.window_size - 1, self.num_sink_tokens
        self.window_k = k.new_zeros(B, L, H, D)
        self.window_v = v.new_zeros(B, L, H, v.shape[-1])
        self.window_valid = torch.zeros(B, L, dtype=torch.bool, device=k.device)
        self.real_seen = torch.zeros(B, dtype=torch.long, device=k.device)
        if S:
            self.sink_k = k.new_zeros(B, S, H, D)
            self.sink_v = v.new_zeros(B, S, H, v.shape[-1])
            self.sink_pos = torch.zeros(B, S, dtype=torch.long, device=k.device)
            self.sink_valid = torch.zeros(B, S, dtype=torch.bool, device=k.device)

    def window_inputs(self, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor):
        """What the window branch attends over for the new tokens ``k``, ``v`` ``[B, T, H, D]``.

        Returns ``(keys, values, key_valid, sinks)``: the cached window followed by the new tokens, and
        the sinks (the first ``num_sink_tokens`` real tokens of each sequence, new ones included) with
        their positions relative to ``keys[:, 0]``. Nothing is stored: :meth:`commit` does that.
        """
        if not self.is_initialized:
            self._lazy_init(k, v)
        keys = torch.cat([self.window_k.to(k.dtype), k], dim=1)
        values = torch.cat([self.window_v.to(v.dtype), v], dim=1)
        key_valid = torch.cat([self.window_valid, valid], dim=1)
        sinks = self._sinks_with(k, v, valid) if self.num_sink_tokens else None
        return keys, values, key_valid, sinks

    def _sinks_with(self, k, v, valid) -> Sinks:
        B, T = valid.shape
        S = self.num_sink_tokens
        real_index = self.real_seen[:, None] + valid.long().cumsum(1) - 1  # [B, T]
        slot = torch.where(valid & (real_index < S), real_index, S)  # S = a discarded overflow slot
        start = self.seen - (self.window_size - 1)  # absolute position of keys[:, 0]
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
        L = self.window_size - 1
        T = keys.shape[1] - L
        self.window_k = keys[:, T:].detach()
        self.window_v = values[:, T:].detach()
        self.window_valid = key_valid[:, T:]
        if sinks is not None:
            start = self.seen - L
            self.sink_k, self.sink_v = sinks.k.detach(), sinks.v.detach()
            self.sink_pos, self.sink_valid = sinks.index + start, sinks.valid
        if state is not None:
            self.state = tuple(x.detach() for x in state)
        self.real_seen = self.real_seen + key_valid[:, L:].long().sum(1)
        self.seen += T

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1

    def _apply(self, fn) -> None:
        for name in ("window_k", "window_v", "window_valid", "sink_k", "sink_v", "sink_pos", "sink_valid", "real_seen"):
            if getattr(self, name) is not None:
                setattr(self, name, fn(getattr(self, name)))
        if self.state is not None:
            self.state = tuple(fn(x) for x in self.state)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply(lambda x: x.index_select(0, beam_idx.to(x.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda x: x[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda x: x.repeat_interleave(repeats, dim=0))

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
        tensors = [getattr(self, n) for n in ("window_k", "window_v", "window_valid", "sink_k", "sink_v",
                                               "sink_pos", "sink_valid", "real_seen")]
        tensors += list(self.state or ())
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


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

    def get_seq_length(self, layer_idx: int = 0) -> int:
        layer = self.layers[layer_idx]
        if isinstance(layer, LigerLayerCache):
            return layer.seen
        return layer.get_seq_length()

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def nbytes(self) -> int:
        """Total bytes held by the cache (recurrent states, windows, sinks and full-attention K/V)."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, LigerLayerCache):
                total += layer.state_bytes()
            elif layer.keys is not None:
                total += layer.keys.numel() * layer.keys.element_size() * 2
        return total
