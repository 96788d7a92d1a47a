"""Serving throughput at long context (``liger bench --serve``): for each context, the largest batch whose decoding
fits in device memory, for the strongest teacher (the hand-written static-cache step, ``gqa_graph``) and for
Liger (CUDA-graph decoding), and the decode tokens/s at each batch tried.

**The search** (:func:`find_max_batch`): double the batch from ``serve_start_batch`` while it fits, then bisect
between the last batch that fit and the first that did not, until they are within ``serve_tolerance`` of each
other (0: exact), bounded by ``serve_max_batch`` and a deadline. A batch *fits* when a probe completes: build
the decoding state for that batch, warm up (compilation, CUDA-graph capture), time ``serve_steps`` decode steps —
without a CUDA out-of-memory error, and, with ``serve_memory_limit_gib`` set, with its footprint under that limit.
After every probe its tensors are dropped and the allocator's cache emptied. Every probe is kept in the report
(batch, fits, latency, tokens/s, peak memory), which gives tokens/s against batch size.

**The state a probe decodes from** (no prefill: prefilling thousands of sequences of 128K tokens would take longer
than the search, and the decode step's cost does not depend on the cached values):

* teacher: its static cache of ``context + steps`` slots per sequence, filled with random keys/values, the
  first ``context`` slots valid — exactly the memory and the attention work of a cache holding ``context``
  tokens;
* Liger: a one-token forward allocates its fixed-size state (recurrent state + window ring), then decoding runs
  at positions ``context, context + 1, ...``. Liger's state and step do not grow with the context (the decode
  section measures that with real prefills), so this is its decode cost at that context.

**Memory**: on CUDA, ``torch.cuda.max_memory_allocated`` over the probe (weights, state, CUDA-graph pools,
temporaries); ``serve_memory_limit_gib`` also caps the allocator (``set_per_process_memory_fraction``), so a real
OOM happens at the limit. On a CPU there is no allocator limit: a probe's footprint is counted as the model's
weights plus its decoding state's bytes, and ``serve_memory_limit_gib`` is what makes the search end (the CPU tests
run the whole section this way).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import torch

from ..models.modeling_liger import CACHE


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def find_max_batch(fits: Callable[[int], bool], start: int = 1, max_batch: int = 65536, tolerance: float = 0.05,
                   deadline: float | None = None) -> dict:
    """The largest batch for which ``fits(batch)`` is true, assuming it is monotone (fits up to some N, not above).

    Doubling from ``start`` (capped at ``max_batch``) brackets N, bisection narrows the bracket until
    ``hi - lo <= max(1, tolerance * lo)``. ``deadline`` (a ``time.time()`` value) stops the search early.

    Returns ``{"max_batch": lo, "first_failing": hi, "stopped": why}``: ``lo`` the largest batch seen to fit (0 if
    none), ``hi`` the smallest seen not to (None if none), ``why`` one of ``"bracket"`` (within the tolerance),
    ``"max_batch"`` (the cap fits), ``"time"`` (deadline; ``lo`` is then a lower bound).
    """
    if start < 1 or max_batch < 1:
        raise ValueError(f"start and max_batch must be >= 1, got {start}, {max_batch}")

    def late():
        return deadline is not None and time.time() >= deadline

    lo, hi, batch = 0, None, min(start, max_batch)
    while True:
        if late():
            return dict(max_batch=lo, first_failing=hi, stopped="time")
        if not fits(batch):
            hi = batch
            break
        lo = batch
        if batch >= max_batch:
            return dict(max_batch=lo, first_failing=None, stopped="max_batch")
        batch = min(2 * batch, max_batch)
    while hi - lo > max(1, int(tolerance * lo)):
        if late():
            return dict(max_batch=lo, first_failing=hi, stopped="time")
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return dict(max_batch=lo, first_failing=hi, stopped="bracket")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


class _TeacherState:
    def __init__(self, runner, batch, context, extra):
        self.session = runner.synthetic(batch, context, extra)

    def step(self, token, position):
        self.session.step(token)

    def nbytes(self) -> int:
        return self.session.cache_bytes()

    def captured(self) -> bool:
        return True

    def close(self):
        self.session.close()
        self.session = None


class _LigerState:
    def __init__(self, model, batch, device, mode, compile):
        self.model = model
        model.set_decoding(mode, compile=compile)
        self.mode = mode
        ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.cache = getattr(model(input_ids=ids, use_cache=True), CACHE)  # allocates the fixed-size state

    def step(self, token, position):
        self.model(input_ids=token, position_ids=position, **{CACHE: self.cache}, use_cache=True)

    def nbytes(self) -> int:
        return int(self.cache.nbytes())

    def captured(self) -> bool:
        from ..models.decoding import CUDAGraphDecoder

        return self.mode != "cuda_graph" or isinstance(self.cache.decoder, CUDAGraphDecoder)

    def close(self):
        self.cache.drop_decoder()
        self.cache = None
        self.model.set_decoding("auto")


def probe(make_state: Callable[[], object], batch: int, context: int, vocab: int, steps: int, warmup: int,
          device: torch.device, base_bytes: int, limit_bytes: int | None) -> dict:
    """One probe (see the module docstring): a row with ``fits`` and, when it did, the timings and memory."""
    row = dict(batch_size=batch, fits=False)
    state = None
    _free(device)
    try:
        state = make_state()
        token = torch.randint(0, vocab, (batch, 1), device=device)
        times = []
        for i in range(warmup + steps):
            position = torch.full((batch, 1), context + i, dtype=torch.long, device=device)
            _sync(device)
            start = time.perf_counter()
            state.step(token, position)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        footprint = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else base_bytes + state.nbytes()
        latency = statistics.median(times)
        row.update(latency_s=latency, latency_s_runs=times, tokens_per_s=batch / latency, state_bytes=state.nbytes(),
                   peak_memory_bytes=footprint if device.type == "cuda" else None, footprint_bytes=footprint)
        if not state.captured():
            row["error"] = "CUDA graph capture failed (decoded uncaptured; counted as not fitting)"
        elif limit_bytes is not None and footprint > limit_bytes:
            row["error"] = f"footprint {footprint} bytes over the limit {limit_bytes}"
        else:
            row["fits"] = True
    except Exception as err:
        if not (is_oom(err) or "captur" in str(err).lower()):
            raise
        text = str(err).strip()
        first = text.splitlines()[0] if text else ""
        row["error"] = "out of memory" if is_oom(err) else f"{type(err).__name__}: {first}"
    finally:
        if state is not None:
            state.close()
        del state
        _free(device)
    return row


def serve_rows(kind: str, model, runner, contexts, cfg, device, report, deadline: float | None,
               on_probe=None) -> None:
    """The search for one model (``kind`` "teacher" with ``runner`` a ``GQAGraphTeacher``, or "liger") at each of
    ``contexts``; appends one entry per context to ``report["serve"]``."""
    vocab = model.config.vocab_size
    limit = None if cfg.serve_memory_limit_gib is None else int(cfg.serve_memory_limit_gib * 2**30)
    base = weight_bytes(model)
    extra = cfg.warmup_steps + cfg.serve_steps + 1
    mode = "cuda_graph" if device.type == "cuda" else "static"
    for context in contexts:
        if deadline is not None and time.time() >= deadline:
            report["skipped"].append(f"serve {kind} context {context}: time budget")
            continue
        probes = []
        entry = dict(model=kind, context=context, teacher=runner.name if runner is not None else None,
                     decode_mode=mode if kind == "liger" else ("cuda_graph" if device.type == "cuda" else "uncaptured"),
                     probes=probes)
        report["serve"].append(entry)

        def make_state(batch, context=context):
            if kind == "teacher":
                return _TeacherState(runner, batch, context, extra)
            return _LigerState(model, batch, device, mode, compile=True)

        def fits(batch, context=context, probes=probes):
            row = probe(lambda: make_state(batch), batch, context, vocab, cfg.serve_steps, cfg.warmup_steps,
                        device, base, limit)
            probes.append(row)
            if on_probe is not None:
                on_probe()
            return row["fits"]

        search_deadline = deadline
        if cfg.serve_search_seconds is not None:
            own = time.time() + cfg.serve_search_seconds
            search_deadline = own if deadline is None else min(deadline, own)
        found = find_max_batch(fits, cfg.serve_start_batch, cfg.serve_max_batch, cfg.serve_tolerance,
                               search_deadline)
        best = next((r for r in probes if r["fits"] and r["batch_size"] == found["max_batch"]), None)
        entry.update(found, tokens_per_s=best and best["tokens_per_s"], latency_s=best and best["latency_s"],
                     peak_memory_bytes=best and best["peak_memory_bytes"], state_bytes=best and best["state_bytes"])
        if on_probe is not None:
            on_probe()


def memory_limit(device, limit_gib: float | None):
    """On CUDA, cap the caching allocator at ``limit_gib`` (a context manager; restores the full device)."""
    import contextlib

    @contextlib.contextmanager
    def cap():
        if device.type != "cuda" or limit_gib is None:
            yield
            return
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit_gib * 2**30 / total), device)
        try:
            yield
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)

    return cap()
