"""``liger bench``: prefill time, per-token decode latency, memory and LoRA training throughput of a Liger
model against its teacher, measured side by side in one process on one device.

Method (each number is measured, none is derived from another run):

* **prefill** at each context ``c``: a forward of ``batch_size × c`` random tokens from an empty cache
  (``logits_to_keep=1``), timed with device synchronisation; the fastest of ``prefill_repeats`` runs.
* **decode** at each context ``c``: after that prefill, ``warmup_steps`` untimed then ``decode_steps`` timed
  single-token steps (one token per sequence); the per-token latency is the median step time. So the latency
  is sampled at context positions ``c .. c + warmup + steps`` instead of decoding ``c`` tokens one by one.
  Liger decodes in its eager mode and, on CUDA, with the static step replayed from a CUDA graph (the default of
  ``generate``); the teacher as each of ``teachers`` (:mod:`.teachers`: HF's default DynamicCache, HF's
  StaticCache + ``torch.compile(mode="reduce-overhead")``, the hand-written step on a static cache captured in one
  CUDA graph), each after its own prefill of the same tokens. Every Liger/teacher ratio is reported against each
  teacher (``ratios``), the strongest teacher (lowest latency at the longest context all of them measured) first.
* **peak memory**: ``torch.cuda.max_memory_allocated`` over the phase, with only the measured model on the
  device (the other one waits on the CPU), so it counts that model's weights, cache and temporaries.
* **graph** (Liger only): batch ``graph_batch_size`` at context ``prompt_length``, the same decode step in
  each mode (eager, static, CUDA graph, CUDA graph with a compiled attention core).
* **serve** (``serve``): the largest batch that fits and decode tokens/s at each batch tried, per context, for the
  ``gqa_graph`` teacher and Liger (:mod:`.serve`).
* **train**: tokens/s of a LoRA step (peft with the run config's ``lora`` section, by default the paper's r=8,
  alpha=8 on q/k/v; AdamW with the run config's defaults) at ``train_length`` tokens per sequence, for each of
  ``train_batch_sizes``: forward with labels, backward, optimizer step.
* **est. decode time** (the paper's table: total time to decode from ``prompt_length`` to ``c`` at this
  batch): the integral of the measured per-token latency over positions, linear between the measured
  contexts and constant below the first one. It is an estimate and is labelled as such.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import math
import statistics
import time

import torch

from ..loading import is_liger_checkpoint, load_pretrained, to_dtype
from ..models.attention import LigerAttention
from ..models.modeling_liger import CACHE  # the cache's argument/output name in this transformers
from ..provenance import provenance
from ..train.config import OptimConfig
from .config import BenchConfig
from .report import decode_ratios, estimated_decode_time, strongest_teacher
from .serve import memory_limit, serve_rows
from .teachers import make_teacher

logger = logging.getLogger("liger")


# ---------------------------------------------------------------------------------------------- models


def load_models(cfg: BenchConfig, dtype: torch.dtype):
    """(teacher or None, liger) on the CPU: a Liger checkpoint as saved, or the base model (its teacher) and its
    conversion with ``cfg.liger_options``."""
    import liger

    if is_liger_checkpoint(cfg.model):
        if cfg.liger_options:
            raise ValueError("Liger options apply when converting a base model, not to a Liger checkpoint")
        base, model = None, load_pretrained(cfg.model, dtype)
    else:
        base = load_pretrained(cfg.model, dtype, attn_implementation="sdpa")
        model = liger.convert(base, **cfg.liger_options)
    if cfg.teacher is not None and cfg.teacher != cfg.model:
        base = load_pretrained(cfg.teacher, dtype, attn_implementation="sdpa")
    return base, model.eval()


def _describe(model) -> dict:
    c = model.config
    out = {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
           "dtype": str(model.dtype).replace("torch.", ""), "layers": c.num_hidden_layers,
           "hidden_size": c.hidden_size, "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads}
    if getattr(c, "model_type", None) == "liger":
        out.update(variant=c.variant, window_size=c.window_size, num_sink_tokens=c.num_sink_tokens,
                   linear_backend=c.linear_backend)
    else:
        out["attn_implementation"] = c._attn_implementation
    return out


# ---------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def _reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _cache_bytes(cache) -> int | None:
    if hasattr(cache, "nbytes") and callable(cache.nbytes):
        return int(cache.nbytes())
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


class _Budget:
    def __init__(self, seconds: float | None):
        self.start = time.time()
        self.seconds = seconds

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - (time.time() - self.start)


# ---------------------------------------------------------------------------------------------- sections


def _decode_modes(kind: str, device: torch.device) -> list[str]:
    if kind == "teacher":
        return ["eager"]
    return ["eager", "cuda_graph"] if device.type == "cuda" else ["eager", "static"]


def _decode_steps(model, kind, mode, cache, token, steps, warmup, device):
    if kind == "liger":
        model.set_decoding(mode)
    for _ in range(warmup):
        model(input_ids=token, **{CACHE: cache}, use_cache=True)
    times = []
    for _ in range(steps):
        _, t = _timed(lambda: model(input_ids=token, **{CACHE: cache}, use_cache=True), device)
        times.append(t)
    if kind == "liger":
        model.set_decoding("auto")
    return times


def _teacher_decode_rows(runner, ids, token, cache, context, cfg, device, report):
    """Decode rows of one teacher at ``context``: its own prefill of ``ids`` (the eager teacher reuses ``cache``,
    the DynamicCache of the timed prefill), then ``warmup_steps`` untimed and ``decode_steps`` timed steps."""
    B = ids.shape[0]
    session = None
    try:
        session = runner.start(ids, cfg.warmup_steps + cfg.decode_steps + 1, cache=cache)
        cache = None
        _reset_peak(device)
        for _ in range(cfg.warmup_steps):
            session.step(token)
        steps = [_timed(lambda: session.step(token), device)[1] for _ in range(cfg.decode_steps)]
        if cfg.profile and context == max(cfg.contexts) and runner.name == "eager":
            _profile(report, f"decode teacher eager step at {context} (batch {B})", lambda: session.step(token), device)
        median = statistics.median(steps)
        report["decode"].append(dict(model="teacher", mode=runner.name, context=context, batch_size=B,
                                     latency_s=median, latency_s_runs=steps, tokens_per_s=B / median,
                                     peak_memory_bytes=_peak(device), cache_bytes=session.cache_bytes(),
                                     **session.info))
    except Exception as err:
        error = "out of memory" if _is_oom(err) else f"{type(err).__name__}: {_first_line(err)}"
        report["decode"].append(dict(model="teacher", mode=runner.name, context=context, batch_size=B, error=error))
        if not _is_oom(err):
            report["errors"].append(f"teacher {runner.name} context {context}: {error}")
            logger.warning("liger bench: teacher %s context %d: %s", runner.name, context, error)
    finally:
        if session is not None:
            session.close()
        session = None
        _reset_peak(device)


def _context_rows(model, kind, context, cfg, device, generator, report, runners=None):
    B = cfg.batch_size
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (B, context), device=device, generator=generator)
    token = torch.randint(0, vocab, (B, 1), device=device, generator=generator)
    times, cache, peak = [], None, 0
    for _ in range(cfg.prefill_repeats):
        cache = None
        _reset_peak(device)
        out, t = _timed(lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1), device)
        cache = getattr(out, CACHE)
        del out
        times.append(t)
        peak = max(peak, _peak(device) or 0)
    report["prefill"].append(dict(model=kind, context=context, batch_size=B, seconds=min(times), runs=times,
                                  tokens_per_s=B * context / min(times), peak_memory_bytes=peak or None))
    profile_context = 2048 if 2048 in cfg.contexts else cfg.contexts[0]
    if cfg.profile and context == profile_context:
        cache = None
        _profile(report, f"prefill {kind} {B} x {context}",
                 lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1), device)
    if kind == "teacher":
        for runner in runners or []:
            if runner.name != "eager":
                cache = None  # free the DynamicCache before another teacher prefills
            _teacher_decode_rows(runner, ids, token, cache, context, cfg, device, report)
            cache = None
        return
    if cache is None:
        cache = getattr(model(input_ids=ids, use_cache=True, logits_to_keep=1), CACHE)
    for mode in _decode_modes(kind, device):
        _reset_peak(device)
        steps = _decode_steps(model, kind, mode, cache, token, cfg.decode_steps, cfg.warmup_steps, device)
        if cfg.profile and context == max(cfg.contexts) and mode == _decode_modes(kind, device)[-1]:
            # the kernels of the mode that serves (the CUDA graph's replay on a GPU: the profiler lists the kernels
            # inside it), over 4 steps (a kernel's "# of Calls" / 4 per step)
            model.set_decoding(mode)

            def four_steps(c=cache):
                for _ in range(4):
                    model(input_ids=token, **{CACHE: c}, use_cache=True)
            _profile(report, f"decode liger {mode} step at {context} (batch {B}), 4 steps", four_steps, device)
            model.set_decoding("auto")
        median = statistics.median(steps)
        report["decode"].append(dict(model=kind, mode=mode, context=context, batch_size=B, latency_s=median,
                                     latency_s_runs=steps, tokens_per_s=B / median,
                                     peak_memory_bytes=_peak(device), cache_bytes=_cache_bytes(cache)))
    # free this context's CUDA graph pool before the next context is measured (peak memory per context)
    if hasattr(cache, "drop_decoder"):
        cache.drop_decoder()
    cache = None


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


HALF_PRECISION_LIMIT = 1e-2
"""Relative logit error allowed between the fast path and the reference ops in bfloat16/float16 before the
float32 comparison decides (see :func:`_check_fast_path`)."""


def _path_logits(model, ids, mask, pos, T, steps, backend, mode):
    """Prefill logits, the logits of ``steps`` decode steps and the decoder class, with every Liger attention on
    ``backend`` (None: as configured) and decoding ``mode``; the model is restored afterwards."""
    attention = [m for m in model.modules() if isinstance(m, LigerAttention)]
    backends = [m.backend for m in attention]
    for m, b in zip(attention, backends):
        m.backend = backend or b
    model.set_decoding(mode)
    try:
        out = model(ids[:, :T], attention_mask=mask[:, :T], position_ids=pos[:, :T], use_cache=True)
        cache, steps_out = getattr(out, CACHE), []
        for t in range(T, T + steps):
            step = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], position_ids=pos[:, t : t + 1],
                         **{CACHE: cache})
            steps_out.append(step.logits)
        return out.logits, torch.cat(steps_out, 1), type(cache.decoder).__name__
    finally:
        for m, b in zip(attention, backends):
            m.backend = b
        model.set_decoding("auto")


def _float32_copy_fits(model, device) -> bool:
    if device.type != "cuda":
        return True
    need = 2 * sum(p.numel() for p in model.parameters()) * 4  # the copy and its activations, generously
    free, _ = torch.cuda.mem_get_info(device)
    return need < free / 2


def _check_fast_path(model, cfg, device, generator, report) -> None:
    """Before timing: Liger's default path on this device (fla and Triton kernels, CUDA-graph decoding) against
    the PyTorch reference ops (``linear_backend="torch"``, eager decoding), same weights, on a left-padded
    batch: relative error of the prefill logits and of 8 decode steps' logits.

    In float32 the two must agree to 1e-4. In bfloat16/float16 they differ by rounding, which grows through the
    layers (with SmolLM2's 30 random layers the PyTorch reference in bf16 is itself 1.6e-2 away from float32), so
    both are also compared with the reference run in float32 on a float32 copy of the model: the check passes
    when the paths agree to 1e-2, or when the fast path is no further from float32 than 1.5× the reference's
    own rounding error."""
    B, T, steps = 2, 300, 8
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (B, T + steps), device=device, generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :37] = 0
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    fast = _path_logits(model, ids, mask, pos, T, steps, None, "auto")
    reference = _path_logits(model, ids, mask, pos, T, steps, "torch", "eager")
    real = mask[:, :T].bool()
    half = model.dtype in (torch.bfloat16, torch.float16)
    limit = HALF_PRECISION_LIMIT if half else 1e-4
    prefill = _relative_error(fast[0][real], reference[0][real])
    decode = _relative_error(fast[1], reference[1])
    check = dict(prefill_logits_rel_err=prefill, decode_logits_rel_err=decode, limit=limit, decoder=fast[2],
                 passed=prefill < limit and decode < limit)
    if half and not check["passed"] and _float32_copy_fits(model, device):
        import copy

        exact = copy.deepcopy(model).float()
        truth = _path_logits(exact, ids, mask, pos, T, steps, "torch", "eager")
        del exact
        paths = {"fast": fast, "reference": reference}
        prefill32 = {name: _relative_error(out[0][real], truth[0][real]) for name, out in paths.items()}
        decode32 = {name: _relative_error(out[1], truth[1]) for name, out in paths.items()}
        check.update(float32_prefill_rel_err=prefill32, float32_decode_rel_err=decode32,
                     passed=all(err["fast"] <= 1.5 * err["reference"] for err in (prefill32, decode32)))
    report["checks"] = check


def _teacher_runners(teacher, cfg, device, report) -> list:
    """The teachers of ``cfg.teachers`` for ``teacher`` (on ``device``); one that cannot be built is reported."""
    runners = []
    for name in cfg.teachers:
        try:
            runners.append(make_teacher(name, teacher, device, compile=cfg.teacher_compile,
                                        attention=cfg.gqa_attention))
        except ValueError as err:
            report["errors"].append(f"teacher {name}: {_first_line(err)}")
            logger.warning("liger bench: teacher %s: %s", name, err)
    return runners


def _warm_up_teachers(runners, cfg, device, generator, report, vocab) -> list:
    """Compile/capture each teacher's decoding once at a short length; a teacher that fails here is reported and
    left out of the timed sections."""
    ok = []
    length = min(256, cfg.contexts[0])
    ids = torch.randint(0, vocab, (cfg.batch_size, length), device=device, generator=generator)
    for runner in runners:
        session = None
        try:
            session = runner.start(ids, 6)
            for _ in range(4):
                session.step(ids[:, :1])
            _sync(device)
            ok.append(runner)
        except Exception as err:
            message = f"teacher {runner.name} warm-up: {type(err).__name__}: {_first_line(err)}"
            report["errors"].append(message)
            logger.warning("liger bench: %s", message)
        finally:
            if session is not None:
                session.close()
            session = None
            _reset_peak(device)
    return ok


def _warm_up(model, kind, cfg, device, generator):
    # compile/autotune (fla kernels, FlexAttention, the decode step) outside the timed region: two prefill
    # lengths (torch.compile specialises on the first shape and generalises on the second) and a few steps
    vocab = model.config.vocab_size
    for length in sorted({min(256, cfg.contexts[0]), min(512, cfg.contexts[0] + 64)}):
        ids = torch.randint(0, vocab, (cfg.batch_size, length), device=device, generator=generator)
        cache = getattr(model(input_ids=ids, use_cache=True, logits_to_keep=1), CACHE)
    token = ids[:, :1]
    if kind == "liger":
        for mode in _decode_modes(kind, device):
            _decode_steps(model, kind, mode, cache, token, 2, 2, device)
    _sync(device)


def _graph_rows(model, cfg, device, generator, report):
    B, P = cfg.graph_batch_size, cfg.prompt_length
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (B, P), device=device, generator=generator)
    token = ids[:, :1]
    variants = [("eager", False), ("static", False)]
    if device.type == "cuda":
        variants += [("cuda_graph", False), ("cuda_graph", True)]
    for mode, compiled in variants:
        cache = getattr(model(input_ids=ids, use_cache=True, logits_to_keep=1), CACHE)
        model.set_decoding(mode, compile=compiled)
        for _ in range(cfg.warmup_steps):
            model(input_ids=token, **{CACHE: cache}, use_cache=True)
        steps = [_timed(lambda c=cache: model(input_ids=token, **{CACHE: c}, use_cache=True), device)[1]
                 for _ in range(cfg.graph_steps)]
        graph_ok = mode != "cuda_graph" or not isinstance(cache.decoder, str)
        report["graph"].append(dict(mode=mode, compiled=compiled, batch_size=B, context=P,
                                    latency_s=statistics.median(steps), latency_s_runs=steps, captured=graph_ok))
        cache = None
    model.set_decoding("auto")


def _train_rows(base, kind, cfg, device, generator, report, budget):
    """LoRA training steps per batch size and mode: ``eager``, and ``cuda_graph`` (the forward, loss and backward
    captured once and replayed, :class:`liger.train.graphed.GraphedStep`, as ``train.cuda_graph`` trains; CUDA
    only); the optimizer step eager in both."""
    from ..train.graphed import GraphedStep, GraphUnavailable
    from ..train.lora import adamw, add_adapters

    model = add_adapters(copy.deepcopy(base), cfg.lora)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, OptimConfig())
    vocab = base.config.vocab_size

    def loss_of(ids):
        return model(input_ids=ids, labels=ids, use_cache=False).loss

    def eager_step(ids):
        loss = loss_of(ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    try:
        for B in cfg.train_batch_sizes:
            ids = torch.randint(0, vocab, (B, cfg.train_length), device=device, generator=generator)
            for mode in cfg.train_modes:
                label = f"train {kind} batch {B} ({mode})"
                if mode == "cuda_graph" and device.type != "cuda":
                    report["skipped"].append(f"{label}: CUDA graphs need a CUDA device")
                    continue
                if budget.left() <= 0:
                    report["skipped"].append(f"{label}: time budget")
                    continue
                row = dict(model=kind, mode=mode, batch_size=B, length=cfg.train_length)
                graphed = None
                try:
                    _reset_peak(device)
                    step = eager_step
                    if mode == "cuda_graph":
                        graphed = GraphedStep(loss_of, params, (ids,))

                        def step(x, g=graphed):
                            loss = g(x)
                            optimizer.step()
                            optimizer.zero_grad(set_to_none=True)
                            return loss
                    for _ in range(3):
                        step(ids)
                    times = [_timed(lambda x=ids, f=step: f(x), device)[1] for _ in range(cfg.train_steps)]
                    median = statistics.median(times)
                    report["train"].append(dict(row, step_s=median, step_s_runs=times,
                                                tokens_per_s=B * cfg.train_length / median,
                                                peak_memory_bytes=_peak(device),
                                                trainable_parameters=sum(p.numel() for p in params)))
                    if cfg.profile and B == max(cfg.train_batch_sizes):
                        _profile(report, label, lambda x=ids, f=step: f(x), device)
                except GraphUnavailable as err:
                    report["train"].append(dict(row, error=f"not captured: {err}"))
                except Exception as err:
                    if not _is_oom(err):
                        raise
                    report["train"].append(dict(row, error="out of memory"))
                finally:
                    optimizer.zero_grad(set_to_none=True)
                    del graphed
    finally:
        model.to("cpu")
        optimizer.state.clear()
        _reset_peak(device)


def _profile(report, label, fn, device, rows: int = 25) -> None:
    """Top operators of one call of ``fn`` by device time (CPU time on a CPU) into ``report["profiles"]``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    averages = prof.key_averages()
    for key in (("device_time_total", "cuda_time_total") if device.type == "cuda" else ("cpu_time_total",)):
        try:
            report["profiles"][label] = averages.table(sort_by=key, row_limit=rows)
            return
        except (AttributeError, KeyError, ValueError):
            continue


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _section(report, name, fn):
    """Run one section; an error is recorded (and logged) instead of ending the benchmark."""
    try:
        fn()
        return True
    except Exception as err:
        message = f"{name}: {type(err).__name__}: {_first_line(err)}"
        logger.warning("liger bench: %s", message)
        report["errors"].append(message)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return False


def run_bench(cfg: BenchConfig, on_update=None) -> dict:
    """Run the benchmark described by ``cfg`` and return the report (see the module docstring).

    Args:
        on_update: called with the report after every measured context and section (e.g. to save it, so that
            a run stopped by a time limit keeps what it measured).
    """

    def update():
        report["fallbacks"] = fallbacks()
        report["estimated_decode_time"] = estimated_decode_time(report, cfg.prompt_length)
        report["strongest_teacher"] = strongest_teacher(report)
        report["ratios"] = decode_ratios(report)
        report["wall_s"] = time.time() - budget.start
        if on_update is not None:
            on_update(report)

    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA device is available")
    dtype = to_dtype(cfg.dtype)
    budget = _Budget(cfg.time_budget)
    from .autotune import restrict_triton_autotuning

    restrict_triton_autotuning(cfg.autotune)
    _raise_recompile_limit(64)
    # compile in this process: Inductor's pool of compile workers starts (and imports torch) in the background
    # after the first compilation, and it slowed the timed, host-bound work that follows
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1
    report = {"provenance": provenance(device), "config": dataclasses.asdict(cfg), "models": {}, "prefill": [],
              "decode": [], "graph": [], "serve": [], "train": [], "errors": [], "skipped": [], "profiles": {},
              "checks": None, "strongest_teacher": None, "ratios": []}
    teacher, model = load_models(cfg, dtype)
    models = [("teacher", teacher), ("liger", model)] if teacher is not None else [("liger", model)]
    for kind, m in models:
        report["models"][kind] = _describe(m)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    with torch.no_grad():
        for kind, m in models:
            if not cfg.decode:
                break
            m.to(device)
            try:
                if kind == "liger":
                    logger.info("liger bench: fast path vs reference ops")
                    _section(report, "correctness check", lambda m=m: _check_fast_path(m, cfg, device, generator,
                                                                                         report))
                logger.info("liger bench: %s warm-up", kind)
                if not _section(report, f"{kind} warm-up", lambda m=m, kind=kind: _warm_up(m, kind, cfg, device,
                                                                                          generator)):
                    continue
                runners = None
                if kind == "teacher":
                    runners = _warm_up_teachers(_teacher_runners(m, cfg, device, report), cfg, device, generator,
                                                report, m.config.vocab_size)
                for context in cfg.contexts:
                    if budget.left() <= 0:
                        report["skipped"].append(f"decode {kind} context {context}: time budget")
                        continue
                    logger.info("liger bench: %s context %d", kind, context)
                    try:
                        _context_rows(m, kind, context, cfg, device, generator, report, runners)
                        update()
                    except Exception as err:
                        error = "out of memory" if _is_oom(err) else f"{type(err).__name__}: {_first_line(err)}"
                        report["decode"].append(dict(model=kind, context=context, batch_size=cfg.batch_size,
                                                     error=error))
                        if not _is_oom(err):
                            report["errors"].append(f"{kind} context {context}: {error}")
                            logger.warning("liger bench: %s context %d: %s", kind, context, error)
                        _reset_peak(device)
                if kind == "liger" and cfg.decode_modes and budget.left() > 0:
                    logger.info("liger bench: decode modes at batch %d", cfg.graph_batch_size)
                    _section(report, "graph", lambda m=m: _graph_rows(m, cfg, device, generator, report))
                    update()
            finally:
                m.to("cpu")
                _reset_peak(device)
    if cfg.serve:
        with torch.no_grad():
            _section(report, "serve", lambda: _serve(models, cfg, device, report, budget, update))
        update()
    if cfg.train:
        for kind, m in models:
            if budget.left() <= 0:
                report["skipped"].append(f"train {kind}: time budget")
                continue
            logger.info("liger bench: %s LoRA training", kind)
            _section(report, f"train {kind}",
                     lambda m=m, kind=kind: _train_rows(m, kind, cfg, device, generator, report, budget))
            update()
    update()
    return report


def _serve(models, cfg, device, report, budget, update) -> None:
    """The serving-throughput searches, context by context, the teacher (through its ``gqa_graph`` step) then
    Liger, one model on the device at a time. Under a time budget each search gets an equal share of the time left
    (so a long teacher search cannot starve Liger's), and ``serve_search_seconds`` at most."""
    runner = None
    searches = [(context, kind, m) for context in cfg.serve_contexts for kind, m in models]
    for i, (context, kind, model) in enumerate(searches):
        share = budget.left() / (len(searches) - i)
        if share <= 0:
            report["skipped"].append(f"serve {kind} context {context}: time budget")
            continue
        logger.info("liger bench: %s serving throughput at context %d", kind, context)
        model.to(device)
        try:
            if kind == "teacher" and runner is None:
                runner = make_teacher("gqa_graph", model, device, compile=cfg.teacher_compile,
                                      attention=cfg.gqa_attention)
            deadline = None if budget.seconds is None else time.time() + share
            with memory_limit(device, cfg.serve_memory_limit_gib):
                serve_rows(kind, model, runner if kind == "teacher" else None, [context], cfg, device, report,
                           deadline, on_probe=update)
        finally:
            model.to("cpu")
            _reset_peak(device)


def _raise_recompile_limit(limit: int) -> None:
    # every context is a new shape; should a compiled path end up shape-specialised, dynamo's default limit
    # (8 shapes) would silently switch it to its eager version
    import torch._dynamo

    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(limit, getattr(torch._dynamo.config, name)))


def fallbacks() -> dict:
    """``{compiled path: True}`` for each one that fell back to eager (each logs a warning when it does)."""
    from ..models.compiling import fallbacks as compiled_fallbacks

    return compiled_fallbacks()


