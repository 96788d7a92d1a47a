"""benchmarks/cpu_window.py on tiny sizes: both window ops timed, their difference recorded, the JSON written;
bad input is a one-line error."""

import json

import pytest

from tests.conftest import load_benchmark


def test_cpu_window_times_both_ops_and_a_prefill(tmp_path):
    out = tmp_path / "cw.json"
    assert load_benchmark("cpu_window").main([
        "--length", "48", "--windows", "8", "--batch-size", "2", "--repeats", "1", "--model", "random:tiny",
        "--prefill-length", "40", "--recipes", "paper,memory", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    (op,) = report["op"]
    assert op["window"] == 8 and op["rel_output"] < 1e-5 and op["rel_grads"] < 1e-5
    assert all(op[f"{b}_{m}_ms"] > 0 for b in ("torch", "sdpa") for m in ("forward", "forward_backward"))
    assert [r["recipe"] for r in report["prefill"]] == ["paper", "memory"]
    assert all(r["torch_s"] > 0 and r["sdpa_s"] > 0 for r in report["prefill"])


@pytest.mark.parametrize("args", [["--recipes", "bogus"], ["--windows", "a"], ["--repeats", "0"]])
def test_cpu_window_rejects_bad_input_in_one_line(args, tmp_path, capsys):
    assert load_benchmark("cpu_window").main([*args, "--output", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cpu_window: error:")
    assert not (tmp_path / "x.json").exists()
