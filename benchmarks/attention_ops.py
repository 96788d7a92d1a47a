"""The Liger attention's ops side by side on one GPU: forward and forward+backward time and extra peak memory.

Each piece in its former CUDA version and in its Triton version:

* ``rope``: compiled ``attention.rope_pair`` (torch.compile, dynamic shapes) vs ``triton_ops.rope_pair``;
* ``window``: fused SDPA over query blocks (still the path with sinks) vs the Triton window kernels;
* ``gla inputs``: compiled ``variants._fla_inputs`` vs ``triton_ops.gla_inputs`` (softmax feature maps,
  log-decay, padding, heads repeated for fla);
* ``chunk_gla``: fla's kernel on those inputs, for scale.

Inputs have SmolLM2-135M's attention shapes (9 query / 3 KV heads of 64, window 64, bf16) with one left-padded
sequence. Prints a table, writes JSON.

    python benchmarks/attention_ops.py --output attention_ops.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
from types import SimpleNamespace

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


def inputs(B: int, T: int, args):
    D = args.head_dim
    torch.manual_seed(0)
    q = torch.randn(B, T, args.heads, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, T, args.kv_heads, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    valid = torch.ones(B, T, dtype=torch.bool, device="cuda")
    valid[0, : T // 10] = False
    angle = torch.arange(T, device="cuda")[:, None] * 10000 ** (-torch.arange(0, D, 2, device="cuda") / D)
    angle = torch.cat([angle, angle], -1)[None].expand(B, T, D)
    return q, k, v, valid, angle.cos().to(torch.bfloat16), angle.sin().to(torch.bfloat16)


def measure(op, tensors, repeats: int) -> dict:
    """``op(q, k, v, valid, cos, sin)`` returns a tensor or a tuple; the backward weights every output by 1."""
    q, k, v, valid, cos, sin = tensors
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]

    def forward_backward():
        out = op(*leaves, valid, cos, sin)
        out = [o for o in (out if isinstance(out, tuple) else (out,)) if o.requires_grad]
        torch.autograd.backward(out, [torch.ones_like(o) for o in out])

    with torch.no_grad():
        fwd = timed(lambda: op(q, k, v, valid, cos, sin), repeats)
    fwd_bwd = timed(forward_backward, repeats)
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
    parser.add_argument("--output", default="attention_ops.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.exit(2, "attention_ops.py: needs a CUDA device\n")

    import liger.models.fla_backend as fla_backend
    from liger.models import triton_ops
    from liger.models.attention import _compiled_rope
    from liger.models.triton_window import triton_window_attention
    from liger.models.variants import _fla_inputs_compiled, get_recurrence
    from liger.models.window import sliding_window_attention

    W, scale = args.window, args.head_dim**-0.5
    gla = get_recurrence(SimpleNamespace(variant="gla", feature_map="softmax", linear_scale=1.0, gate_normalizer=16.0,
                                         gate_pool_size=None, hgrn2_lower_bound=0.0, gsa_num_slots=None,
                                         linear_normalizer="none", global_cache_size=0, delta_write_strength=None))
    G = args.heads // args.kv_heads
    ops = {
        ("rope", "compiled"): lambda q, k, v, valid, cos, sin: _compiled_rope(q, k, cos, sin),
        ("rope", "triton"): lambda q, k, v, valid, cos, sin: triton_ops.rope_pair(q, k, cos, sin),
        ("window", "sdpa"): lambda q, k, v, valid, cos, sin: sliding_window_attention(q, k, v, W, scale, valid,
                                                                                      None, backend="sdpa"),
        ("window", "triton"): lambda q, k, v, valid, cos, sin: triton_window_attention(q, k, v, W, scale, valid),
        ("gla inputs", "compiled"): lambda q, k, v, valid, cos, sin: _fla_inputs_compiled(gla, q, k, v, valid)[:4],
        ("gla inputs", "triton"): lambda q, k, v, valid, cos, sin: triton_ops.gla_inputs(q, k, v, valid, 16.0,
                                                                                          torch.bfloat16),
        ("chunk_gla", "fla"): lambda q, k, v, valid, cos, sin: fla_backend.gla_kernels(
            *triton_ops.gla_inputs(q, k, v, valid, 16.0, torch.bfloat16), None, 1.0, None, False, "chunk", G)[0],
    }
    rows = []
    print(f"{'size':>10} | {'piece':>10} | {'version':>8} | {'fwd ms':>8} | {'fwd+bwd ms':>10} | {'peak MiB':>8}")
    for size in args.sizes.split(","):
        B, T = (int(x) for x in size.split("x"))
        tensors = inputs(B, T, args)
        for (piece, version), op in ops.items():
            row = measure(op, tensors, args.repeats)
            rows.append(dict(batch=B, length=T, piece=piece, version=version, **row))
            print(f"{size:>10} | {piece:>10} | {version:>8} | {row['forward_ms']:8.3f} | "
                  f"{row['forward_backward_ms']:10.3f} | {row['peak_extra_mib']:8.0f}", flush=True)
        del tensors
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
