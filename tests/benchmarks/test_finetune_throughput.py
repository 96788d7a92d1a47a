"""benchmarks/finetune_throughput.py on random weights: both models measured through the training loop."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_finetune_throughput_benchmark_measures_both_models(tmp_path):
    report_path = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "finetune_throughput.py"), "--model", "random:tiny", "--device",
         "cpu", "--length", "32", "--batch-size", "2", "--steps", "2", "--warmup-steps", "1", "--output",
         str(report_path)], capture_output=True, text=True, cwd=tmp_path, timeout=600,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert [r["model"] for r in report["results"]] == ["liger", "teacher"]
    assert all(r["tokens_per_s"] > 0 and len(r["tokens_per_s_steps"]) == 2 for r in report["results"])
    assert report["results"][0]["trainable_parameters"] == report["results"][1]["trainable_parameters"]
    assert report["provenance"]["git_commit"] and report["provenance"]["device_name"]
    assert "Liger / teacher:" in result.stdout
