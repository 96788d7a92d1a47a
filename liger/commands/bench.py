"""``liger bench``: speed and memory of a Liger model against its teacher (prefill, decoding, training)."""

from __future__ import annotations

import argparse
import json
import os

from . import add_liger_options, liger_options, positive_int_list

# command-line flag -> (config key, argparse options); the help text is the key's docstring in BenchConfig
FLAGS = {
    "--model": ("model", dict(metavar="MODEL")),
    "--teacher": ("teacher", dict(metavar="MODEL")),
    "--device": ("device", dict(choices=["cuda", "cpu"])),
    "--dtype": ("dtype", dict(choices=["bfloat16", "float16", "float32"])),
    "--batch-size": ("batch_size", dict(type=int, metavar="B")),
    "--prompt-length": ("prompt_length", dict(type=int, metavar="P")),
    "--context": ("contexts", dict(type=positive_int_list, metavar="C1,C2,...")),
    "--decode-steps": ("decode_steps", dict(type=int, metavar="N")),
    "--warmup-steps": ("warmup_steps", dict(type=int, metavar="N")),
    "--prefill-repeats": ("prefill_repeats", dict(type=int, metavar="N")),
    "--graph-batch-size": ("graph_batch_size", dict(type=int, metavar="B")),
    "--graph-steps": ("graph_steps", dict(type=int, metavar="N")),
    "--no-decode": ("decode", dict(action="store_const", const=False)),
    "--teachers": ("teachers", dict(type=lambda text: [t for t in text.replace(" ", "").split(",") if t],
                                    metavar="T1,T2,...")),
    "--gqa-attention": ("gqa_attention", dict(choices=["fold", "enable_gqa"])),
    "--serve": ("serve", dict(action="store_const", const=True)),
    "--serve-contexts": ("serve_contexts", dict(type=positive_int_list, metavar="C1,C2,...")),
    "--serve-steps": ("serve_steps", dict(type=int, metavar="N")),
    "--serve-max-batch": ("serve_max_batch", dict(type=int, metavar="B")),
    "--serve-memory-limit-gib": ("serve_memory_limit_gib", dict(type=float, metavar="GIB")),
    "--serve-search-seconds": ("serve_search_seconds", dict(type=float, metavar="SECONDS")),
    "--train": ("train", dict(action="store_const", const=True)),
    "--train-batch-sizes": ("train_batch_sizes", dict(type=positive_int_list, metavar="B1,B2,...")),
    "--train-length": ("train_length", dict(type=int, metavar="T")),
    "--train-steps": ("train_steps", dict(type=int, metavar="N")),
    "--train-modes": ("train_modes", dict(type=lambda text: [t for t in text.replace(" ", "").split(",") if t],
                                          metavar="M1,M2")),
    "--profile": ("profile", dict(action="store_const", const=True)),
    "--autotune": ("autotune", dict(choices=["full", "fast"])),
    "--time-budget": ("time_budget", dict(type=float, metavar="SECONDS")),
    "--seed": ("seed", dict(type=int, metavar="S")),
    "--output": ("output", dict(metavar="FILE.json")),
}


def _help(doc: str, key: str, default, options: dict) -> str:
    shown = "unset" if default is None else ",".join(map(str, default)) if isinstance(default, list) else default
    doc = doc.replace("``", "")
    text = f"{doc} (default: {shown}; config key {key})"
    if options.get("action") == "store_const":
        text = f"{doc} This flag sets {key} to {str(options['const']).lower()} (default: {str(shown).lower()})."
    return text.replace("%", "%%")


def add_parser(subparsers) -> None:
    from ..bench.config import BenchConfig, defaults
    from ..utils import attribute_docstrings

    parser = subparsers.add_parser(
        "bench",
        help="measure prefill, decoding, serving throughput and training speed and memory against the teacher",
        description="Time prefill and per-token decoding at several context lengths, peak memory, CUDA-graph "
        "decoding, (with --serve) the largest batch that fits and its decode tokens/s at long context, and (with "
        "--train) LoRA fine-tuning throughput, for a Liger model and its teacher decoding as eager HF, HF static "
        "cache + torch.compile, and a hand-written GQA step in a CUDA graph, side by side. Writes a JSON report "
        "(with versions, device and git commit) and PNG plots, and prints tables. "
        "Settings: defaults < --config YAML < flags < key=value overrides (every key of the config, e.g. "
        "lora.r=16 liger_options.window_size=32). Example (GPU, random SmolLM2-135M weights, no download): "
        "liger bench --model random:smollm2 --device cuda --batch-size 16 "
        "--context 1024,2048,4096,8192,16384,32768 --train --output bench.json",
    )
    docs, values = attribute_docstrings(BenchConfig), defaults()
    parser.add_argument("--config", metavar="FILE.yaml", help="benchmark config (YAML); keys as in BenchConfig "
                        "(liger/bench/config.py)")
    for flag, (key, options) in FLAGS.items():
        parser.add_argument(flag, dest=f"bench_{key}", default=None, help=_help(docs[key], key, values[key], options),
                            **options)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, e.g. batch_size=8 lora.r=16 liger_options.window_size=32")
    add_liger_options(parser)
    parser.set_defaults(run=run)


def resolve_config(args: argparse.Namespace):
    """Defaults < YAML < flags (the Liger option flags into ``liger_options``) < ``key.sub=value`` overrides."""
    from ..bench.config import load_bench_config

    settings = {key: getattr(args, f"bench_{key}") for key, _ in FLAGS.values()
                if getattr(args, f"bench_{key}") is not None}
    settings.update({f"liger_options.{name}": value for name, value in liger_options(args).items()})
    return load_bench_config(args.config, args.overrides, settings)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    from ..bench import format_report, plot_report, plot_serving, run_bench

    os.makedirs(os.path.dirname(os.path.abspath(cfg.output)), exist_ok=True)

    def save(report):
        # written after every measurement, so that a run cut short keeps what it measured
        tmp = cfg.output + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, cfg.output)

    report = run_bench(cfg, on_update=save)
    save(report)
    stem = os.path.splitext(cfg.output)[0]
    plots = []
    try:
        if report["prefill"] or report["decode"]:
            plot_report(report, stem + ".png")
            plots.append(stem + ".png")
        if plot_serving(report, stem + "_serve.png"):
            plots.append(stem + "_serve.png")
    except ImportError:
        print("note: matplotlib is not installed; no plot written")
    print(format_report(report))
    print(f"\nreport: {cfg.output}" + (f", plots: {', '.join(plots)}" if plots else ""))
    return 0
