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
    contexts = sorted({c for _, c in pre} | {c for _, _, c in dec})
    if contexts:
        lines.append("")
        lines.append(f"{'context':>8} | {'prefill ms T/L (L/T)':>26} | {'decode ms/token T/L (L/T)':>28} | "
                     f"{'decode peak GiB T/L (L/T)':>27} | {'Liger eager ms':>14}")
        for c in contexts:
            tp, lp = pre.get(("teacher", c), {}), pre.get(("liger", c), {})
            td, ld = dec.get(("teacher", "eager", c), {}), dec.get(("liger", mode, c), {})
            le = dec.get(("liger", "eager", c), {})
            lines.append(
                f"{c:>8} | {_ms(tp.get('seconds')):>8} / {_ms(lp.get('seconds')):>8} ({_x(lp.get('seconds'), tp.get('seconds')):>6}) | "  # noqa: E501
                f"{_ms(td.get('latency_s')):>8} / {_ms(ld.get('latency_s')):>7} ({_x(ld.get('latency_s'), td.get('latency_s')):>7}) | "  # noqa: E501
                f"{_gib(td.get('peak_memory_bytes')):>7} / {_gib(ld.get('peak_memory_bytes')):>6} "
                f"({_x(ld.get('peak_memory_bytes'), td.get('peak_memory_bytes')):>7}) | {_ms(le.get('latency_s')):>14}")
        oom = [f"{r['model']}@{r['context']}" for r in report["decode"] if r.get("error")]
        if oom:
            lines.append(f"  out of memory: {', '.join(oom)}")
        lines.append(f"  (T = teacher, SDPA + KV cache; L = Liger, decode mode '{mode}'; ratios are L/T)")
    if report["graph"]:
        lines.append("")
        lines.append("decode modes (Liger, batch {b}, context {c}): ".format(b=report["graph"][0]["batch_size"],
                                                                          c=report["graph"][0]["context"])
                     + ", ".join(f"{r['mode']}{'+compile' if r['compiled'] else ''} {_ms(r['latency_s'])} ms"
                                 + ("" if r["captured"] else " (capture FAILED: uncaptured)")
                                 for r in report["graph"]))
    if report["train"]:
        lines.append("")
        for r in report["train"]:
            if "error" in r:
                lines.append(f"train {r['model']:>7} batch {r['batch_size']:>2} x {r['length']}: {r['error']}")
            else:
                lines.append(f"train {r['model']:>7} batch {r['batch_size']:>2} x {r['length']}: "
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
        label = "teacher (SDPA, KV cache)" if model == "teacher" else f"Liger ({mode})"
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
