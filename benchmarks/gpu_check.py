"""One-shot GPU check for issue 5: correctness of the CUDA path first, then the speed benchmark, then a summary.

Run from the repository root on a CUDA machine (fla installed, e.g. from carried wheels):

    python benchmarks/gpu_check.py --out "$OUT"

Steps, each in its own subprocess with its own time limit (a crash or hang in one does not lose the others),
within ``--budget`` seconds overall (default 540):

1. ``pytest -m gpu tests/gpu``: fla kernels through liger's adapters, compiled FlexAttention, the model on
   the GPU path against the PyTorch reference ops (float32 < 1e-4, bfloat16 < 1e-2, left-padded batches,
   gradients), CUDA-graph decoding against eager decoding (identical tokens);
2. ``liger bench`` on random weights with SmolLM2-135M's architecture (no download), bf16, batch 16,
   contexts 1K..32K, decode modes at batch 1, LoRA training at T=1024; JSON + PNG written as it goes;
3. a summary: test results, then the benchmark table with the issue's targets marked PASS/FAIL.

Files written to ``--out``: gpu_tests.log, bench.log, bench.json, bench.png, profile.txt, summary.txt.
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
    parser.add_argument("--contexts", default="1024,2048,4096,8192,16384,32768")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--autotune", default="fast", choices=["fast", "full"])
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
        limit = min(args.test_budget, args.budget - (time.time() - start) - 240)
        log(f"step 1/2: pytest -m gpu tests/gpu (limit {limit:.0f} s)")
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
    bench_status = "skipped (--skip-bench)"
    if not args.skip_bench and not has_fla:
        bench_status = "NOT RUN: fla is not importable, the benchmark would measure the PyTorch fallback"
        log(bench_status)
    elif not args.skip_bench:
        left = args.budget - (time.time() - start)
        budget = max(30.0, left - 45)
        cmd = [sys.executable, "-m", "liger", "bench", "--model", "random:smollm2", "--device", "cuda",
               "--dtype", "bfloat16", "--batch-size", str(args.batch_size), "--prompt-length", "128",
               "--context", args.contexts, "--decode-steps", "16", "--train", "--train-batch-sizes", "8,32",
               "--train-length", "1024", "--autotune", args.autotune, "--time-budget", f"{budget:.0f}",
               "--profile", "--output", bench_json]
        if args.smoke:
            cmd = [sys.executable, "-m", "liger", "bench", "--model", "random:tiny", "--device", "cpu", "--dtype",
                   "float32", "--batch-size", "2", "--context", "32,64", "--decode-steps", "2", "--prompt-length",
                   "16", "--train", "--train-batch-sizes", "1", "--train-length", "32", "--train-steps", "2",
                   "--time-budget", f"{budget:.0f}", "--profile", "--output", bench_json]
        log(f"step 2/2: {' '.join(cmd[2:])} (limit {left - 15:.0f} s)")
        code, secs = run(cmd, os.path.join(args.out, "bench.log"), left - 15, env)
        bench_status = f"bench {'TIMED OUT' if code is None else f'exit {code}'} after {secs:.0f} s"
        log(bench_status)
        if code != 0:
            print(tail(os.path.join(args.out, "bench.log"), 25), flush=True)

    lines = ["", "=" * 100, "GPU CHECK SUMMARY (issue 5)", *header, "", *test_lines, "", bench_status]
    if os.path.exists(bench_json):
        sys.path.insert(0, ROOT)
        from targets import evaluate_targets, format_targets  # benchmarks/targets.py, next to this script

        from liger.bench.report import format_report, plot_report

        with open(bench_json) as f:
            report = json.load(f)
        if report.get("profiles"):
            with open(os.path.join(args.out, "profile.txt"), "w") as f:
                for label, table in report["profiles"].items():
                    f.write(f"== {label} ==\n{table}\n\n")
        try:
            plot_report(report, os.path.join(args.out, "bench.png"))
        except Exception as err:  # the table matters more than the picture
            lines.append(f"(plot failed: {type(err).__name__}: {err})")
        lines += ["", format_report(report), "", format_targets(evaluate_targets(report))]
        lines += ["", "How to read: T = teacher (HF Llama, SDPA, DynamicCache), L = Liger-GLA; ms are medians;",
                  "decode is per token at batch 16 with that many tokens already in context; peak GiB is",
                  "torch.cuda.max_memory_allocated during decoding with only that model on the GPU.",
                  "Targets (benchmarks/targets.py): each line gives the measured ratio and its limit.",
                  f"Full data: {args.out}/bench.json, plot: bench.png, top kernels: profile.txt, logs: gpu_tests.log,"
                  " bench.log."]
    lines.append(f"total {time.time() - start:.0f} s")
    text = "\n".join(lines)
    with open(os.path.join(args.out, "summary.txt"), "w") as f:
        f.write(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
