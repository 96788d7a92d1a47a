"""``liger bench``: speed and memory of a Liger model against its teacher (prefill, decoding, training)."""

from __future__ import annotations

import argparse
import json
import os

from . import add_liger_options, liger_options, positive_int_list


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure prefill, decoding and training speed and memory against the teacher",
        description="Time prefill and per-token decoding at several context lengths, peak memory, CUDA-graph "
        "decoding and (with --train) LoRA fine-tuning throughput, for a Liger model and its teacher, side by "
        "side. Writes a JSON report (with versions, device and git commit) and a PNG plot, and prints a table. "
        "Example (GPU, random SmolLM2-135M weights, no download): liger bench --model random:smollm2 "
        "--device cuda --batch-size 16 --context 1024,2048,4096,8192,16384,32768 --train --output bench.json",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="random:smollm2",
                        help="a Liger checkpoint, a base checkpoint (converted with the Liger options below), the "
                        "alias 'smollm2', or random:smollm2 / random:tiny (random weights, known architecture)")
    parser.add_argument("--teacher", default=None,
                        help="base model to compare against (default: the base --model was given as)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prompt-length", type=int, default=128,
                        help="start of the estimated total decode time; context of the decode-mode comparison")
    parser.add_argument("--context", type=positive_int_list, default=[1024, 2048, 4096, 8192, 16384, 32768],
                        help="context lengths at which prefill and per-token decode latency are measured")
    parser.add_argument("--decode-steps", type=int, default=16, help="timed decode steps per context")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed decode steps before them")
    parser.add_argument("--prefill-repeats", type=int, default=2, help="prefill runs per context (fastest kept)")
    parser.add_argument("--graph-batch-size", type=int, default=1,
                        help="batch of the eager / static / CUDA-graph decode comparison")
    parser.add_argument("--no-decode", action="store_true", help="skip the prefill/decode measurements")
    parser.add_argument("--train", action="store_true", help="also measure LoRA fine-tuning throughput")
    parser.add_argument("--train-batch-sizes", type=positive_int_list, default=[8, 32])
    parser.add_argument("--train-length", type=int, default=1024, help="tokens per training sequence")
    parser.add_argument("--train-steps", type=int, default=10, help="timed training steps (after 3 untimed)")
    parser.add_argument("--profile", action="store_true",
                        help="record torch.profiler tables (top kernels) for a prefill, a decode step and a "
                        "training step of each model in the report")
    parser.add_argument("--autotune", default="full", choices=["full", "fast"],
                        help="fla's Triton autotuning on first use: every config, or a subset (4 warps, 2-3 "
                        "stages) that makes the first call ~5x quicker")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds; sections that would start later are skipped and reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="bench.json", help="JSON report; the plot goes next to it (.png)")
    add_liger_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, format_report, run_bench
    from ..bench.throughput import plot_report

    for name in ("batch_size", "prompt_length", "decode_steps", "graph_batch_size", "train_length", "train_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    cfg = BenchConfig(
        model=args.model, teacher=args.teacher, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
        prompt_length=args.prompt_length, contexts=sorted(set(args.context)), decode_steps=args.decode_steps,
        warmup_steps=args.warmup_steps, prefill_repeats=max(1, args.prefill_repeats),
        graph_batch_size=args.graph_batch_size, decode=not args.no_decode, train=args.train,
        train_batch_sizes=args.train_batch_sizes, train_length=args.train_length, train_steps=args.train_steps,
        seed=args.seed, profile=args.profile, autotune=args.autotune, liger_options=liger_options(args),
        time_budget=args.time_budget,
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)

    def save(report):
        # written after every measurement, so that a run cut short keeps what it measured
        tmp = args.output + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, args.output)

    report = run_bench(cfg, on_update=save)
    save(report)
    plot = os.path.splitext(args.output)[0] + ".png"
    try:
        plot_report(report, plot)
    except ImportError:
        plot = None
        print("note: matplotlib is not installed; no plot written")
    print(format_report(report))
    print(f"\nreport: {args.output}" + (f", plot: {plot}" if plot else ""))
    return 0
