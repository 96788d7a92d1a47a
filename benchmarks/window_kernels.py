"""The window branch's ops side by side on one GPU: forward and forward+backward time and peak memory.

Ops: ``sdpa`` (fused SDPA over query blocks, the CUDA path before the Triton kernels and still the path with
sinks), ``triton`` (Liger's kernels on rotated q/k), ``rope+triton`` (the compiled RoPE op, then the kernels:
what the model ran with the kernels before RoPE moved inside them) and ``triton(rope)`` (RoPE inside the
kernels: what ``LigerAttention`` runs on CUDA without sinks). Inputs have SmolLM2-135M's attention shapes
(9 query / 3 KV heads of 64, window 64, bf16) with one left-padded sequence. Prints a table, writes JSON.

    python benchmarks/window_kernels.py --output window_kernels.json
"""

from __future__ import annotations

import argparse
import json
import subprocess

import torch


def timed(fn, repeats: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` runs after 3 warm-up runs (CUDA events)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def measure(op, B: int, T: int, args) -> dict:
    D = args.head_dim
    torch.manual_seed(0)
    q = torch.randn(B, T, args.heads, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, T, args.kv_heads, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    valid = torch.ones(B, T, dtype=torch.bool, device="cuda")
    valid[0, : T // 10] = False
    angle = torch.arange(T, device="cuda")[:, None] * 10000 ** (-torch.arange(0, D, 2, device="cuda") / D)
    angle = torch.cat([angle, angle], -1)[None].expand(B, T, D)
    cos, sin = angle.cos().to(torch.bfloat16), angle.sin().to(torch.bfloat16)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]

    def forward_backward():
        out = op(*leaves, cos, sin, valid)
        out.backward(torch.ones_like(out))

    with torch.no_grad():
        fwd = timed(lambda: op(q, k, v, cos, sin, valid), args.repeats)
    fwd_bwd = timed(forward_backward, args.repeats)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    forward_backward()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return dict(forward_ms=fwd, forward_backward_ms=fwd_bwd, peak_extra_mib=peak)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="8x1024,16x2048,16x32768", help="BATCHxLENGTH,...")
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", default="window_kernels.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.exit(2, "window_kernels.py: needs a CUDA device\n")

    from liger.models.attention import _compiled_rope
    from liger.models.triton_window import triton_window_attention
    from liger.models.window import sliding_window_attention

    W, scale = args.window, args.head_dim**-0.5
    ops = {
        "sdpa": lambda q, k, v, cos, sin, valid: sliding_window_attention(
            *_compiled_rope(q, k, cos, sin), v, W, scale, valid, None, backend="sdpa"),
        "triton": lambda q, k, v, cos, sin, valid: triton_window_attention(q, k, v, W, scale, valid),
        "rope+triton": lambda q, k, v, cos, sin, valid: triton_window_attention(
            *_compiled_rope(q, k, cos, sin), v, W, scale, valid),
        "triton(rope)": lambda q, k, v, cos, sin, valid: triton_window_attention(q, k, v, W, scale, valid, (cos, sin)),
    }
    rows = []
    print(f"{'size':>10} | {'op':>12} | {'fwd ms':>8} | {'fwd+bwd ms':>10} | {'peak MiB':>8}")
    for size in args.sizes.split(","):
        B, T = (int(x) for x in size.split("x"))
        for name, op in ops.items():
            row = measure(op, B, T, args)
            rows.append(dict(batch=B, length=T, op=name, **row))
            print(f"{size:>10} | {name:>12} | {row['forward_ms']:8.3f} | {row['forward_backward_ms']:10.3f} | "
                  f"{row['peak_extra_mib']:8.0f}", flush=True)
    try:
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    report = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, git_commit=commit, config=vars(args),
                  rows=rows)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)
    print(f"report: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
