"""liger/bench/report.py on a hand-made report: the estimated decode time, the strongest teacher, the ratios against
each teacher, the serving summary, the tables and the plots."""

import pytest

from liger.bench.report import (
    decode_ratios,
    estimated_decode_time,
    format_report,
    plot_report,
    plot_serving,
    serve_summary,
    strongest_teacher,
    teacher_modes,
)


def example_report() -> dict:
    """A ``liger bench`` report's measurement sections with round numbers (three teachers, serving at 32K)."""
    def dec(model, mode, context, latency, memory):
        return dict(model=model, mode=mode, context=context, batch_size=16, latency_s=latency,
                    peak_memory_bytes=memory)

    def serve(model, context, best, tokens_per_s, teacher="gqa_graph"):
        probes = [dict(batch_size=b, fits=b <= best, tokens_per_s=tokens_per_s * b / best) for b in (1, 2, best)]
        probes.append(dict(batch_size=best + 1, fits=False, error="out of memory"))
        return dict(model=model, context=context, teacher=teacher if model == "teacher" else None, max_batch=best,
                    first_failing=best + 1, stopped="bracket", tokens_per_s=tokens_per_s, probes=probes)

    return {
        "provenance": {"device_name": "test"},
        "config": {"dtype": "bfloat16", "batch_size": 16, "teachers": ["eager", "static", "gqa_graph"]},
        "prefill": [dict(model="teacher", context=c, seconds=s) for c, s in ((2048, 0.1), (32768, 4.0))]
        + [dict(model="liger", context=c, seconds=s) for c, s in ((2048, 0.14), (32768, 1.0))],
        "decode": [dec("teacher", "eager", 2048, 0.010, 2e9), dec("teacher", "eager", 32768, 0.030, 14e9),
                   dec("teacher", "static", 2048, 0.003, 2.5e9), dec("teacher", "static", 32768, 0.0252, 14.5e9),
                   dec("teacher", "gqa_graph", 2048, 0.0012, 2e9), dec("teacher", "gqa_graph", 32768, 0.0042, 13e9),
                   dict(model="teacher", mode="static", context=65536, batch_size=16, error="out of memory"),
                   dec("liger", "eager", 2048, 0.020, 4e8), dec("liger", "cuda_graph", 2048, 0.002, 4e8),
                   dec("liger", "cuda_graph", 32768, 0.0021, 4e8)],
        "graph": [dict(mode="eager", compiled=False, batch_size=1, latency_s=0.02, captured=True, context=128),
                  dict(mode="cuda_graph", compiled=True, batch_size=1, latency_s=0.004, captured=True, context=128)],
        "serve": [serve("teacher", 32768, 180, 6000.0), serve("liger", 32768, 20000, 300000.0)],
        "train": [dict(model="teacher", batch_size=8, length=1024, tokens_per_s=100.0, step_s=0.1,
                       peak_memory_bytes=1e9),
                  dict(model="liger", batch_size=8, length=1024, tokens_per_s=70.0, step_s=0.15,
                       peak_memory_bytes=1e9)],
        "errors": [], "skipped": [], "checks": None,
    }


def test_estimated_decode_time_from_a_report():
    report = example_report()
    est = {(e["model"], e["mode"], e["context"]): e["seconds"] for e in estimated_decode_time(report, 128)}
    assert est[("teacher", "eager", 2048)] == pytest.approx(0.010 * (2048 - 128))
    assert est[("teacher", "eager", 32768)] == pytest.approx(0.010 * 1920 + (0.010 + 0.030) / 2 * 30720)


def test_strongest_teacher_first_and_ratios_against_each():
    report = example_report()
    assert strongest_teacher(report) == "gqa_graph"  # fastest at 32768, the longest context all three reached
    assert teacher_modes(report) == ["gqa_graph", "static", "eager"]
    ratios = decode_ratios(report)
    assert [(r["teacher"], r["context"]) for r in ratios] == [(t, c) for t in ("gqa_graph", "static", "eager")
                                                               for c in (2048, 32768)]
    at32k = {r["teacher"]: r for r in ratios if r["context"] == 32768}
    assert at32k["gqa_graph"]["latency_ratio"] == pytest.approx(0.5)
    assert at32k["eager"]["latency_ratio"] == pytest.approx(0.07)
    assert at32k["static"]["memory_ratio"] == pytest.approx(4e8 / 14.5e9)
    report["decode"] = [r for r in report["decode"] if r["mode"] != "gqa_graph"]
    assert strongest_teacher(report) == "static"


def test_serve_summary_and_tables(tmp_path):
    report = example_report()
    (s,) = serve_summary(report)
    assert (s["teacher"], s["teacher_max_batch"], s["liger_max_batch"]) == ("gqa_graph", 180, 20000)
    assert s["throughput_ratio"] == pytest.approx(50.0)
    text = format_report(report)
    assert "strongest teacher: gqa_graph" in text
    header = next(line for line in text.splitlines() if line.lstrip().startswith("context |") and "L eager" in line)
    assert header.index("gqa_graph") < header.index("static") < header.index("eager (L/T)")  # strongest first
    row = next(line for line in text.splitlines() if line.lstrip().startswith("32768 |") and "0.50x" in line)
    assert "4.20" in row and "25.20" in row and "30.00" in row
    assert "teacher/static@65536: out of memory" in text
    assert "batch 180, 6,000 tokens/s | Liger: batch 20,000, 300,000 tokens/s | 50.0x" in text
    plot_report(report, tmp_path / "bench.png")
    assert plot_serving(report, tmp_path / "bench_serve.png")
    assert (tmp_path / "bench_serve.png").stat().st_size > 0
    assert not plot_serving(dict(report, serve=[]), tmp_path / "none.png")
