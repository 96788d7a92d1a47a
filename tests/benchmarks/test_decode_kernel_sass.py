import importlib.util
import re

import pytest

from tests.conftest import load_benchmark

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@needs_triton
def test_the_memory_recipes_step_compiles_for_hopper_and_its_waves_follow_the_split(capsys, monkeypatch):
    """The launch recorded on CPU tensors (the split a GPU would take), compiled for sm_90 without a GPU: the
    report's grid is the split's (B·H sequences-heads × window + state programs) and its waves follow from the
    registers the compile took."""
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    sass = load_benchmark("analysis/decode_kernel_sass")
    assert sass.main(["--recipe", "memory", "--batch-size", "2", "--split", "2", "--window-split", "4"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    found = re.search(r"grid \((\d+), (\d+)\) = (\d+) programs \(NA 4, NR 2, .*sm_90: (\d+) registers a thread x "
                      r"128 threads, .* (\d+) programs an SM -> ([\d.]+) waves on 132 SMs", line)
    assert found, line
    rows, cols, programs, regs, per_sm, waves = (float(x) for x in found.groups())
    assert (rows, cols, programs) == (6, 6, 36)  # 2 sequences x 3 KV heads, 4 window + 2 state programs
    assert 32 <= regs <= 255 and per_sm == min(65536 // (regs * 128), 16)
    assert waves == pytest.approx(programs / (per_sm * 132), abs=0.01)

