"""``liger bench`` on a toy model on the CPU: the report's structure, the plot and the table, the config (YAML,
flags, overrides) and its errors (the numbers themselves are meaningless here; the GPU run is
benchmarks/gpu_check.py)."""

import json

import pytest

from liger.cli import main
from tests.conftest import load_benchmark


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
    targets = load_benchmark("targets")
    assert targets.format_targets(targets.evaluate_targets(report)).startswith("targets (issue 5):")
    if train:
        assert {(r["model"], r["batch_size"], r["mode"]) for r in report["train"]} == {("teacher", 1, "eager"),
                                                                                       ("liger", 1, "eager")}
        assert all(r["tokens_per_s"] > 0 for r in report["train"])
        # the CUDA-graph step (train_modes' default includes it) is measured on CUDA only, and says so
        assert {s for s in report["skipped"] if "cuda_graph" in s} == {
            f"train {m} batch 1 (cuda_graph): CUDA graphs need a CUDA device" for m in ("teacher", "liger")}
        assert "train   liger batch  1 x 16      eager:" in printed
        return
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert report["checks"]["passed"] and report["checks"]["prefill_logits_rel_err"] < 1e-4
    assert {(r["model"], r["context"]) for r in report["prefill"]} == {(m, c) for m in ("teacher", "liger")
                                                                         for c in (24, 48)}
    modes = {(r["model"], r["mode"]) for r in report["decode"]}
    assert modes == {("teacher", "eager"), ("teacher", "static"), ("teacher", "gqa_graph"), ("liger", "eager"),
                     ("liger", "static")}
    assert report["strongest_teacher"] in ("eager", "static", "gqa_graph")
    assert {(r["teacher"], r["context"]) for r in report["ratios"]} == {(t, c) for t in ("eager", "static", "gqa_graph")
                                                                        for c in (24, 48)}
    assert f"strongest teacher: {report['strongest_teacher']}" in printed
    assert {r["mode"] for r in report["graph"]} == {"eager", "static"}
    assert all(r["latency_s"] > 0 and len(r["latency_s_runs"]) == 2 for r in report["decode"])


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
    (["bench", "--teachers", "eager,compiled"], "teachers[1] must be one of eager, static, gqa_graph"),
    (["bench", "--device", "cpu", "--serve"], "serve_memory_limit_gib must be set to search for the largest batch"),
    (["bench", "serve_tolerance=1.5"], "serve_tolerance must be in [0, 1)"),
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


def test_bench_serving_throughput_end_to_end_on_cpu(tmp_path, capsys):
    """The serving section on a CPU with a memory limit standing in for the device's: the exact largest batch
    (tolerance 0) for the teacher, computed here from its cache's geometry, and for Liger the boundary probed on
    both sides; the plot of tokens/s against batch size."""
    import torch

    from liger.bench.serve import weight_bytes
    from liger.bench.teachers import cache_slots
    from liger.loading import load_pretrained

    teacher = load_pretrained("random:tiny", torch.float32)
    c = teacher.config
    contexts, steps = (16, 40), 1
    slots = cache_slots(contexts[0] + steps + 1)  # warm-up steps 0, one timed step, one spare slot
    per_sequence = c.num_hidden_layers * 2 * c.num_key_value_heads * slots * c.head_dim * 4 + slots
    limit = weight_bytes(teacher) + 8 + 5 * per_sequence + per_sequence // 2  # 5 sequences at the first context
    out = tmp_path / "bench.json"
    args = ["bench", "--model", "random:tiny", "--device", "cpu", "--dtype", "float32", "--no-decode", "--serve",
            "--serve-contexts", ",".join(map(str, contexts)), "--serve-steps", str(steps), "--warmup-steps", "0",
            "--serve-memory-limit-gib", repr(limit / 2**30), "--serve-max-batch", "32", "serve_tolerance=0",
            "--window-size", "8", "--output", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["errors"] == []
    entries = {(e["model"], e["context"]): e for e in report["serve"]}
    assert set(entries) == {(m, ctx) for m in ("teacher", "liger") for ctx in contexts}
    first = entries[("teacher", contexts[0])]
    assert (first["max_batch"], first["first_failing"], first["stopped"]) == (5, 6, "bracket")
    assert first["teacher"] == "gqa_graph"
    for e in report["serve"]:
        fits = {p["batch_size"]: p["fits"] for p in e["probes"]}
        assert fits[e["max_batch"]] and e["tokens_per_s"] > 0
        if e["stopped"] == "bracket":
            assert fits[e["max_batch"] + 1] is False
        assert all(p["footprint_bytes"] <= limit for p in e["probes"] if p["fits"])
        assert all(p["error"] for p in e["probes"] if not p["fits"])
    # the teacher's cache grows with the context and Liger's state does not
    assert entries[("teacher", contexts[1])]["max_batch"] < first["max_batch"]
    assert entries[("liger", contexts[1])]["max_batch"] == entries[("liger", contexts[0])]["max_batch"] > 5
    assert (tmp_path / "bench_serve.png").stat().st_size > 0
    assert "serving throughput" in capsys.readouterr().out


def test_every_bench_key_is_documented():
    """docs/gpu.md carries the table of BenchConfig's keys (regenerate it with bench_config_reference())."""
    from pathlib import Path

    from liger.bench.config import bench_config_reference

    docs = (Path(__file__).resolve().parents[2] / "docs" / "gpu.md").read_text()
    missing = [row for row in bench_config_reference().splitlines()[2:] if row not in docs]
    assert not missing, missing


def test_bench_without_the_decode_mode_comparison(tmp_path):
    """decode_modes=false: the per-context rows without the batch-1 eager/static/graph comparison (which a short
    GPU lease cannot always afford)."""
    out = tmp_path / "bench.json"
    args = ["bench", "--model", "random:tiny", "--device", "cpu", "--dtype", "float32", "--batch-size", "2",
            "--context", "24", "--decode-steps", "1", "--warmup-steps", "0", "--prefill-repeats", "1",
            "--prompt-length", "8", "--teachers", "eager", "--output", str(out), "decode_modes=false"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["graph"] == [] and report["errors"] == []
    assert {(r["model"], r["context"]) for r in report["decode"]} >= {("teacher", 24), ("liger", 24)}
