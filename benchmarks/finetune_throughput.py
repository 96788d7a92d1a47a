"""Training throughput of ``liger finetune``: tokens/s of the Liger model and of its unconverted teacher, with
the same LoRA settings, through the same training loop (``liger.train.finetune``), in one run.

Both models train on the same random tokens (packed chunks of ``--length`` tokens, ``--batch-size`` sequences per
optimizer step, ``--micro-batch-size`` per forward). The first ``--warmup-steps`` steps are not counted; the
result is the median tokens/s of the remaining steps, plus peak memory. Prints a table and writes a JSON report
with versions, device name and git commit.

    python benchmarks/finetune_throughput.py --model smollm2 --device cpu --length 512 --batch-size 2 --steps 6
    python benchmarks/finetune_throughput.py --model random:smollm2 --device cuda --length 1024 --batch-size 8 \\
        --micro-batch-size 1 --steps 30 --output finetune_throughput_h100.json     # the paper's recipe shape
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time

import torch


def load(spec: str, dtype: torch.dtype):
    """``(teacher, liger)`` sharing nothing: the base model and its conversion (random weights for random:NAME)."""
    import liger
    from liger.loading import load_pretrained

    teacher = load_pretrained(spec, dtype)
    return teacher, liger.convert(teacher)


def random_data(vocab: int, length: int, chunks: int, seed: int):
    from liger.train.data import PackedData

    g = torch.Generator().manual_seed(seed)
    train = torch.randint(0, vocab, (chunks, length), generator=g)
    val = torch.randint(0, vocab, (1, length), generator=g)
    return PackedData(train, train.clone(), val, val.clone(), "text", "random tokens", chunks + 1, train.numel())


def measure(kind: str, model, args, device: str, dtype_name: str, root: str) -> dict:
    from liger.train.config import load_config
    from liger.train.loop import finetune, read_metrics

    steps = args.warmup_steps + args.steps
    data = random_data(model.config.vocab_size, args.length, steps * args.batch_size, args.seed)
    overrides = [f"output={os.path.join(root, kind)}", f"data.max_length={args.length}",
                 f"train.batch_size={args.batch_size}", f"train.micro_batch_size={args.micro_batch_size}",
                 f"train.max_steps={steps}", "train.eval_every=0", "train.save_every=0", f"train.device={device}",
                 f"train.dtype={dtype_name}", f"lora.r={args.lora_r}", f"lora.alpha={args.lora_r}",
                 f"lora.target_modules=[{args.lora_targets}]",
                 f"train.gradient_checkpointing={str(args.gradient_checkpointing).lower()}"]
    cfg = load_config(None, overrides)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    summary = finetune(cfg, model=model, data=data)
    wall = time.perf_counter() - started
    rates = [e["tokens_per_s"] for e in read_metrics(os.path.join(root, kind, "metrics.jsonl"))
             if e["type"] == "train" and e["step"] > args.warmup_steps]
    return dict(model=kind, tokens_per_s=statistics.median(rates), tokens_per_s_steps=rates,
                step_s=args.batch_size * args.length / statistics.median(rates), wall_s=wall,
                trainable_parameters=summary["trainable_parameters"], peak_rss_bytes=summary["peak_rss_bytes"],
                peak_cuda_bytes=summary.get("peak_cuda_bytes"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="base model: a directory, 'smollm2', or random:smollm2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="base weights (auto: bfloat16 on CUDA, float32 on CPU); LoRA weights stay float32")
    parser.add_argument("--length", type=int, default=1024, help="tokens per sequence (T)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per optimizer step")
    parser.add_argument("--micro-batch-size", type=int, default=1, help="sequences per forward/backward")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank (alpha = rank)")
    parser.add_argument("--lora-targets", default="q_proj,k_proj,v_proj")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--models", default="liger,teacher", help="which to measure, in this order")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="finetune_throughput.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)

    from liger.provenance import provenance

    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if args.device == "cuda" else "float32")
    models = dict(zip(("teacher", "liger"), load(args.model, getattr(torch, dtype_name))))
    report = dict(provenance=provenance(torch.device(args.device)), config=vars(args), dtype=dtype_name, results=[])
    with tempfile.TemporaryDirectory(prefix="liger-finetune-bench-") as root:
        for kind in args.models.split(","):
            report["results"].append(measure(kind, models[kind], args, args.device, dtype_name, root))
            models[kind] = None
            if args.device == "cuda":
                torch.cuda.empty_cache()
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)

    p = report["provenance"]
    print(f"\n{p['device_name']}, {dtype_name}, T={args.length}, {args.batch_size} sequences/step "
          f"(micro-batch {args.micro_batch_size}), LoRA r={args.lora_r} on {args.lora_targets}; "
          f"torch {p['torch']}, transformers {p['transformers']}, fla {p.get('flash-linear-attention')}, "
          f"commit {(p.get('git_commit') or '?')[:10]}{' (dirty)' if p.get('git_dirty') else ''}")
    print(f"{'model':<8} {'tokens/s':>10} {'s/step':>8} {'peak mem (GiB)':>15}")
    for r in report["results"]:
        peak = r["peak_cuda_bytes"] if r["peak_cuda_bytes"] is not None else r["peak_rss_bytes"]
        print(f"{r['model']:<8} {r['tokens_per_s']:>10.0f} {r['step_s']:>8.2f} {peak / 2**30:>15.2f}")
    rates = {r["model"]: r["tokens_per_s"] for r in report["results"]}
    if {"liger", "teacher"} <= set(rates):
        print(f"Liger / teacher: {rates['liger'] / rates['teacher']:.2f}x")
    print(f"report: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
