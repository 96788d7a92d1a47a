"""The window branch on a CPU: the banded PyTorch op (``window.window_attention``) against fused SDPA over query
blocks (``window.sdpa_window_attention``, what ``window_backend="auto"`` takes off CUDA), for one op and inside a
converted model's prefill.

* ``op``: forward, and forward + backward (the loss over real rows; one sequence left-padded), milliseconds (the
  best of ``--repeats``), and the two ops' relative difference on the real rows and the gradients;
* ``prefill``: one prefill of ``--prefill-length`` tokens of random SmolLM2-shaped weights (``--model``), float32,
  batch 1, for each recipe (``paper``: Liger-GLA; ``window512``: the memory recipe without its global cache;
  ``memory``), seconds with each window op.

    OMP_NUM_THREADS=1 python benchmarks/cpu_window.py --output cpu_window.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def best_ms(fn, repeats: int) -> float:
    fn()  # (warm-up)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def op_rows(batch: int, length: int, windows: list[int], sinks: int, repeats: int) -> list[dict]:
    from liger.models.window import first_real_tokens, sdpa_window_attention, window_attention

    g = torch.Generator().manual_seed(0)
    HQ, H, D = 9, 3, 64
    q0, k0, v0 = (torch.randn(batch, length, h, D, generator=g) for h in (HQ, H, H))
    valid = torch.ones(batch, length, dtype=torch.bool)
    if batch > 1:
        valid[1, : length // 5] = False
    rows = []
    for W in windows:
        row, results = dict(window=W, sinks=sinks, batch=batch, length=length), {}
        for name, op in (("torch", window_attention), ("sdpa", sdpa_window_attention)):
            def forward(grad=False, op=op, W=W):
                q, k, v = (x.clone().requires_grad_(grad) for x in (q0, k0, v0))
                s = first_real_tokens(k, v, valid, sinks) if sinks else None
                out = op(q, k, v, W, D ** -0.5, valid, s)
                if grad:
                    out[valid].square().sum().backward()
                return out.detach(), (q.grad, k.grad, v.grad)

            with torch.no_grad():
                row[f"{name}_forward_ms"] = best_ms(forward, repeats)
            row[f"{name}_forward_backward_ms"] = best_ms(lambda: forward(True), repeats)
            results[name] = forward(True)
        (a, ga), (b, gb) = results["sdpa"], results["torch"]
        rel = [((x - y).norm() / y.norm()).item() for x, y in zip((a[valid], *ga), (b[valid], *gb))]
        row.update(rel_output=rel[0], rel_grads=max(rel[1:]))
        rows.append(row)
        print(f"op W {W} S {sinks}: forward {row['torch_forward_ms']:.0f} / {row['sdpa_forward_ms']:.0f} ms, "
              f"forward+backward {row['torch_forward_backward_ms']:.0f} / {row['sdpa_forward_backward_ms']:.0f} ms "
              f"(torch / sdpa), rel. diff {rel[0]:.1e} (grads {row['rel_grads']:.1e})", flush=True)
    return rows


def prefill_rows(model_name: str, length: int, recipes: list[str]) -> list[dict]:
    import liger
    from liger.loading import load_pretrained

    options = {"paper": (None, {}), "memory": ("memory", {}),
               "window512": ("memory", dict(global_cache_size=0, global_cache_pool=0))}
    base = load_pretrained(model_name, torch.float32, attn_implementation="sdpa")
    ids = torch.randint(0, base.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    rows = []
    for recipe in recipes:
        row = dict(recipe=recipe, length=length)
        for backend in ("torch", "sdpa"):
            recipe_name, extra = options[recipe]
            model = liger.convert(base, recipe=recipe_name, window_backend=backend, **extra).eval()
            with torch.no_grad():
                model(input_ids=ids[:, :64], use_cache=True, logits_to_keep=1)  # (warm-up)
                start = time.perf_counter()
                model(input_ids=ids, use_cache=True, logits_to_keep=1)
                row[f"{backend}_s"] = time.perf_counter() - start
        rows.append(row)
        print(f"prefill {recipe} x {length}: {row['torch_s']:.2f} s (torch) / {row['sdpa_s']:.2f} s (sdpa)",
              flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cpu_window", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=512, help="the op's sequence length")
    parser.add_argument("--windows", default="64,512")
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="random:smollm2")
    parser.add_argument("--prefill-length", type=int, default=2048, help="0: no model prefill")
    parser.add_argument("--recipes", default="paper,window512,memory")
    parser.add_argument("--output", default="cpu_window.json")
    args = parser.parse_args(argv)
    try:
        windows = [int(w) for w in args.windows.split(",")]
        recipes = [r for r in args.recipes.split(",") if r]
    except ValueError:
        print(f"cpu_window: error: --windows takes integers, got '{args.windows}'", file=sys.stderr)
        return 2
    unknown = sorted(set(recipes) - {"paper", "window512", "memory"})
    if unknown or min(windows + [args.batch_size, args.length, args.repeats]) < 1 or args.sinks < 0:
        print(f"cpu_window: error: recipes are paper, window512, memory (got {unknown}); sizes must be >= 1",
              file=sys.stderr)
        return 2
    from liger.provenance import provenance

    report = dict(provenance=provenance(torch.device("cpu")), threads=torch.get_num_threads(),
                  op=op_rows(args.batch_size, args.length, windows, args.sinks, args.repeats))
    if args.prefill_length:
        report["prefill"] = prefill_rows(args.model, args.prefill_length, recipes)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)
    print(f"report: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
