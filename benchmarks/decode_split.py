"""The fused decode step's program split: time one model's decode step for each number of window and state
programs per (sequence, KV head) and each key block size (``SPLIT``, ``WINDOW_SPLIT`` and ``KEY_BLOCK`` of
``liger/models/triton_decode.py``; "auto" is what the model takes by default) at one context, in one process.

Why: at 32K and batch 16 the ``memory`` recipe's step took 1.35 ms against 1.10 for the same model without its
global cache (run Q of docs/gpu.md, issue 14 asks <= 1.2x); by default its step runs 8 window and 4 state programs
per KV head, 576 at batch 16 against window512's 192, and whether that launch fits one wave of the GPU, or walks
too few keys a program, is what this measures (compiled for sm_90 without a GPU, its kernel takes 212 registers a
thread at the default key block of 64 keys, 2 programs an SM, and 138 at 32 keys, 126 at 16:
``benchmarks/analysis/decode_kernel_sass.py``). Liger-GLA (``--recipe none``) for issue 15's 1.0 ms.

    python benchmarks/decode_split.py --recipe memory --context 32768 --splits auto,1,2 \\
        --window-splits auto,4,8 --key-blocks 4096,2048,1024 --output decode_split.json

Random SmolLM2-shaped weights (``--model``), one prefill of ``--batch-size`` x ``--context`` random tokens, then
per setting: a fresh CUDA-graph capture (``--mode cuda_graph``; ``static`` runs the uncaptured step, e.g. on a
CPU, where the fused step is not taken and the split changes nothing), ``--warmup`` steps, the median of
``--steps`` timed steps. Writes JSON (settings, what the launcher took — ``taken``: its split and window programs
per KV head, empty where the fused step did not run —, medians, all step times, provenance) and a PNG beside it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def _choices(text: str) -> list[int | None]:
    """"auto,2,4" -> [None, 2, 4] (powers of two)."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if item == "auto":
            out.append(None)
            continue
        if not item.isdigit() or int(item) < 1 or int(item) & (int(item) - 1):
            raise argparse.ArgumentTypeError(f"expected 'auto' or powers of two, got '{item}'")
        out.append(int(item))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, cache, token, warmup: int, steps: int, device: torch.device) -> list[float]:
    """Seconds of each of ``steps`` decode steps after ``warmup`` untimed ones (a sync around each)."""
    for _ in range(warmup):
        model(input_ids=token, past_key_values=cache, use_cache=True)
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        model(input_ids=token, past_key_values=cache, use_cache=True)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    labels = [f"{r['split'] or 'auto'}/{r['window_split'] or 'auto'}/{r['key_block'] or 'auto'}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(rows) + 2), 3.5))
    ax.bar(range(len(rows)), [r["median_ms"] for r in rows], color="tab:blue")
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right")
    ax.set_xlabel("SPLIT / WINDOW_SPLIT (programs per KV head) / KEY_BLOCK")
    ax.set_ylabel("ms per decode step")
    ax.set_title(f"{report['recipe']} at {report['context']} tokens, batch {report['batch_size']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="decode_split", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:smollm2")
    parser.add_argument("--recipe", default="memory", help="a liger recipe (liger/recipes.py) or 'none' (Liger-GLA)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="more LigerConfig fields")
    parser.add_argument("--context", type=int, default=32768)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--splits", default="auto", help="SPLIT values: auto and/or powers of two")
    parser.add_argument("--window-splits", default="auto", help="WINDOW_SPLIT values: auto and/or powers of two")
    parser.add_argument("--key-blocks", default="auto",
                        help="KEY_BLOCK values (elements of a key block, head dim x keys): auto and/or powers of two")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mode", choices=("cuda_graph", "static"), default="cuda_graph")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    parser.add_argument("--autotune", choices=("full", "fast"), default="fast",
                        help="fla's Triton autotuning for the prefill (as liger bench's --autotune)")
    parser.add_argument("--output", default="decode_split.json")
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"decode_split: error: {message}", file=sys.stderr)
        return 2

    from liger.typed_config import ConfigError, apply_override

    try:
        splits, window_splits = _choices(args.splits), _choices(args.window_splits)
        key_blocks = _choices(args.key_blocks)
        options = {}
        for item in args.option:
            apply_override(options, item)
    except (argparse.ArgumentTypeError, ConfigError) as err:
        return fail(str(err))
    if min(args.context, args.batch_size, args.steps) < 1 or args.warmup < 0:
        return fail("--context, --batch-size and --steps must be >= 1, --warmup >= 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return fail("--device cuda but no CUDA device is available")
    if args.mode == "cuda_graph" and device.type != "cuda":
        return fail("--mode cuda_graph needs a CUDA device (use --mode static)")

    import liger
    from liger.bench.autotune import restrict_triton_autotuning
    from liger.loading import load_pretrained
    from liger.models import triton_decode
    from liger.provenance import provenance

    dtype = getattr(torch, args.dtype)
    try:
        base = load_pretrained(args.model, dtype, attn_implementation="sdpa")
        recipe = None if args.recipe == "none" else args.recipe
        model = liger.convert(base, recipe=recipe, **{"decode_backend": "triton", **options}).eval().to(device)
    except (ValueError, OSError) as err:
        return fail(str(err).splitlines()[0])
    del base
    generator = torch.Generator(device=device).manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch_size, args.context), device=device, generator=generator)
    token = torch.randint(0, vocab, (args.batch_size, 1), device=device, generator=generator)
    report = dict(provenance=provenance(device), recipe=args.recipe, options=options, model=args.model,
                  context=args.context, batch_size=args.batch_size, mode=args.mode, dtype=args.dtype, rows=[])
    output = Path(args.output)
    saved = (triton_decode.SPLIT, triton_decode.WINDOW_SPLIT, triton_decode._split, triton_decode._window_split,
             triton_decode.KEY_BLOCK)
    taken = {}  # what the step's launcher chose (its state programs per KV head, its window programs)

    def record(name, fn):
        return lambda *a: taken.__setitem__(name, fn(*a)) or taken[name]

    triton_decode._split, triton_decode._window_split = record("split", saved[2]), record("window_programs", saved[3])
    try:
        restrict_triton_autotuning(args.autotune)
        with torch.no_grad():
            cache = model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values
            del ids
            model.set_decoding(args.mode, compile=False)
            for key_block, split, window_split in itertools.product(key_blocks, splits, window_splits):
                triton_decode.SPLIT, triton_decode.WINDOW_SPLIT = split, window_split
                triton_decode.KEY_BLOCK = key_block or saved[4]
                cache.drop_decoder()  # (a new capture with this split)
                taken.clear()
                times = time_steps(model, cache, token, args.warmup, args.steps, device)
                row = dict(split=split, window_split=window_split, key_block=key_block,
                           median_ms=1e3 * statistics.median(times), step_ms=[1e3 * t for t in times],
                           taken=dict(taken))
                report["rows"].append(row)
                print(f"split {split or 'auto'} window_split {window_split or 'auto'} key_block "
                      f"{key_block or 'auto'}: {row['median_ms']:.3f} ms per step (launcher: "
                      f"{taken or 'no fused step'})", flush=True)
                output.write_text(json.dumps(report, indent=1))
            cache.drop_decoder()
    finally:
        (triton_decode.SPLIT, triton_decode.WINDOW_SPLIT, triton_decode._split, triton_decode._window_split,
         triton_decode.KEY_BLOCK) = saved
        restrict_triton_autotuning("full")  # (Triton's own autotuning back, for a caller in the same process)
    plot(report, output.with_suffix(".png"))
    print(f"report: {output}, plot: {output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
