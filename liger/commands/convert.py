"""``liger convert BASE OUT``: convert a checkpoint and save it with its tokenizer."""

from __future__ import annotations

import argparse
import os
import time

from . import add_liger_options, liger_options


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a Llama/Mistral/Qwen2/Qwen3 checkpoint into a Liger checkpoint",
        description="Convert a base checkpoint into a Liger model (no new parameters) and save it with its "
        "tokenizer. Example: liger convert smollm2 out/liger-gla --variant gla --window-size 64",
    )
    parser.add_argument("base", help="base model: a local directory, the alias 'smollm2', or a hub id")
    parser.add_argument("output", help="directory to write the Liger checkpoint to")
    parser.add_argument("--overwrite", action="store_true", help="write into OUTPUT even if it is not empty")
    add_liger_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    import liger
    from liger.assets import resolve_model

    if os.path.isdir(args.output) and os.listdir(args.output) and not args.overwrite:
        raise FileExistsError(f"'{args.output}' is not empty (pass --overwrite to write into it)")
    start = time.time()
    base = resolve_model(args.base)
    model = liger.convert(base, **liger_options(args))
    model.save_pretrained(args.output)
    try:
        AutoTokenizer.from_pretrained(base).save_pretrained(args.output)
    except (OSError, ValueError):
        print(f"note: no tokenizer found next to '{base}'; saved the model only")
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    memory = f"window {cfg.window_size}, sinks {cfg.num_sink_tokens}"
    if cfg.global_cache_size:
        memory += f", global cache {cfg.global_cache_size}" + (f" (pool {cfg.global_cache_pool})"
                                                              if cfg.global_cache_pool else "")
    if cfg.linear_weight == 0:
        memory += ", no recurrent output (window-only)"
    print(f"saved Liger-{cfg.variant} ({cfg.base_model_type}, {cfg.num_hidden_layers} layers, {n_params:,} parameters, "
          f"{memory}) to {args.output} in {time.time() - start:.1f} s")
    return 0
