"""``liger bench`` on a toy model on the CPU: the report's structure, the targets table and the plot (the
numbers themselves are meaningless here; the GPU run is in benchmarks/gpu_check.py)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from liger.bench.report import estimated_decode_time
from liger.cli import main

ROOT = Path(__file__).resolve().parents[1]


def benchmark_script(name: str):
    """``benchmarks/NAME.py`` imported as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("train", [False, True])
def test_bench_writes_report_plot_and_table(tmp_path, capsys, train):
    out = tmp_path / "bench.json"
    args = ["bench", "--model", "random:tiny", "--device", "cpu", "--dtype", "float32", "--batch-size", "2",
            "--context", "24,48", "--decode-steps", "2", "--warmup-steps", "1", "--prefill-repeats", "1",
            "--prompt-length", "8", "--output", str(out), "--window-size", "8", "--num-sink-tokens", "2"]
    if train:
        args += ["--no-decode", "--train", "--train-batch-sizes", "1", "--train-length", "16", "--train-steps", "1"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["provenance"]["torch"] and "git_commit" in report["provenance"]
    assert report["models"]["liger"]["variant"] == "gla" and report["models"]["liger"]["window_size"] == 8
    assert report["errors"] == []
    printed = capsys.readouterr().out
    assert "targets" not in printed  # the library reports numbers; targets live with the benchmark scripts
    targets = benchmark_script("targets")
    assert targets.format_targets(targets.evaluate_targets(report)).startswith("targets (issue 5):")
    if train:
        assert {(r["model"], r["batch_size"]) for r in report["train"]} == {("teacher", 1), ("liger", 1)}
        assert all(r["tokens_per_s"] > 0 for r in report["train"])
        return
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert report["checks"]["passed"] and report["checks"]["prefill_logits_rel_err"] < 1e-4
    assert {(r["model"], r["context"]) for r in report["prefill"]} == {(m, c) for m in ("teacher", "liger")
                                                                         for c in (24, 48)}
    modes = {(r["model"], r["mode"]) for r in report["decode"]}
    assert modes == {("teacher", "eager"), ("liger", "eager"), ("liger", "static")}
    assert {r["mode"] for r in report["graph"]} == {"eager", "static"}
    assert all(r["latency_s"] > 0 and len(r["latency_s_runs"]) == 2 for r in report["decode"])


def test_targets_and_estimated_decode_time_from_a_report():
    def dec(model, mode, context, latency, memory):
        return dict(model=model, mode=mode, context=context, batch_size=16, latency_s=latency,
                    peak_memory_bytes=memory)

    report = {
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
    targets = {t["name"]: t for t in benchmark_script("targets").evaluate_targets(report)}
    growth = targets["decode latency growth"]
    assert growth["value"] == pytest.approx(0.05) and growth["passed"]
    assert targets["decode latency vs teacher"]["value"] == pytest.approx(0.07)
    assert targets["decode memory vs teacher"]["value"] == pytest.approx(4e8 / 14e9)
    assert targets["prefill speedup at longest context"]["value"] == pytest.approx(4.0)
    assert targets["prefill slowdown at 2048"]["value"] == pytest.approx(1.4)
    assert targets["LoRA training throughput (batch 8)"]["passed"] is False
    assert targets["CUDA-graph decode speedup (batch 1)"]["value"] == pytest.approx(5.0)
    est = {(e["model"], e["mode"], e["context"]): e["seconds"] for e in estimated_decode_time(report, 128)}
    assert est[("teacher", "eager", 2048)] == pytest.approx(0.010 * (2048 - 128))
    assert est[("teacher", "eager", 32768)] == pytest.approx(0.010 * 1920 + (0.010 + 0.030) / 2 * 30720)


def test_half_precision_check_measures_both_paths_against_float32(monkeypatch):
    """bf16: when the fast path and the reference ops differ by more than the limit, both are compared with the
    reference ops in float32; a fast path as close to float32 as the reference passes, a worse one fails."""
    import liger
    from liger.bench import measure
    from liger.bench.report import format_report
    from tests.conftest import tiny_teacher

    model = liger.convert(tiny_teacher("llama", dtype=torch.bfloat16)).eval()
    generator = torch.Generator().manual_seed(0)
    monkeypatch.setattr(measure, "HALF_PRECISION_LIMIT", 0.0)  # always go on to the float32 comparison
    report = {}
    with torch.no_grad():
        measure._check_fast_path(model, None, torch.device("cpu"), generator, report)
    check = report["checks"]
    assert check["float32_prefill_rel_err"]["reference"] > 0  # bf16 rounding, measured
    assert check["float32_prefill_rel_err"]["fast"] == check["float32_prefill_rel_err"]["reference"]  # same ops
    assert check["passed"]

    real = measure._path_logits

    def noisy(model, ids, mask, pos, T, steps, backend, mode):
        out = real(model, ids, mask, pos, T, steps, backend, mode)
        if backend is None and model.dtype == torch.bfloat16:  # the "fast" path: 5% relative noise
            return tuple(x + 0.05 * x.std() * torch.randn_like(x) if torch.is_tensor(x) else x for x in out)
        return out

    monkeypatch.setattr(measure, "_path_logits", noisy)
    report = {}
    with torch.no_grad():
        measure._check_fast_path(model, None, torch.device("cpu"), generator, report)
    assert not report["checks"]["passed"]
    empty = {key: [] for key in ("prefill", "decode", "graph", "train", "errors", "skipped")}
    printed = format_report(dict(empty, provenance={}, config={"dtype": "bfloat16", "batch_size": 1},
                                            models={}, profiles={}, checks=report["checks"]))
    assert "vs the reference ops in float32" in printed and printed.splitlines()[2].endswith("FAIL")


def test_bench_config_yaml_flags_and_overrides(tmp_path, capsys):
    """--config YAML < flags < key=value overrides, through the same typed machinery as the run config; the report
    records the resolved config, the LoRA section included."""
    from liger.bench.config import BenchConfig, bench_config_reference
    from liger.cli import build_parser
    from liger.commands.bench import resolve_config

    path = tmp_path / "bench.yaml"
    path.write_text("model: random:tiny\ndevice: cpu\nbatch_size: 4\ncontexts: [48, 24, 48]\nlora: {r: 4}\n"
                    "liger_options: {window_size: 8}\n")
    args = build_parser().parse_args(["bench", "--config", str(path), "--batch-size", "2", "--num-sink-tokens", "2",
                                      "batch_size=3", "lora.target_modules=[q_proj]", "prefill_repeats=1"])
    cfg = resolve_config(args)
    assert isinstance(cfg, BenchConfig)
    assert (cfg.model, cfg.device, cfg.batch_size, cfg.prefill_repeats) == ("random:tiny", "cpu", 3, 1)
    assert cfg.contexts == [24, 48]  # sorted, once each
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (4, 8.0, ["q_proj"])
    assert cfg.liger_options == {"window_size": 8, "num_sink_tokens": 2}
    assert "| `lora.r` | `int` | `8` |" in bench_config_reference()


@pytest.mark.parametrize("args,message", [
    (["bench", "batch_sise=2"], "unknown config key 'batch_sise'"),
    (["bench", "--batch-size", "0"], "batch_size must be >= 1, got 0"),
    (["bench", "lora.r=0"], "lora.r must be >= 1, got 0"),
    (["bench", "--device", "cpu", "dtype=float64"], "dtype must be one of bfloat16, float16, float32"),
    (["bench", "--config", "/no/such/bench.yaml"], "no config file '/no/such/bench.yaml'"),
])
def test_bench_config_errors_are_one_line(capsys, args, message):
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("liger bench: error: ") and message in err[0], err


def test_bench_help_shows_each_default_once():
    from liger.cli import build_parser

    parser = build_parser()
    bench = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "bench")[1]
    for action in bench._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings
            shown = action.help.count("(default:") + action.help.count("Default:")
            assert shown <= 1, (action.option_strings, action.help)
    assert "(default: None)" not in bench.format_help()
