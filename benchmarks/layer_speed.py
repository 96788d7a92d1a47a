"""Time one Liger attention layer against the teacher's attention at SmolLM2-135M shapes.

    python benchmarks/layer_speed.py --lengths 256,512,1024,2048,4096 --output benchmarks/results/layer_speed_cpu.json

Shapes: hidden 576, 9 query heads, 3 KV heads, head_dim 64 (SmolLM2-135M); batch 1 by default; float32.
The teacher layer is transformers' LlamaAttention with PyTorch SDPA (causal); the Liger layer wraps the same
projections (default Liger-GLA: chunked recurrence + 64-key window). Forward is timed under no_grad;
forward+backward backpropagates a sum of the output into the input and the weights. Each figure is the
median of --repeats runs after one warm-up. Prints a table and writes JSON with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

import liger
from liger.models.attention import LigerAttention
from liger.models.configuration_liger import LigerConfig

SMOLLM2 = dict(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64, intermediate_size=1536,
               num_hidden_layers=1, vocab_size=49152, rope_parameters={"rope_type": "default", "rope_theta": 1e5},
               max_position_embeddings=65536)


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def provenance(args) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                                    cwd=Path(__file__).parent).stdout.strip())
    except OSError:
        commit, dirty = "", False
    return {
        "command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs".strip(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"liger": liger.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "git_commit": commit + ("-dirty" if dirty else ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="256,512,1024,2048,4096")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--variant", default="gla")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=None, help="JSON file to write")
    args = parser.parse_args()

    torch.manual_seed(0)
    base = LlamaConfig(**SMOLLM2)
    base._attn_implementation = "sdpa"
    teacher = LlamaAttention(base, layer_idx=0)
    config = LigerConfig.from_base_config(base, variant=args.variant)
    student = LigerAttention(teacher, config, layer_idx=0)
    rope = LlamaRotaryEmbedding(base)

    rows = []
    for T in [int(t) for t in args.lengths.split(",")]:
        x = torch.randn(args.batch_size, T, base.hidden_size)
        pos = rope(x, torch.arange(T)[None])
        row = {"T": T}
        for name, layer in (("teacher", teacher), ("liger", student)):
            def fwd(layer=layer, x=x, pos=pos):
                with torch.no_grad():
                    layer(x, position_embeddings=pos, attention_mask=None)

            def fwd_bwd(layer=layer, x=x, pos=pos):
                xg = x.clone().requires_grad_()
                layer(xg, position_embeddings=pos, attention_mask=None)[0].sum().backward()

            row[f"{name}_fwd_ms"] = median_ms(fwd, args.repeats)
            row[f"{name}_fwd_bwd_ms"] = median_ms(fwd_bwd, args.repeats)
        rows.append(row)
        print(f"T={T} done", file=sys.stderr)

    header = f"{'T':>6} | {'teacher fwd':>11} | {'liger fwd':>9} | {'ratio':>5} | {'teacher f+b':>11} | " \
             f"{'liger f+b':>9} | {'ratio':>5}"
    print(f"Liger-{args.variant} layer vs teacher attention, SmolLM2-135M shapes, batch {args.batch_size}, "
          f"float32, {torch.get_num_threads()} threads (ms, median of {args.repeats})")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['T']:>6} | {r['teacher_fwd_ms']:>11.1f} | {r['liger_fwd_ms']:>9.1f} | "
              f"{r['liger_fwd_ms'] / r['teacher_fwd_ms']:>5.2f} | {r['teacher_fwd_bwd_ms']:>11.1f} | "
              f"{r['liger_fwd_bwd_ms']:>9.1f} | {r['liger_fwd_bwd_ms'] / r['teacher_fwd_bwd_ms']:>5.2f}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        result = {"benchmark": "layer_speed", "variant": args.variant, "batch_size": args.batch_size,
                  "device": "cpu", "dtype": "float32", "rows": rows, **provenance(args)}
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
