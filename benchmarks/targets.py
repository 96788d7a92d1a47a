"""The targets for ``liger bench`` on a GPU, kept with the benchmark scripts: the library reports numbers, these say
which ratios pass. ``benchmarks/gpu_check.py`` prints them under its benchmark table.

Issue 5 (the teacher is HF's eager decoding, ``mode == "eager"``):

    decode latency growth            <= 0.10  Liger per-token latency at the longest vs the shortest context, minus 1
    decode latency vs teacher        <= 0.3   at the longest context both measured
    decode memory growth             <= 0.05  decode peak memory, longest vs shortest context, minus 1 (flat)
    decode memory vs teacher         <= 0.05
    prefill speedup at longest ctx   >= 2.0   teacher / Liger prefill time
    prefill slowdown at 2048         <= 1.5   Liger / teacher prefill time
    LoRA training throughput         >= 0.8   Liger / teacher tokens/s, per batch size
    CUDA-graph decode speedup        >= 3.0   eager / CUDA-graph per-token latency of Liger

Issue 15 (against the strongest teacher: at each context, the fastest of the teachers measured there — HF eager,
HF static cache + torch.compile, the hand-written GQA step in a CUDA graph):

    decode latency up to 32K         <= 1.0 ms  Liger's slowest per-token latency at contexts <= 32768
    decode vs strongest at 32768     <= 0.5   Liger / fastest teacher per-token latency
    decode vs strongest at 1024      <= 1.0
    serving throughput at 32768      >= 10    Liger / teacher decode tokens/s, each at its largest batch that fits
    prefill at 2048                  <= 1.0   Liger / teacher prefill time
    prefill speedup at 32768         >= 2.5   teacher / Liger prefill time
    LoRA training throughput         >= 1.0   per batch size (the issue: batch 8 and 32, T = 1024)

The issue states the decode targets at batch 16 and at batch 1: one report holds one batch size (its
``batch_size``), so batch 1 is a second ``liger bench`` run (``benchmarks/gpu_check.py`` runs both).
"""

from __future__ import annotations

import json
import sys

from liger.bench.report import best_decode_mode, rows, serve_summary


def _value(rows, key, context):
    for r in rows:
        if r["context"] == context:
            return r.get(key)
    return None


def _train_speed(report: dict, batch: int, model: str, mode: str | None = None) -> float | None:
    """Tokens/s of ``model``'s LoRA step at ``batch``: in ``mode`` (rows without one are eager), or the fastest."""
    speeds = [r["tokens_per_s"] for r in rows(report, "train", batch_size=batch)
              if r["model"] == model and "tokens_per_s" in r and mode in (None, r.get("mode", "eager"))]
    return max(speeds) if speeds else None


def evaluate_targets(report) -> list[dict]:
    """The targets as ratios measured in ``report`` (a ``liger bench`` JSON report); ``passed`` is None where
    data is missing."""
    targets = []

    def add(name, value, limit, op, detail):
        passed = None if value is None else (value <= limit if op == "<=" else value >= limit)
        targets.append(dict(name=name, value=value, limit=limit, op=op, passed=passed, detail=detail, issue=5))

    mode = best_decode_mode(report)
    liger_dec = rows(report, "decode", model="liger", mode=mode) if mode else []
    teacher_dec = rows(report, "decode", model="teacher", mode="eager")
    contexts = sorted(r["context"] for r in liger_dec)
    common = sorted(set(contexts) & {r["context"] for r in teacher_dec})
    lo = contexts[0] if contexts else None
    hi = contexts[-1] if contexts else None
    top = common[-1] if common else None

    def ratio(a, b):
        return None if a is None or b is None or b == 0 else a / b

    growth = ratio(_value(liger_dec, "latency_s", hi), _value(liger_dec, "latency_s", lo))
    add("decode latency growth", None if growth is None else growth - 1, 0.10, "<=",
        f"Liger ({mode}) per-token latency at {hi} vs {lo} tokens of context, minus 1")
    add("decode latency vs teacher", ratio(_value(liger_dec, "latency_s", top), _value(teacher_dec, "latency_s", top)),
        0.3, "<=", f"Liger ({mode}) / teacher per-token latency at {top}")
    mem_growth = ratio(_value(liger_dec, "peak_memory_bytes", hi), _value(liger_dec, "peak_memory_bytes", lo))
    add("decode memory growth", None if mem_growth is None else mem_growth - 1, 0.05, "<=",
        f"Liger ({mode}) decode peak memory at {hi} vs {lo}, minus 1 (flat)")
    add("decode memory vs teacher",
        ratio(_value(liger_dec, "peak_memory_bytes", top), _value(teacher_dec, "peak_memory_bytes", top)),
        0.05, "<=", f"Liger / teacher decode peak memory at {top}")
    liger_pre, teacher_pre = rows(report, "prefill", model="liger"), rows(report, "prefill", model="teacher")
    pre_common = sorted({r["context"] for r in liger_pre} & {r["context"] for r in teacher_pre})
    if pre_common:
        big = pre_common[-1]
        add("prefill speedup at longest context",
            ratio(_value(teacher_pre, "seconds", big), _value(liger_pre, "seconds", big)), 2.0, ">=",
            f"teacher / Liger prefill time at {big}")
        short = 2048 if 2048 in pre_common else pre_common[0]
        slowdown = ratio(_value(liger_pre, "seconds", short), _value(teacher_pre, "seconds", short))
        add(f"prefill slowdown at {short}", slowdown, 1.5, "<=", f"Liger / teacher prefill time at {short}")
    for B in sorted({r["batch_size"] for r in rows(report, "train")}):
        lig, tea = _train_speed(report, B, "liger", "eager"), _train_speed(report, B, "teacher", "eager")
        add(f"LoRA training throughput (batch {B})", ratio(lig, tea), 0.8, ">=",
            "Liger / teacher tokens/s of an eager LoRA step")
    graph = {(r["mode"], r["compiled"]): r["latency_s"] for r in report["graph"]}
    eager = graph.get(("eager", False))
    fast = graph.get(("cuda_graph", True)) or graph.get(("cuda_graph", False))
    if report["graph"]:
        B = report["graph"][0]["batch_size"]
        add(f"CUDA-graph decode speedup (batch {B})", ratio(eager, fast), 3.0, ">=",
            "eager / CUDA-graph per-token latency of Liger")
    return targets + serving_targets(report)


def _fastest_teacher(report, context):
    """(teacher mode, latency) of the fastest teacher decoding measured at ``context``, or (None, None)."""
    measured = [(r["latency_s"], r["mode"]) for r in rows(report, "decode", model="teacher", context=context)]
    if not measured:
        return None, None
    latency, mode = min(measured)
    return mode, latency


def serving_targets(report) -> list[dict]:
    """The targets of issue 15 (see the module docstring); ``passed`` is None where data is missing."""
    targets = []

    def add(name, value, limit, op, detail):
        passed = None if value is None else (value <= limit if op == "<=" else value >= limit)
        targets.append(dict(name=name, value=value, limit=limit, op=op, passed=passed, detail=detail, issue=15))

    def ratio(a, b):
        return None if a is None or b is None or b == 0 else a / b

    batch = report.get("config", {}).get("batch_size")
    mode = best_decode_mode(report)
    liger = {r["context"]: r["latency_s"] for r in rows(report, "decode", model="liger", mode=mode)} if mode else {}
    upto = [lat for c, lat in liger.items() if c <= 32768]
    add(f"decode latency up to 32K (batch {batch}, ms)", max(upto) * 1e3 if upto else None, 1.0, "<=",
        f"Liger ({mode}) slowest per-token latency over the contexts <= 32768 measured "
        f"({', '.join(str(c) for c in sorted(liger) if c <= 32768) or 'none'})")
    for context, limit in ((32768, 0.5), (1024, 1.0)):
        teacher, latency = _fastest_teacher(report, context)
        add(f"decode vs strongest teacher at {context} (batch {batch})", ratio(liger.get(context), latency), limit,
            "<=", f"Liger ({mode}) / fastest teacher ({teacher}) per-token latency")
    serve = {r["context"]: r for r in serve_summary(report)}
    s = serve.get(32768, {})
    add("serving throughput at 32768", s.get("throughput_ratio"), 10.0, ">=",
        f"Liger at batch {s.get('liger_max_batch')} / teacher {s.get('teacher')} at batch "
        f"{s.get('teacher_max_batch')}: decode tokens/s, each at its largest batch that fits")
    pre = {(r["model"], r["context"]): r["seconds"] for r in rows(report, "prefill")}
    add("prefill at 2048", ratio(pre.get(("liger", 2048)), pre.get(("teacher", 2048))), 1.0, "<=",
        "Liger / teacher prefill time")
    add("prefill speedup at 32768", ratio(pre.get(("teacher", 32768)), pre.get(("liger", 32768))), 2.5, ">=",
        "teacher / Liger prefill time")
    for B in (8, 32):
        lig, tea = _train_speed(report, B, "liger"), _train_speed(report, B, "teacher")
        add(f"LoRA training throughput (batch {B}, issue 15)", ratio(lig, tea), 1.0, ">=",
            "Liger / teacher tokens/s of a LoRA step, each in its faster mode (eager or CUDA graph)")
        lig_eager, tea_eager = _train_speed(report, B, "liger", "eager"), _train_speed(report, B, "teacher", "eager")
        add(f"LoRA training throughput, eager (batch {B}, issue 15)", ratio(lig_eager, tea_eager), 1.0, ">=",
            "Liger / teacher tokens/s of an eager LoRA step")
    return targets


def format_targets(targets: list[dict]) -> str:
    """The targets as printed lines, grouped by issue: ``[PASS]``, ``[FAIL]`` or ``[n/a ]`` (data missing), value,
    limit, detail."""
    lines, previous = [], None
    for t in targets:
        if t.get("issue", 5) != previous:
            previous = t.get("issue", 5)
            lines.append(f"targets (issue {previous}):")
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[t["passed"]]
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        lines.append(f"  [{mark}] {t['name']}: {value} (target {t['op']} {t['limit']}) - {t['detail']}")
    return "\n".join(lines or ["targets: none"])


if __name__ == "__main__":  # python benchmarks/targets.py bench.json
    with open(sys.argv[1]) as f:
        print(format_targets(evaluate_targets(json.load(f))))
