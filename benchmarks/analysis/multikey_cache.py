"""Which tokens of a multi-key (or passkey) prompt the `memory` recipe's global cache holds after the prefill (issue
14).

For each trial of ``liger.eval.multikey`` (the same prompts: seed 0, 4 pairs, held-out filler; ``--task passkey``:
``liger.eval.passkey``'s, its repeated filler) whose asked needle lies beyond the 512-token window, the model
converted with ``recipe="memory"`` (no training) prefills the prompt and the script reads every layer's and KV
head's global cache: the share of the asked needle's tokens kept, against the share of all the tokens beyond the
window (cache size / candidates: what a random choice would keep), and the heads that keep the key word and every
digit of its number (the passkey: every digit).

    OMP_NUM_THREADS=2 python benchmarks/analysis/multikey_cache.py --length 2048 --trials 20 --output OUT.json
    OMP_NUM_THREADS=2 python benchmarks/analysis/multikey_cache.py --task passkey --length 4096 --output OUT.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import liger
from liger.assets import smollm2_dir
from liger.eval.longtext import as_long_text
from liger.eval.multikey import NEEDLE, draw_trial, multikey_prompt
from liger.eval.passkey import NEEDLE as PASSKEY_NEEDLE
from liger.eval.passkey import n_tokens, passkey_prompt
from liger.models.cache import LigerCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["multikey", "passkey"], default="multikey")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--corpus", default=os.path.expanduser("~/.cache/liger/repro-corpus/heldout"))
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    d = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(d)
    model = liger.convert(AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32), recipe="memory").eval()
    cfg = model.config
    corpus = as_long_text(sorted(glob.glob(os.path.join(args.corpus, "*.txt"))), tok)
    rng = random.Random(f"multikey-0-{args.length}" if args.task == "multikey" else f"0-{args.length}")
    rows = []
    for i in range(args.trials):  # the evaluations' draws, trial for trial
        if args.task == "passkey":
            key = rng.randint(10000, 99999)
            prompt = passkey_prompt(tok, args.length, key, (i + rng.random()) / args.trials)
            pos = n_tokens(tok, prompt[:prompt.index(PASSKEY_NEEDLE.format(key=key))].rstrip())
            words, text = [""], " " + PASSKEY_NEEDLE.format(key=key)
        else:
            words, numbers, _, depths = draw_trial(rng, i, args.trials, 4)
            built = multikey_prompt(tok, corpus, args.length, list(zip(words, numbers)), depths, 0,
                                    rng.randrange(len(corpus.paragraphs)))
            prompt, pos = built["prompt"], built["positions"][0]
            text = " " + NEEDLE.format(word=words[0], number=numbers[0])
        ids = tok(prompt, return_tensors="pt").input_ids
        T = ids.shape[1]
        width = len(tok(text, add_special_tokens=False).input_ids)
        needle = list(range(pos, pos + width))
        beyond = T - cfg.window_size - cfg.num_sink_tokens - cfg.global_cache_pool  # tokens competing for the cache
        if T - pos <= cfg.window_size or beyond <= cfg.global_cache_size:
            continue
        cache = LigerCache(cfg)
        with torch.no_grad():
            model(ids, past_key_values=cache, use_cache=True)
        texts = [tok.decode(ids[0, p]) for p in needle]
        core = [p for p, t in zip(needle, texts)
                if t.strip().isdigit() or (words[0] and t.strip() and t.strip() in words[0])]
        kept, complete, heads = 0, 0, 0
        for layer in cache.layers:
            index = layer.buffers.global_index[0]  # [G, H]
            for h in range(index.shape[1]):
                members = set(index[:, h].tolist())
                kept += sum(p in members for p in needle)
                complete += all(p in members for p in core)
                heads += 1
        rows.append(dict(trial=i, tokens=T, distance=T - pos, needle=texts, kept_share=kept / (heads * width),
                         chance_share=cfg.global_cache_size / beyond, complete_heads=complete, heads=heads))
        print(f"trial {i}: {T - pos} tokens back, needle tokens kept {rows[-1]['kept_share']:.2f} "
              f"(chance {rows[-1]['chance_share']:.2f}), word + every digit in {complete}/{heads} heads", flush=True)
    summary = dict(task=args.task, length=args.length, trials=len(rows),
                   kept_share=sum(r["kept_share"] for r in rows) / max(1, len(rows)),
                   chance_share=sum(r["chance_share"] for r in rows) / max(1, len(rows)),
                   complete_heads=sum(r["complete_heads"] for r in rows) / max(1, len(rows)), rows=rows)
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    with open(args.output, "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
