import importlib.util
import json
import textwrap

import pytest

from tests.conftest import load_benchmark, run_in_triton_interpreter

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def test_each_split_is_timed_and_the_default_comes_back(tmp_path, capsys):
    from liger.models import triton_decode

    sweep = load_benchmark("decode_split")
    out = tmp_path / "split.json"
    assert sweep.main(["--model", "random:tiny", "--recipe", "memory", "--option", "window_size=8",
                       "--option", "global_cache_size=4", "--context", "40", "--batch-size", "2", "--splits",
                       "auto,2", "--window-splits", "auto,4", "--key-blocks", "auto,1024", "--steps", "2", "--warmup",
                       "1", "--mode", "static",
                       "--device", "cpu", "--dtype", "float32", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(r["key_block"], r["split"], r["window_split"]) for r in report["rows"]] == [
        (kb, s, w) for kb in (None, 1024) for s in (None, 2) for w in (None, 4)]
    assert all(r["median_ms"] > 0 and len(r["step_ms"]) == 2 for r in report["rows"])
    assert report["options"] == {"window_size": 8, "global_cache_size": 4} and report["recipe"] == "memory"
    assert out.with_suffix(".png").stat().st_size > 0
    assert "split 2 window_split 4 key_block 1024:" in capsys.readouterr().out
    assert all(r["taken"] == {} for r in report["rows"])  # (on a CPU without the interpreter: the PyTorch step)
    # the module's defaults restored
    assert triton_decode.SPLIT is None and triton_decode.WINDOW_SPLIT is None and triton_decode.KEY_BLOCK == 4096
    assert triton_decode._split.__name__ == "_split" and triton_decode._window_split.__name__ == "_window_split"


def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, capsys):
    sweep = load_benchmark("decode_split")
    common = ["--model", "random:tiny", "--device", "cpu", "--mode", "static", "--output", str(tmp_path / "x.json")]
    assert sweep.main(common + ["--splits", "3"]) == 2
    assert sweep.main(common + ["--option", "window_size"]) == 2
    assert sweep.main(common + ["--recipe", "nosuch"]) == 2
    assert sweep.main(["--device", "cpu"]) == 2  # (cuda_graph needs CUDA)
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("decode_split: error: ") for line in errors), errors


@needs_triton
def test_the_launchers_split_is_recorded_in_the_interpreter(tmp_path):
    """Under Triton's CPU interpreter the fused step runs, and each row says what its launcher took: the split
    asked for, and the window programs (WINDOW_SPLIT, or the split off CUDA)."""
    out = tmp_path / "split.json"
    worst = run_in_triton_interpreter(textwrap.dedent(f'''
        import json
        from tests.conftest import load_benchmark
        sweep = load_benchmark("decode_split")
        assert sweep.main(["--model", "random:tiny", "--recipe", "memory", "--option", "window_size=8",
                           "--option", "global_cache_size=4", "--context", "20", "--batch-size", "2", "--splits",
                           "1,2", "--window-splits", "auto,4", "--steps", "1", "--warmup", "0", "--mode", "static",
                           "--device", "cpu", "--dtype", "float32", "--output", "{out}"]) == 0
        print("WORST", [r["taken"] for r in json.load(open("{out}"))["rows"]])
    '''))
    assert worst == [{"split": 1, "window_programs": 1}, {"split": 1, "window_programs": 4},
                     {"split": 2, "window_programs": 2}, {"split": 2, "window_programs": 4}], worst
