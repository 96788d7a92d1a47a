"""benchmarks/targets.py: the issue-5 and issue-15 targets computed from a ``liger bench`` report."""

import pytest

from tests.bench.test_report import example_report
from tests.conftest import load_benchmark


def test_targets_from_a_report():
    report = example_report()
    targets = {t["name"]: t for t in load_benchmark("targets").evaluate_targets(report)}
    growth = targets["decode latency growth"]
    assert growth["value"] == pytest.approx(0.05) and growth["passed"]
    assert targets["decode latency vs teacher"]["value"] == pytest.approx(0.07)  # issue 5: the eager teacher
    assert targets["decode memory vs teacher"]["value"] == pytest.approx(4e8 / 14e9)
    assert targets["prefill speedup at longest context"]["value"] == pytest.approx(4.0)
    assert targets["prefill slowdown at 2048"]["value"] == pytest.approx(1.4)
    assert targets["LoRA training throughput (batch 8)"]["passed"] is False
    assert targets["CUDA-graph decode speedup (batch 1)"]["value"] == pytest.approx(5.0)


def test_issue_15_targets_against_the_strongest_teacher():
    report = example_report()
    targets = {t["name"]: t for t in load_benchmark("targets").evaluate_targets(report) if t["issue"] == 15}
    assert targets["decode latency up to 32K (batch 16, ms)"]["value"] == pytest.approx(2.1)
    assert targets["decode latency up to 32K (batch 16, ms)"]["passed"] is False
    at32k = targets["decode vs strongest teacher at 32768 (batch 16)"]
    assert at32k["value"] == pytest.approx(0.5) and at32k["passed"] and "(gqa_graph)" in at32k["detail"]
    assert targets["decode vs strongest teacher at 1024 (batch 16)"]["passed"] is None  # 1024 not measured
    serve = targets["serving throughput at 32768"]
    assert serve["value"] == pytest.approx(50.0) and serve["passed"]
    assert targets["prefill at 2048"]["value"] == pytest.approx(1.4) and targets["prefill at 2048"]["passed"] is False
    assert targets["prefill speedup at 32768"]["passed"]
    assert targets["LoRA training throughput (batch 8, issue 15)"]["value"] == pytest.approx(0.7)
    assert targets["LoRA training throughput (batch 32, issue 15)"]["passed"] is None


def test_format_targets_marks_pass_fail_and_missing():
    targets = load_benchmark("targets")
    report = example_report()
    report["decode"] = [r for r in report["decode"] if r["model"] == "liger"]  # no teacher decoding measured
    lines = targets.format_targets(targets.evaluate_targets(report)).splitlines()
    assert lines[0] == "targets (issue 5):" and "targets (issue 15):" in lines
    assert any(line.startswith("  [n/a ] decode latency vs teacher: - (target <= 0.3)") for line in lines), lines
    assert any(line.startswith("  [PASS] decode latency growth: 0.050") for line in lines), lines
    assert any(line.startswith("  [FAIL] LoRA training throughput (batch 8): 0.700") for line in lines), lines
    assert any(line.startswith("  [n/a ] decode vs strongest teacher at 32768") for line in lines), lines
