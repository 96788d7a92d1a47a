"""The report of ``liger bench``: the estimated decode times derived from its measurements, the printed table and
the plot. The report itself (a dict, saved as JSON) is built by :mod:`.measure`; this module only reads it.

Targets for these numbers (ratios to pass or fail) belong to whoever sets them: the GPU check's are in
``benchmarks/targets.py``.
"""

from __future__ import annotations


def rows(report, section, **match):
    return [r for r in report[section] if "error" not in r and all(r.get(k) == v for k, v in match.items())]


def best_decode_mode(report) -> str | None:
    modes = {r["mode"] for r in rows(report, "decode", model="liger")}
    for mode in ("cuda_graph", "static", "eager"):
        if mode in modes:
            return mode
    return None


TEACHER_LABELS = {"eager": "HF eager (DynamicCache)",
                  "static": "HF StaticCache + torch.compile reduce-overhead (uncompiled off CUDA)",
                  "gqa_graph": "hand-written GQA step on a static cache, one CUDA graph (uncaptured off CUDA)"}


def teacher_modes(report) -> list[str]:
    """The teachers whose decoding was measured, the strongest first (see :func:`strongest_teacher`), then by
    latency at that context (those not measured there last, in the config's order)."""
    measured = {r["mode"] for r in rows(report, "decode", model="teacher")}
    order = [t for t in report.get("config", {}).get("teachers", ["eager"]) if t in measured]
    order += sorted(measured - set(order))
    context = _strongest_context(report, order)
    if context is None:
        return order
    latency = {r["mode"]: r["latency_s"] for r in rows(report, "decode", model="teacher", context=context)}
    return sorted(order, key=lambda t: (t not in latency, latency.get(t, 0.0), order.index(t)))


def _strongest_context(report, modes) -> int | None:
    by_mode = [{r["context"] for r in rows(report, "decode", model="teacher", mode=m)} for m in modes]
    common = set.intersection(*by_mode) if by_mode else set()
    if common:
        return max(common)
    every = set.union(*by_mode) if by_mode else set()
    return max(every) if every else None


def strongest_teacher(report) -> str | None:
    """The teacher with the lowest measured per-token decode latency at the longest context that every measured
    teacher reached (the longest any reached, if none is common); None when no teacher decoding was measured."""
    modes = teacher_modes(report)
    return modes[0] if modes else None


def decode_ratios(report) -> list[dict]:
    """Liger (its best decode mode) against each teacher at each context both measured: latency and decode peak
    memory ratios (Liger / teacher), the strongest teacher first."""
    mode = best_decode_mode(report)
    out = []
    if mode is None:
        return out
    liger = {r["context"]: r for r in rows(report, "decode", model="liger", mode=mode)}
    for teacher in teacher_modes(report):
        for r in sorted(rows(report, "decode", model="teacher", mode=teacher), key=lambda r: r["context"]):
            lr = liger.get(r["context"])
            if lr is None:
                continue
            memory = None
            if lr.get("peak_memory_bytes") and r.get("peak_memory_bytes"):
                memory = lr["peak_memory_bytes"] / r["peak_memory_bytes"]
            out.append(dict(context=r["context"], teacher=teacher, liger_mode=mode, batch_size=r["batch_size"],
                            teacher_latency_s=r["latency_s"], liger_latency_s=lr["latency_s"],
                            latency_ratio=lr["latency_s"] / r["latency_s"], memory_ratio=memory))
    return out


def serve_summary(report) -> list[dict]:
    """Per serving context: the teacher's and Liger's largest batch and tokens/s there, and Liger / teacher."""
    out = []
    for context in sorted({e["context"] for e in report.get("serve", [])}):
        entry = {e["model"]: e for e in report["serve"] if e["context"] == context}
        t, lg = entry.get("teacher", {}), entry.get("liger", {})
        ratio = None
        if t.get("tokens_per_s") and lg.get("tokens_per_s"):
            ratio = lg["tokens_per_s"] / t["tokens_per_s"]
        out.append(dict(context=context, teacher=t.get("teacher"), teacher_max_batch=t.get("max_batch"),
                        teacher_tokens_per_s=t.get("tokens_per_s"), teacher_stopped=t.get("stopped"),
                        liger_max_batch=lg.get("max_batch"), liger_tokens_per_s=lg.get("tokens_per_s"),
                        liger_stopped=lg.get("stopped"), throughput_ratio=ratio))
    return out


def estimated_decode_time(report, prompt_length: int) -> list[dict]:
    """Estimated seconds to decode from ``prompt_length`` to each measured context, per model and mode
    (integral of the measured per-token latency; see the module docstring)."""
    out = []
    pairs = {(r["model"], r["mode"]) for r in rows(report, "decode")}
    for model, mode in sorted(pairs):
        points = sorted((r["context"], r["latency_s"]) for r in rows(report, "decode", model=model, mode=mode))
        total = points[0][1] * max(0, points[0][0] - prompt_length)
        for i, (c, lat) in enumerate(points):
            if i:
                prev_c, prev_lat = points[i - 1]
                total += (prev_lat + lat) / 2 * (c - prev_c)
            out.append(dict(model=model, mode=mode, context=c, seconds=total))
    return out


def _ms(x):
    return "-" if x is None else f"{x * 1e3:.2f}"


def _gib(x):
    return "-" if x is None else f"{x / 2**30:.2f}"


def _x(a, b):
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def _n(x):
    return "-" if x is None else f"{x:,.0f}"


def _bound(stopped):
    return {"time": " (time ran out: a lower bound)", "max_batch": " (the cap)"}.get(stopped, "")


def format_report(report) -> str:
    """A short plain-text table (printed last by ``liger bench``)."""
    p = report["provenance"]
    cfg = report["config"]
    lines = [f"liger bench on {p.get('device_name')} | torch {p.get('torch')} | fla {p.get('fla-core')} | "
             f"{cfg['dtype']} | batch {cfg['batch_size']} | autotune {cfg.get('autotune')} | "
             f"commit {(p.get('git_commit') or '?')[:10]}{' (dirty)' if p.get('git_dirty') else ''}"]
    check = report.get("checks")
    if check:
        verdict = "PASS" if check["passed"] else "FAIL"
        float32 = "float32_prefill_rel_err" in check  # then the float32 comparison decides, on the next line
        lines.append(f"correctness of the fast path vs the PyTorch reference ops (same weights, left-padded batch): "
                     f"prefill logits rel. err {check['prefill_logits_rel_err']:.1e}, decode ({check['decoder']}) "
                     f"{check['decode_logits_rel_err']:.1e}, limit {check['limit']:.0e}"
                     + ("" if float32 else f": {verdict}"))
        if float32:
            p32, d32 = check["float32_prefill_rel_err"], check["float32_decode_rel_err"]
            lines.append(f"  vs the reference ops in float32: fast path {p32['fast']:.1e} (prefill), {d32['fast']:.1e} "
                         f"(decode); reference ops in {cfg['dtype']} {p32['reference']:.1e}, {d32['reference']:.1e} "
                         f"(limit: 1.5x the reference's): {verdict}")
    mode = best_decode_mode(report)
    pre = {(r["model"], r["context"]): r for r in rows(report, "prefill")}
    dec = {(r["model"], r["mode"], r["context"]): r for r in rows(report, "decode")}
    teachers = teacher_modes(report)
    contexts = sorted({c for _, c in pre} | {c for _, _, c in dec})
    if pre:
        lines += ["", f"{'context':>8} | {'prefill ms T/L (L/T)':>26}"]
        for c in sorted({c for _, c in pre}):
            tp, lp = pre.get(("teacher", c), {}), pre.get(("liger", c), {})
            lines.append(f"{c:>8} | {_ms(tp.get('seconds')):>8} / {_ms(lp.get('seconds')):>8} "
                         f"({_x(lp.get('seconds'), tp.get('seconds')):>6})")
        lines.append("  (T = teacher: HF forward, SDPA, from an empty DynamicCache; L = Liger)")
    if dec:
        strongest = f"; strongest teacher: {teachers[0]}" if teachers else ""
        lines += ["", f"decode ms/token at batch {cfg['batch_size']} (L = Liger '{mode}'; ratios L/T{strongest})"]
        head = f"{'context':>8} | {'L':>7} | {'L eager':>7}" + "".join(f" | {t + ' (L/T)':>19}" for t in teachers)
        lines.append(head)
        for c in contexts:
            ld, le = dec.get(("liger", mode, c), {}), dec.get(("liger", "eager", c), {})
            cells = [f"{_ms(dec.get(('teacher', t, c), {}).get('latency_s')):>8} "
                     f"({_x(ld.get('latency_s'), dec.get(('teacher', t, c), {}).get('latency_s')):>8})"
                     for t in teachers]
            lines.append(f"{c:>8} | {_ms(ld.get('latency_s')):>7} | {_ms(le.get('latency_s')):>7}"
                         + "".join(f" | {x:>19}" for x in cells))
        lines += ["", f"decode peak GiB at batch {cfg['batch_size']} (ratios L/T)",
                  f"{'context':>8} | {'L':>7}" + "".join(f" | {t + ' (L/T)':>19}" for t in teachers)]
        for c in contexts:
            lm = dec.get(("liger", mode, c), {}).get("peak_memory_bytes")
            cells = [f"{_gib(dec.get(('teacher', t, c), {}).get('peak_memory_bytes')):>8} "
                     f"({_x(lm, dec.get(('teacher', t, c), {}).get('peak_memory_bytes')):>8})" for t in teachers]
            lines.append(f"{c:>8} | {_gib(lm):>7}" + "".join(f" | {x:>19}" for x in cells))
        lines.append("  teachers: " + "; ".join(f"{t} = {TEACHER_LABELS.get(t, t)}" for t in teachers))
        failed = [f"{r['model']}{'/' + r['mode'] if r.get('mode') else ''}@{r['context']}: {r['error']}"
                  for r in report["decode"] if r.get("error")]
        if failed:
            lines.append(f"  not measured: {', '.join(failed)}")
    if report["graph"]:
        lines.append("")
        lines.append("decode modes (Liger, batch {b}, context {c}): ".format(b=report["graph"][0]["batch_size"],
                                                                          c=report["graph"][0]["context"])
                     + ", ".join(f"{r['mode']}{'+compile' if r['compiled'] else ''} {_ms(r['latency_s'])} ms"
                                 + ("" if r["captured"] else " (capture FAILED: uncaptured)")
                                 for r in report["graph"]))
    if report.get("serve"):
        lines += ["", "serving throughput: largest batch that fits and decode tokens/s there (Liger / teacher)"]
        for r in serve_summary(report):
            ratio = "-" if r["throughput_ratio"] is None else f"{r['throughput_ratio']:.1f}x"
            lines.append(
                f"{r['context']:>8} | teacher {r['teacher']}: batch {_n(r['teacher_max_batch'])}"
                f"{_bound(r['teacher_stopped'])}, {_n(r['teacher_tokens_per_s'])} tokens/s | Liger: batch "
                f"{_n(r['liger_max_batch'])}{_bound(r['liger_stopped'])}, {_n(r['liger_tokens_per_s'])} tokens/s | "
                f"{ratio}")
    if report["train"]:
        lines.append("")
        for r in report["train"]:
            head = f"train {r['model']:>7} batch {r['batch_size']:>2} x {r['length']} {r.get('mode', 'eager'):>10}"
            if "error" in r:
                lines.append(f"{head}: {r['error']}")
            else:
                lines.append(f"{head}: "
                             f"{r['tokens_per_s']:,.0f} tokens/s, step {_ms(r['step_s'])} ms, "
                             f"peak {_gib(r['peak_memory_bytes'])} GiB")
    fb = report.get("fallbacks") or {}
    if any(fb.values()):
        lines.append(f"  fallbacks used: {', '.join(k for k, v in fb.items() if v)}")
    for e in report["errors"]:
        lines.append(f"  error: {e}")
    for s in report["skipped"]:
        lines.append(f"  skipped: {s}")
    return "\n".join(lines)


def plot_report(report, path) -> None:
    """Latency, memory and prefill time against context (one PNG with three panels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    series = sorted({(r["model"], r["mode"]) for r in rows(report, "decode")})
    for model, mode in series:
        points = sorted(rows(report, "decode", model=model, mode=mode), key=lambda r: r["context"])
        label = f"teacher {mode}" if model == "teacher" else f"Liger ({mode})"
        axes[0].plot([r["context"] for r in points], [r["latency_s"] * 1e3 for r in points], "o-", label=label)
        mem = [(r["context"], r["peak_memory_bytes"]) for r in points if r["peak_memory_bytes"]]
        if mem:
            axes[1].plot([c for c, _ in mem], [m / 2**30 for _, m in mem], "o-", label=label)
    for model in ("teacher", "liger"):
        points = sorted(rows(report, "prefill", model=model), key=lambda r: r["context"])
        if points:
            axes[2].plot([r["context"] for r in points], [r["seconds"] for r in points], "o-",
                         label="teacher" if model == "teacher" else "Liger")
    titles = ("decode latency (ms / token)", "decode peak memory (GiB)", "prefill time (s)")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    axes[2].set_yscale("log")
    p, cfg = report["provenance"], report["config"]
    fig.suptitle(f"{p.get('device_name')}, {cfg['dtype']}, batch {cfg['batch_size']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_serving(report, path) -> bool:
    """Decode tokens/s against batch size, one panel per serving context, teacher and Liger (every batch the search
    tried that fit; the largest marked). Returns False (and writes nothing) when there is nothing to plot."""
    entries = [e for e in report.get("serve", []) if any(p["fits"] for p in e["probes"])]
    if not entries:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contexts = sorted({e["context"] for e in entries})
    fig, axes = plt.subplots(1, len(contexts), figsize=(5.5 * len(contexts), 4.5), squeeze=False)
    for ax, context in zip(axes[0], contexts):
        for e in (e for e in entries if e["context"] == context):
            points = sorted((p["batch_size"], p["tokens_per_s"]) for p in e["probes"] if p["fits"])
            label = f"teacher {e['teacher']}" if e["model"] == "teacher" else "Liger"
            line, = ax.plot([b for b, _ in points], [t for _, t in points], "o-", label=label)
            if e.get("tokens_per_s"):
                ax.plot([e["max_batch"]], [e["tokens_per_s"]], "*", markersize=14, color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch (sequences decoded together)")
        ax.set_ylabel("decode tokens/s")
        ax.set_title(f"context {context:,} (star: largest batch that fits)")
        ax.grid(alpha=0.3)
        ax.legend()
    p, cfg = report["provenance"], report["config"]
    fig.suptitle(f"serving throughput, {p.get('device_name')}, {cfg['dtype']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
