"""liger/bench/report.py on a hand-made report: the estimated decode time."""

import pytest

from liger.bench.report import estimated_decode_time


def example_report() -> dict:
    """A ``liger bench`` report's measurement sections with round numbers."""
    def dec(model, mode, context, latency, memory):
        return dict(model=model, mode=mode, context=context, batch_size=16, latency_s=latency,
                    peak_memory_bytes=memory)

    return {
        "prefill": [dict(model="teacher", context=c, seconds=s) for c, s in ((2048, 0.1), (32768, 4.0))]
        + [dict(model="liger", context=c, seconds=s) for c, s in ((2048, 0.14), (32768, 1.0))],
        "decode": [dec("teacher", "eager", 2048, 0.010, 2e9), dec("teacher", "eager", 32768, 0.030, 14e9),
                   dec("liger", "eager", 2048, 0.020, 4e8), dec("liger", "cuda_graph", 2048, 0.002, 4e8),
                   dec("liger", "cuda_graph", 32768, 0.0021, 4e8)],
        "graph": [dict(mode="eager", compiled=False, batch_size=1, latency_s=0.02),
                  dict(mode="cuda_graph", compiled=True, batch_size=1, latency_s=0.004)],
        "train": [dict(model="teacher", batch_size=8, tokens_per_s=100.0),
                  dict(model="liger", batch_size=8, tokens_per_s=70.0)],
    }


def test_estimated_decode_time_from_a_report():
    report = example_report()
    est = {(e["model"], e["mode"], e["context"]): e["seconds"] for e in estimated_decode_time(report, 128)}
    assert est[("teacher", "eager", 2048)] == pytest.approx(0.010 * (2048 - 128))
    assert est[("teacher", "eager", 32768)] == pytest.approx(0.010 * 1920 + (0.010 + 0.030) / 2 * 30720)
