"""The teachers ``liger bench`` decodes with, each as a user would serve the unconverted model:

* ``eager``: HF's forward with its default ``DynamicCache``, eager — what ``generate`` does out of the box (the
  baseline of the benchmark's earlier runs);
* ``static``: transformers' own recipe for fast decoding ("Static kv-cache and torch.compile" in its inference
  optimisation guide): a ``StaticCache`` sized to the context and the model's forward compiled with
  ``torch.compile(mode="reduce-overhead", fullgraph=True)``, i.e. decoded through CUDA graphs (cudagraph trees).
  The prefill runs uncompiled, as the recipe says. On a CPU the forward runs uncompiled (same numbers as
  ``eager``, a check of the plumbing);
* ``gqa_graph``: the hand-written step of :mod:`.teacher_decode` — a static cache read once per KV head, fixed
  shapes, the whole step captured by hand in one CUDA graph (its pre/post-attention functions compiled first).
  On a CPU it runs uncaptured and uncompiled.

Each teacher gives decode sessions: ``start(ids, extra)`` prefills ``ids`` into a new cache with room for
``extra`` more tokens and returns a session whose ``step(token)`` decodes one token per sequence and returns its
logits ``[B, 1, vocab]`` (on CUDA, for ``static`` and ``gqa_graph``, a buffer the next step overwrites).
"""

from __future__ import annotations

import torch

from ..models.modeling_liger import CACHE

TEACHERS = ("eager", "static", "gqa_graph")


def cache_slots(tokens: int) -> int:
    """Slots of a ``gqa_graph`` cache for ``tokens`` tokens: rounded up to a multiple of 16 (fused attention kernels
    want the mask's last dimension aligned; the extra slots stay invalid)."""
    return -(-tokens // 16) * 16


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def hf_cache_bytes(cache) -> int:
    """Bytes of the key/value tensors of a transformers cache (Dynamic or Static)."""
    return _tensor_bytes(t for layer in getattr(cache, "layers", []) for t in (getattr(layer, "keys", None),
                                                                             getattr(layer, "values", None)))


class _Session:
    def __init__(self, step, cache_bytes, close, info):
        self.step, self.cache_bytes, self.close, self.info = step, cache_bytes, close, info


class EagerTeacher:
    name = "eager"

    def __init__(self, model, device, **_):
        self.model = model

    def start(self, ids: torch.Tensor, extra: int, cache=None) -> _Session:
        """``cache``: a DynamicCache already holding ``ids`` (the prefill just timed), else ``ids`` is prefilled."""
        if cache is None:
            cache = getattr(self.model(input_ids=ids, use_cache=True, logits_to_keep=1), CACHE)
        holder = [cache]

        def step(token):
            return self.model(input_ids=token, **{CACHE: holder[0]}, use_cache=True).logits

        return _Session(step, lambda: hf_cache_bytes(holder[0]), holder.clear, dict(compiled=False, captured=False))


class StaticTeacher:
    """HF's ``StaticCache`` + ``torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)`` (CUDA)."""
    name = "static"

    def __init__(self, model, device, compile: bool = True, **_):
        self.model = model
        self.compiled = compile and device.type == "cuda"
        self.forward = model.forward
        if self.compiled:
            self.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)

    def start(self, ids: torch.Tensor, extra: int, cache=None) -> _Session:
        from transformers import StaticCache

        static = StaticCache(config=self.model.config, max_cache_len=ids.shape[1] + extra)
        self.model(input_ids=ids, **{CACHE: static}, use_cache=True, logits_to_keep=1)  # prefill: not compiled
        holder = [static]

        def step(token):
            if self.compiled:
                torch.compiler.cudagraph_mark_step_begin()
            return self.forward(input_ids=token, **{CACHE: holder[0]}, use_cache=True).logits

        def close():
            holder.clear()
            if self.compiled:  # free the recorded graphs' memory pool before the next context is measured
                from torch._inductor import cudagraph_trees

                cudagraph_trees.reset_cudagraph_trees()

        return _Session(step, lambda: hf_cache_bytes(holder[0]), close,
                        dict(compiled=self.compiled, captured=self.compiled))


class GQAGraphTeacher:
    """The hand-written step (:class:`.teacher_decode.GQADecodeTeacher`), captured per cache on CUDA."""
    name = "gqa_graph"

    def __init__(self, model, device, compile: bool = True, attention: str = "fold", **_):
        from .teacher_decode import GQADecodeTeacher

        self.capture = device.type == "cuda"
        self.decoder = GQADecodeTeacher(model, attention=attention, compile=compile and self.capture)
        self.info = dict(compiled=compile and self.capture, captured=self.capture, attention=attention)

    def start(self, ids: torch.Tensor, extra: int, cache=None) -> _Session:
        kv = self.decoder.new_cache(ids.shape[0], cache_slots(ids.shape[1] + extra))
        self.decoder.prefill(kv, ids, logits_to_keep=1)
        return self.session(kv)

    def synthetic(self, batch: int, context: int, extra: int) -> _Session:
        """A session on a cache of ``context`` random tokens per sequence (no prefill; decode speed does not
        depend on the cached values)."""
        kv = self.decoder.new_cache(batch, cache_slots(context + extra), fill="random")
        kv.fill_synthetic(context)
        return self.session(kv)

    def session(self, kv) -> _Session:
        from .teacher_decode import GraphedStep

        B, device = kv.batch_size, kv.valid.device
        position = torch.zeros(B, 1, dtype=torch.long, device=device)
        ones = torch.ones(B, 1, dtype=torch.long, device=device)
        state = {"cache": kv, "graph": None}

        def step(token):
            position.fill_(kv.length)
            if not self.capture:
                logits = self.decoder.step(kv, token, position, ones)
                kv.length += 1
                return logits
            if state["graph"] is None:
                state["graph"] = GraphedStep(self.decoder, kv)
            return state["graph"](token, position, ones)

        def close():
            if state["graph"] is not None:
                state["graph"].release()
            state.clear()

        return _Session(step, kv.nbytes, close, dict(self.info))


def make_teacher(name: str, model, device, compile: bool = True, attention: str = "fold"):
    cls = {"eager": EagerTeacher, "static": StaticTeacher, "gqa_graph": GQAGraphTeacher}[name]
    return cls(model, device, compile=compile, attention=attention)
