import re

import torch

from tests.conftest import load_benchmark


def test_mask_sees_the_window_the_sinks_and_the_chosen_tokens_causally():
    mask = load_benchmark("oracle_memory").oracle_mask(8, window=2, sinks=1, extra=[3, 6])[0, 0]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    for i in range(8):
        for j in range(i + 1):
            expected[i, j] = i - j < 2 or j < 1 or j in (3, 6)
    assert torch.equal(mask, expected)


def _nll(out: str, name: str) -> float:
    return float(re.search(rf"^{re.escape(name)}\s+answer NLL\s+(\S+)", out, re.M).group(1))


def test_a_window_as_long_as_the_prompt_is_the_full_teacher(tiny_base, capsys):
    oracle = load_benchmark("oracle_memory")
    assert oracle.main(["--model", str(tiny_base), "--length", "700", "--masks", "full,swa,needle,digits",
                        "--window", "1000"]) == 0
    out = capsys.readouterr().out
    full = _nll(out, "full")
    assert all(abs(_nll(out, name) - full) < 1e-4 for name in ("swa", "needle", "digits")), out
    assert "needle tokens" in out


def test_a_short_window_changes_the_answer_and_the_needle_is_found(tiny_base, capsys):
    oracle = load_benchmark("oracle_memory")
    assert oracle.main(["--model", str(tiny_base), "--length", "700", "--masks", "full,swa,needle",
                        "--window", "8"]) == 0
    out = capsys.readouterr().out
    assert abs(_nll(out, "swa") - _nll(out, "full")) > 1e-3
    first, last = map(int, re.search(r"needle tokens (\d+)\.\.(\d+)", out).groups())
    assert 0 < first < last < 700


def test_bad_input_is_one_line_and_a_non_zero_exit(tiny_base, capsys):
    oracle = load_benchmark("oracle_memory")
    assert oracle.main(["--model", str(tiny_base), "--masks", "nope"]) == 2
    assert oracle.main(["--model", str(tiny_base), "--length", "50"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "oracle_memory" in line or "Error" in line]
    assert len(errors) == 2 and all(line.startswith("oracle_memory: error: ") for line in errors), errors
