"""What a bounded memory would have to hold for the teacher to answer a passkey (docs/results-memory.md, "8K").

The teacher's own weights on one passkey prompt, with an attention mask that lets every query see only its last
``--window`` tokens, the first ``--sinks`` tokens and a chosen set of tokens — the same set in every layer and
head, an oracle no streaming cache can beat. It scores the answer (`` 48108.``) by teacher forcing and prints
the answer's NLL and the argmax tokens at its positions, per mask:

    full           ordinary causal attention (the teacher)
    swa            window and sinks only
    needle         + every token of the needle sentence ("The pass key is 48108. Remember it. 48108 is ...")
    digits         + only the key's digit tokens (both occurrences)
    words          + only the needle's other tokens
    needle+intro   + the needle and the task's opening sentence

    python benchmarks/oracle_memory.py --length 8192 --depth 0.5
    python benchmarks/oracle_memory.py --length 8192 --depth 0.5 --masks digits,words
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

MASKS = ("full", "swa", "needle", "digits", "words", "needle+intro")


def oracle_mask(T: int, window: int, sinks: int, extra: list[int]) -> torch.Tensor:
    """``[1, 1, T, T]`` bool: query ``i`` sees key ``j <= i`` if ``i − j < window``, ``j < sinks`` or ``j`` in
    ``extra``."""
    pos = torch.arange(T)
    causal = pos[None, :] <= pos[:, None]
    seen = (pos[:, None] - pos[None, :] < window) | (pos[None, :] < sinks)
    if extra:
        seen[:, torch.tensor(sorted(set(extra)))] = True
    return (causal & seen)[None, None]


def needle_tokens(tokenizer, prompt: str, key: int) -> tuple[list[int], list[int], list[int]]:
    """Token positions of the needle sentence, of its digit tokens and of the opening sentence."""
    from liger.eval.passkey import INTRO, NEEDLE

    enc = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
    spans = enc["offset_mapping"]
    needle = NEEDLE.format(key=key)
    start = prompt.index(needle)
    end = start + len(needle)
    inside = [i for i, (a, b) in enumerate(spans) if b > a and a < end and b > start]
    digits = [i for i in inside if tokenizer.decode([enc["input_ids"][i]]).strip().isdigit()]
    intro = [i for i, (a, b) in enumerate(spans) if b > a and a < len(INTRO)]
    return inside, digits, intro


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--depth", type=float, default=0.5)
    parser.add_argument("--key", type=int, default=48108)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--sinks", type=int, default=4)
    parser.add_argument("--masks", default=",".join(MASKS), help=f"comma-separated, from {', '.join(MASKS)}")
    args = parser.parse_args(argv)
    masks = [m.strip() for m in args.masks.split(",") if m.strip()]
    unknown = [m for m in masks if m not in MASKS]
    if unknown or not masks:
        print(f"oracle_memory: error: unknown mask(s) {', '.join(unknown) or '(none given)'}; choose from "
              f"{', '.join(MASKS)}", file=sys.stderr)
        return 2
    try:
        return _run(args, masks)
    except (ValueError, OSError) as error:  # a bad length or model path: one line, not a traceback
        print(f"oracle_memory: error: {error}", file=sys.stderr)
        return 2


def _run(args, masks) -> int:
    from liger.eval.models import load_checkpoint
    from liger.eval.passkey import passkey_prompt

    loaded = load_checkpoint(args.model, dtype="float32", device="cpu")
    tokenizer, model = loaded.tokenizer, loaded.model.eval()
    prompt = passkey_prompt(tokenizer, args.length, args.key, args.depth)
    needle, digits, intro = needle_tokens(tokenizer, prompt, args.key)
    answer = tokenizer(f" {args.key}.", add_special_tokens=False).input_ids
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=True).input_ids + answer])
    T = ids.shape[1]
    print(f"{T} tokens (answer {len(answer)}), needle tokens {needle[0]}..{needle[-1]}, window {args.window}, "
          f"sinks {args.sinks}", flush=True)
    chosen = {"swa": [], "needle": needle, "digits": digits, "words": [i for i in needle if i not in digits],
              "needle+intro": needle + intro}
    for name in masks:
        started = time.time()
        mask = None if name == "full" else oracle_mask(T, args.window, args.sinks, chosen[name])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=len(answer) + 1).logits[0, :-1]
        logp = logits.float().log_softmax(-1)
        nll = -logp[torch.arange(len(answer)), torch.tensor(answer)]
        argmax = tokenizer.decode(logp.argmax(-1))
        print(f"{name:13s} answer NLL {nll.sum().item():6.2f} (per token "
              f"{', '.join(f'{x:.2f}' for x in nll.tolist())}), argmax {argmax!r} ({time.time() - started:.0f} s)",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
