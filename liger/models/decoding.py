"""Fast single-token decoding: the static decode step captured in a CUDA graph.

A Liger model's decoding state has a fixed size (recurrent states + a ring buffer of ``window_size - 1``
keys/values + sinks), written in place by the static decode step (``LigerAttention`` with ``decode_step``).
So one token of the whole model — embeddings, every layer, the LM head — is a fixed sequence of kernels on
fixed buffers: :class:`CUDAGraphDecoder` records it once per cache and replays it for every token, which
removes the per-kernel launch cost that dominates decoding small models.

The graph reads its inputs (token ids, positions, the new tokens' mask) from static buffers and writes the
cache's buffers in place; the cache's host token count is advanced after each replay.
"""

from __future__ import annotations

import weakref

import torch

DECODING_MODES = ("auto", "eager", "static", "cuda_graph")

_warmup_streams: dict[torch.device, torch.cuda.Stream] = {}


def warmup_stream(device: torch.device) -> torch.cuda.Stream:
    """The side stream every decoder on ``device`` warms up on — one per device, not one per decoder: cuBLAS
    keeps a workspace per stream that is never freed (32 MiB on Hopper), so a new stream per capture grew the
    memory of a long-running process by 32 MiB for every cache that was ever decoded."""
    device = torch.device(device)
    if device.index is None:
        device = torch.device(device.type, torch.cuda.current_device())
    if device not in _warmup_streams:
        _warmup_streams[device] = torch.cuda.Stream(device)
    return _warmup_streams[device]


class CUDAGraphDecoder:
    """The static decode step of ``model`` for ``cache``, captured in a CUDA graph.

    Args:
        model: a ``LigerForCausalLM`` on CUDA.
        cache: a prefilled ``LigerCache`` with only Liger layers (``cache.is_static``).
        compile: compile each layer's attention core with ``torch.compile`` before capturing.
    """

    def __init__(self, model, cache, compile: bool = True):
        self.model = model
        # the cache holds its decoder; a weak link back lets both go as soon as the cache is dropped
        self._cache = weakref.ref(cache)
        self.compile = compile
        first = cache.liger_layers[0]
        B, device = first.buffers.ring_valid.shape[0], first.buffers.ring_valid.device
        self.input_ids = torch.zeros(B, 1, dtype=torch.long, device=device)
        self.position_ids = torch.zeros(B, 1, dtype=torch.long, device=device)
        self.attention_mask = torch.ones(B, 1, dtype=torch.long, device=device)
        self._remember(cache)

        # warm up outside the graph (compilation, cuBLAS workspaces, Triton autotuning), then undo its writes
        saved = [t.clone() for t in cache.buffers()]
        stream = warmup_stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):
                self._step()
        torch.cuda.current_stream(device).wait_stream(stream)
        with torch.no_grad():
            for t, s in zip(cache.buffers(), saved):
                t.copy_(s)
        del saved

        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.logits = self._step()

    @property
    def cache(self):
        return self._cache()

    def release(self) -> None:
        """Free the graph and its private memory pool now (instead of whenever the garbage collector drops
        this decoder); the decoder is unusable afterwards."""
        self.graph.reset()
        self.logits = None

    def _step(self) -> torch.Tensor:
        return self.model.static_step(self.input_ids, self.position_ids, self.attention_mask, self.cache,
                                      compile=self.compile)

    def _remember(self, cache) -> None:
        """What :meth:`matches` compares: the cache's buffers as captured."""
        self.signature = cache.signature()
        # each layer's buffers are one immutable bundle, replaced whole whenever a tensor of it is: the bundles
        # captured against are what a replay still addresses (kept alive here, so no other tensor takes their
        # memory); comparing them by identity is ~30 checks a token instead of the signature's 180 data_ptr()s
        # (200 us of host time per token, the whole step being ~1.3 ms)
        self._bundles = tuple(layer.buffers for layer in cache.liger_layers)

    def matches(self, cache) -> bool:
        """Whether the captured graph still addresses ``cache``'s buffers: the same layer bundles (see
        :meth:`_remember`; :meth:`matches_exactly` compares every buffer's address, shape and dtype)."""
        layers = cache.liger_layers if cache is self.cache else ()
        return len(layers) == len(self._bundles) and all(x.buffers is b for x, b in zip(layers, self._bundles))

    def matches_exactly(self, cache) -> bool:
        """:meth:`matches` by every buffer's address, shape and dtype (``LigerCache.signature``)."""
        return cache is self.cache and cache.signature() == self.signature

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One token per sequence: ``input_ids`` ``[B, 1]``; returns logits ``[B, 1, vocab]`` (a new tensor)."""
        self.input_ids.copy_(input_ids)
        if position_ids is None:
            self.position_ids.fill_(self.cache.get_seq_length())
        else:
            self.position_ids.copy_(position_ids[:, -1:])
        if attention_mask is None:
            self.attention_mask.fill_(1)
        else:
            self.attention_mask.copy_(attention_mask[:, -1:])
        self.graph.replay()
        self.cache.advance(1)
        return self.logits.clone()
