"""benchmarks/conversion_loss.py on a tiny random model: one row per setting, the options applied."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_conversion_loss_scores_each_setting(tiny_base, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "loss.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "conversion_loss.py"), "--model", str(tiny_base),
                           "--text", str(text), "--chunks", "2", "--length", "32", "--output", str(out),
                           "gla:", "small:linear_weight=0.1,window_size=8"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["teacher", "gla", "small"]
    assert rows[2]["options"] == {"linear_weight": 0.1, "window_size": 8}
    assert all(r["loss"] > 0 for r in rows) and rows[1]["loss"] != rows[2]["loss"]
    bad = subprocess.run([sys.executable, str(REPO / "benchmarks" / "conversion_loss.py"), "--model", str(tiny_base),
                          "--text", str(text), "--chunks", "1000", "gla:"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "fewer than --chunks x --length" in bad.stderr
