"""Where a passkey's tokens sit in a global cache, and what the model answers (docs/results-memory.md, "8K").

One prompt of ``--length`` tokens with the needle at ``--depth`` through a zero-training student (``swa:W:S:G``):
prints the prompt's top-5 next tokens and, per layer and KV head, which of the key's tokens the global cache
holds after the prefill, with the range of its members' recall scores. ``--trials N`` instead runs the passkey
measure (N trials, depths spread) through ``model.generate``. ``--score relative`` replaces the self-recall
error ‖v − read‖ by ‖v − read‖ / ‖v‖, and ``--score pooled --pool P`` gives each token the largest error among
the P tokens on either side of it in the prefill, so that a kept token's neighbours are kept with it (SnapKV's
pooling; the passkey prompt is one prefill, so the measure sees it; decode steps keep the plain score). Both are
experiments, not model options.

    python benchmarks/cache_probe.py --length 8192 --depth 0.97 --spec swa:64:4:256
    python benchmarks/cache_probe.py --length 8192 --trials 5 --score relative
    python benchmarks/cache_probe.py --length 8192 --trials 5 --score pooled --pool 5
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def relative_error(v: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(torch.promote_types(v.dtype, read.dtype), torch.float32)
    v = v.to(dtype)
    return (v - read.to(dtype)).norm(dim=-1) / v.norm(dim=-1).clamp_min(1e-6)


def pooled_error(pool: int, error=None, direction: str = "both"):
    """The recall error of each token replaced by the largest within ``pool`` tokens of it (over the time axis
    of a prefill's ``[B, T, H]`` scores; a decode step's single token keeps its own): on either side
    (``direction="both"``), among the tokens before it (``"back"``: a salient token's followers are kept) or
    after it (``"forward"``: its predecessors are kept)."""
    import torch.nn.functional as F

    from liger.models.global_cache import recall_error

    error = error or recall_error
    before, after = {"both": (pool, pool), "back": (pool, 0), "forward": (0, pool)}[direction]

    def score(v: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
        e = error(v, read)
        if e.dim() != 3 or e.shape[1] == 1 or pool <= 0:
            return e
        x = F.pad(e.transpose(1, 2), (before, after), value=float("-inf"))
        return F.max_pool1d(x, before + after + 1, stride=1).transpose(1, 2)

    return score


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--depth", type=float, default=0.97)
    parser.add_argument("--spec", default="swa:64:4:256", help="a zero-training student swa:W:S:G")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--key", type=int, default=48108)
    parser.add_argument("--trials", type=int, default=0, help="run the passkey measure instead (N trials)")
    parser.add_argument("--score", choices=("error", "relative", "pooled"), default="error")
    parser.add_argument("--pool", type=int, default=5, help="--score pooled: tokens on either side")
    parser.add_argument("--direction", choices=("both", "back", "forward"), default="both",
                        help="--score pooled: pool over the tokens on both sides, before or after each token")
    args = parser.parse_args(argv)

    import liger.models.attention as attention

    original = attention.recall_error
    if args.score == "relative":
        attention.recall_error = relative_error
    elif args.score == "pooled":
        attention.recall_error = pooled_error(args.pool, direction=args.direction)
    try:
        return _probe(args)
    except (ValueError, OSError) as error:  # a bad spec, model path or length: one line, not a traceback
        print(f"cache_probe: error: {error}", file=sys.stderr)
        return 2
    finally:
        attention.recall_error = original


def _probe(args) -> int:
    from liger.eval.models import build_student, load_checkpoint
    from liger.eval.passkey import passkey, passkey_prompt

    loaded = load_checkpoint(args.model, dtype="float32", device="cpu")
    tokenizer = loaded.tokenizer
    model = build_student(args.spec, loaded.model).eval()
    started = time.time()
    if args.trials:
        result = passkey(model, tokenizer, [args.length], args.trials, 0)
        for length, v in result["lengths"].items():
            answers = [(t["distance"], t["answer"]) for t in v["trial_results"]]
            pool = f" pool={args.pool} {args.direction}" if args.score == "pooled" else ""
            print(f"{args.spec} score={args.score}{pool} {length}: {v['correct']}/{v['trials']} {answers}")
        print(f"{time.time() - started:.0f} s")
        return 0
    ids = tokenizer(passkey_prompt(tokenizer, args.length, args.key, args.depth), return_tensors="pt").input_ids
    key_tokens = set(tokenizer(f" {args.key}", add_special_tokens=False).input_ids)
    where = [i for i in range(ids.shape[1]) if ids[0, i].item() in key_tokens]
    with torch.no_grad():
        out = model(ids, use_cache=True)
    top = out.logits[0, -1].topk(5).indices
    print(f"{args.spec} score={args.score}, {ids.shape[1]} tokens, key tokens at {where}; "
          f"top next tokens {[tokenizer.decode(int(i)) for i in top]} ({time.time() - started:.0f} s)")
    for layer, cache in enumerate(out.past_key_values.liger_layers):
        b = cache.buffers
        if b.global_index is None:
            continue
        index, score = b.global_index[0], b.global_score[0]  # [G, H]
        held = [sum(int((index[:, h] == p).any()) for p in where) for h in range(index.shape[1])]
        finite = score[score.isfinite()]
        print(f"layer {layer:2d}: key tokens held per KV head {held} of {len(where)}; "
              f"scores {finite.min().item():.3g}..{finite.max().item():.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
