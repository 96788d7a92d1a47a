"""One-shot GPU check (issues 5 and 15): correctness of the CUDA path first, then the speed benchmark against each
teacher, the batch-1 decode comparison, serving throughput at long context, then a summary.

Run from the repository root on a CUDA machine (fla installed, e.g. from carried wheels):

    python benchmarks/gpu_check.py --out "$OUT"

Steps, each in its own subprocess with its own time limit (a crash or hang in one does not lose the others),
within ``--budget`` seconds overall (default 560):

1. ``pytest -m gpu tests/gpu``: fla kernels through liger's adapters, compiled FlexAttention, the model on
   the GPU path against the PyTorch reference ops (float32 < 1e-4, bfloat16 < 1e-2, left-padded batches,
   gradients), CUDA-graph decoding against eager decoding (identical tokens);
2. ``liger bench`` on random weights with SmolLM2-135M's architecture (no download; ``--model smollm2`` for the
   real weights, ``--bench-args`` for more bench flags), bf16, batch 16, contexts 1K..32K, Liger against the three
   teachers (HF eager, HF static cache + torch.compile, the hand-written GQA step in a CUDA graph), decode modes at
   batch 1, LoRA training at T=1024; JSON + PNG written as it goes (``bench.json``);
3. the same decode comparison at batch 1, contexts 1K and 32K, against the strongest teacher only (``gqa_graph``:
   the others' compilation took the whole step's budget in run H of docs/gpu.md) (``bench_b1.json``; issue 15
   states its decode targets at batch 16 and batch 1);
4. serving throughput (``--serve``): the largest batch that fits and its decode tokens/s at 4K, 32K and 128K,
   the GQA teacher and Liger (``serve.json``, ``serve_serve.png``), bounded by ``--serve-budget`` seconds;
5. a summary: test results, the tables, and the targets of both issues marked PASS/FAIL.

Steps 3 and 4 get their own budgets (``--batch1-budget``, ``--serve-budget``), reserved from the total before
step 2 starts; ``--skip-tests``, ``--skip-bench``, ``--skip-batch1`` and ``--skip-serve`` leave steps out, so the
check can be spread over several calls of a time-limited machine (docs/gpu.md).

Files written to ``--out``: gpu_tests.log, bench.log, bench.json, bench.png, bench_b1.{log,json},
serve.{log,json}, serve_serve.png, profile.txt, summary.txt.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str], logfile: str, timeout: float, env=None) -> tuple[int | None, float]:
    """Run ``cmd`` with output to ``logfile``; returns (exit code or None on timeout, seconds)."""
    start = time.time()
    with open(logfile, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            code = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
    return code, time.time() - start


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def environment() -> list[str]:
    import torch

    out = [f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}"]
    if torch.cuda.is_available():
        out.append(f"device: {torch.cuda.get_device_name(0)}, "
                   f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
    else:
        out.append("device: NO CUDA DEVICE")
    for name in ("transformers", "triton", "fla", "peft", "matplotlib"):
        spec = importlib.util.find_spec(name)
        version = "MISSING"
        if spec is not None:
            try:
                version = getattr(__import__(name), "__version__", "installed")
            except Exception as err:  # a broken install is worth reporting, not crashing on
                version = f"import error: {type(err).__name__}: {err}"
        out.append(f"{name}: {version}")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        out.append(f"liger commit: {commit.stdout.strip() or 'unknown'}")
    except OSError:
        pass
    return out


def summarize_tests(path: str) -> list[str]:
    """The pytest summary line and each failure; from the per-test lines when pytest was stopped early."""
    text = open(path, errors="replace").read() if os.path.exists(path) else ""
    summary = [ln for ln in text.splitlines() if re.search(r"=+ .*\d+ (passed|failed|error|skipped).* =+", ln)]
    results = re.findall(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED)", text, flags=re.M)
    if summary:
        lines = [summary[-1].strip("= ")]
    else:
        counts = {s: sum(1 for _, r in results if r == s) for s in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
        lines = ["stopped before the end: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)]
    lines += [f"  {r}: {name}" for name, r in results if r in ("FAILED", "ERROR")]
    errors = [ln for ln in text.splitlines() if ln.startswith(("FAILED ", "ERROR ")) and " - " in ln]
    lines += ["    " + ln.split(" - ", 1)[1][:200] for ln in errors]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    parser.add_argument("--budget", type=float, default=560.0, help="seconds for the whole check")
    parser.add_argument("--test-budget", type=float, default=200.0, help="seconds at most for the tests")
    parser.add_argument("--smoke", action="store_true",
                        help="check this script's plumbing on a CPU (toy model, tiny sizes; numbers meaningless)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--skip-batch1", action="store_true", help="leave out the batch-1 decode comparison")
    parser.add_argument("--skip-serve", action="store_true", help="leave out the serving-throughput search")
    parser.add_argument("--batch1-budget", type=float, default=120.0, help="seconds for the batch-1 decode step")
    parser.add_argument("--serve-budget", type=float, default=150.0, help="seconds for the serving step")
    parser.add_argument("--serve-contexts", default="4096,32768,131072")
    parser.add_argument("--contexts", default="1024,2048,4096,8192,16384,32768")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--autotune", default="fast", choices=["fast", "full"])
    parser.add_argument("--model", default="random:smollm2",
                        help="the model of every speed step: random:smollm2 (no download) or smollm2 (real weights)")
    parser.add_argument("--bench-args", default="",
                        help="more `liger bench` arguments for every speed step, e.g. '--decode-backend triton'")
    args = parser.parse_args()
    start = time.time()
    os.makedirs(args.out, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")

    header = environment()
    for line in header:
        log(line)
    has_fla = importlib.util.find_spec("fla") is not None or args.smoke

    test_lines = ["tests: skipped (--skip-tests)"]
    if not args.skip_tests:
        reserve_all = (0 if args.skip_bench else 240) + (0 if args.skip_batch1 else args.batch1_budget) \
            + (0 if args.skip_serve else args.serve_budget)
        limit = min(args.test_budget, args.budget - (time.time() - start) - reserve_all)
        log(f"step 1/4: pytest -m gpu tests/gpu (limit {limit:.0f} s)")
        code, secs = run([sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-v", "--tb=short", "-rfE",
                          "--durations=10", "-p", "no:cacheprovider"], os.path.join(args.out, "gpu_tests.log"),
                         limit, env)
        status = "TIMED OUT" if code is None else f"exit {code}"
        found = summarize_tests(os.path.join(args.out, "gpu_tests.log"))
        test_lines = [f"tests ({status}, {secs:.0f} s): {found[0]}"] + found[1:]
        for line in test_lines:
            log(line)
        if code is None:
            print(tail(os.path.join(args.out, "gpu_tests.log")), flush=True)

    bench_json = os.path.join(args.out, "bench.json")
    b1_json = os.path.join(args.out, "bench_b1.json")
    serve_json = os.path.join(args.out, "serve.json")
    reserve = (0 if args.skip_batch1 else args.batch1_budget) + (0 if args.skip_serve else args.serve_budget)
    statuses = []

    def bench_step(name, cmd, smoke_cmd, logname, limit):
        """One ``liger bench`` subprocess; ``--time-budget`` leaves it 45 s to write its report."""
        if not has_fla:
            statuses.append(f"{name}: NOT RUN: fla is not importable, the benchmark would measure the PyTorch "
                            "fallback")
            log(statuses[-1])
            return
        cmd = smoke_cmd if args.smoke else cmd
        cmd = [sys.executable, "-m", "liger", "bench", *cmd, "--time-budget", f"{max(20.0, limit - 45):.0f}"]
        log(f"{name}: {' '.join(cmd[2:])} (limit {limit:.0f} s)")
        code, secs = run(cmd, os.path.join(args.out, logname), limit, env)
        statuses.append(f"{name}: {'TIMED OUT' if code is None else f'exit {code}'} after {secs:.0f} s")
        log(statuses[-1])
        if code != 0:
            print(tail(os.path.join(args.out, logname), 25), flush=True)

    tiny = ["--model", "random:tiny", "--device", "cpu", "--dtype", "float32", "--decode-steps", "2",
            "--warmup-steps", "1", "--prefill-repeats", "1", "--prompt-length", "16"]
    if args.skip_bench:
        statuses.append("bench: skipped (--skip-bench)")
    else:
        limit = args.budget - (time.time() - start) - reserve - 15
        bench_step("step 2/4 bench",
                   ["--model", args.model, *args.bench_args.split(), "--device", "cuda", "--dtype", "bfloat16",
                    "--batch-size",
                    str(args.batch_size), "--prompt-length", "128", "--context", args.contexts, "--decode-steps", "16",
                    "--train", "--train-batch-sizes", "8,32", "--train-length", "1024", "--autotune", args.autotune,
                    "--profile", "--output", bench_json],
                   [*tiny, "--batch-size", "2", "--context", "32,64", "--train", "--train-batch-sizes", "1",
                    "--train-length", "32", "--train-steps", "2", "--profile", "--output", bench_json],
                   "bench.log", limit)
    if args.skip_batch1:
        statuses.append("batch-1 decode: skipped (--skip-batch1)")
    else:
        limit = min(args.batch1_budget, args.budget - (time.time() - start)
                    - (0 if args.skip_serve else args.serve_budget) - 15)
        bench_step("step 3/4 batch-1 decode",
                   ["--model", args.model, *args.bench_args.split(), "--device", "cuda", "--dtype", "bfloat16",
                    "--batch-size", "1",
                    "--prompt-length", "128", "--context", "1024,32768", "--decode-steps", "16",
                    "--graph-steps", "8", "--teachers", "gqa_graph", "--autotune", args.autotune,
                    "--output", b1_json],
                   [*tiny, "--batch-size", "1", "--context", "32", "--graph-steps", "2", "--output", b1_json],
                   "bench_b1.log", limit)
    if args.skip_serve:
        statuses.append("serve: skipped (--skip-serve)")
    else:
        limit = min(args.serve_budget, args.budget - (time.time() - start) - 10)
        bench_step("step 4/4 serving throughput",
                   ["--model", args.model, *args.bench_args.split(), "--device", "cuda", "--dtype", "bfloat16",
                    "--no-decode", "--serve",
                    "--serve-contexts", args.serve_contexts, "--autotune", args.autotune, "--output", serve_json],
                   [*tiny, "--no-decode", "--serve", "--serve-contexts", "32,64", "--serve-memory-limit-gib", "0.004",
                    "--serve-max-batch", "16", "--output", serve_json],
                   "serve.log", limit)
    bench_status = "\n".join(statuses)
    lines = ["", "=" * 100, "GPU CHECK SUMMARY (issues 5 and 15)", *header, "", *test_lines, "", bench_status]
    reports = {}
    for name, path in (("bench", bench_json), ("batch 1", b1_json), ("serve", serve_json)):
        if os.path.exists(path):
            with open(path) as f:
                reports[name] = json.load(f)
    if reports:
        sys.path.insert(0, ROOT)
        from targets import evaluate_targets, format_targets, serving_targets  # benchmarks/targets.py

        from liger.bench.report import format_report, plot_report, plot_serving

        main_report = reports.get("bench")
        if main_report and main_report.get("profiles"):
            with open(os.path.join(args.out, "profile.txt"), "w") as f:
                for label, table in main_report["profiles"].items():
                    f.write(f"== {label} ==\n{table}\n\n")
        for name, report in reports.items():
            stem = {"bench": "bench", "batch 1": "bench_b1", "serve": "serve"}[name]
            try:
                if report["prefill"] or report["decode"]:
                    plot_report(report, os.path.join(args.out, stem + ".png"))
                plot_serving(report, os.path.join(args.out, stem + "_serve.png"))
            except Exception as err:  # the table matters more than the picture
                lines.append(f"(plot of {name} failed: {type(err).__name__}: {err})")
            lines += ["", f"--- {name} ---", format_report(report)]
        # one set of targets: the batch-16 report with the serving results added; then batch 1's decode targets
        merged = dict(main_report or next(iter(reports.values())))
        merged["serve"] = (reports.get("serve") or {}).get("serve", [])
        lines += ["", format_targets(evaluate_targets(merged))]
        if "batch 1" in reports:
            batch1 = [t for t in serving_targets(reports["batch 1"]) if "strongest" in t["name"]]
            lines += [format_targets(batch1).replace("targets (issue 15):", "targets (issue 15, batch 1):")]
        lines += ["", "How to read: T = teacher (HF Llama), L = Liger-GLA; ms are medians; decode is per token with",
                  "that many tokens already in context; teachers: eager = HF DynamicCache, static = HF StaticCache +",
                  "torch.compile(mode='reduce-overhead'), gqa_graph = the hand-written GQA step in one CUDA graph",
                  "(liger/bench/teacher_decode.py); peak GiB is torch.cuda.max_memory_allocated while decoding with",
                  "only that model on the GPU. Serving: the largest batch whose decoding fits (doubling + bisection,",
                  "synthetic caches of that context) and tokens/s there. Targets: benchmarks/targets.py.",
                  f"Full data: {args.out}/bench.json, bench_b1.json, serve.json; plots: bench.png, serve_serve.png;"
                  " top kernels: profile.txt; logs: gpu_tests.log, bench.log, bench_b1.log, serve.log."]
    lines.append(f"total {time.time() - start:.0f} s")
    text = "\n".join(lines)
    with open(os.path.join(args.out, "summary.txt"), "w") as f:
        f.write(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
