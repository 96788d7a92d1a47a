"""Loss of a model converted to Liger *without training*, under several Liger settings, next to its teacher.

How far a conversion starts from the teacher decides how much of the fine-tuning budget goes to repairing it
(docs/results.md). Each setting is ``NAME:key=value,key=value`` (LigerConfig fields, values as YAML; ``NAME:``
alone = the paper's defaults); the loss is the mean next-token cross-entropy over the first ``--chunks``
chunks of ``--length`` tokens of ``--text``.

    python benchmarks/conversion_loss.py --text ~/.cache/liger/repro-corpus/train/000-validation.txt \\
        gla: gla-lw0.1:linear_weight=0.1 window-only:linear_weight=0,window_weight=1 \\
        gla-norm1:gate_normalizer=1 gla-norm4:gate_normalizer=4 gla-sink4:num_sink_tokens=4 \\
        gsa:variant=gsa hgrn2:variant=hgrn2 --output conversion_loss.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from liger.typed_config import parse_yaml


def parse_setting(text: str) -> tuple[str, dict]:
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"'{text}' is not NAME:key=value,...")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise argparse.ArgumentTypeError(f"'{item}' in '{text}' is not key=value")
        options[key] = parse_yaml(value)
    return name, options


def mean_loss(model, chunks: torch.Tensor, batch_size: int) -> float:
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(chunks), batch_size):
            x = chunks[i:i + batch_size]
            total += model(input_ids=x, labels=x, use_cache=False).loss.item() * len(x)
    return total / len(chunks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", nargs="+", type=parse_setting, metavar="NAME:key=value,...")
    parser.add_argument("--model", default="smollm2", help="base checkpoint or alias (default: smollm2)")
    parser.add_argument("--text", required=True, help="plain-text file to score")
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--output", help="write the results JSON here")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import liger
    from liger.assets import resolve_model

    path = resolve_model(args.model)
    ids = AutoTokenizer.from_pretrained(path)(Path(args.text).read_text(), return_tensors="pt").input_ids[0]
    if len(ids) < args.chunks * args.length:
        sys.exit(f"conversion_loss: error: {args.text} has {len(ids)} tokens, fewer than --chunks x --length")
    chunks = ids[: args.chunks * args.length].view(args.chunks, args.length)
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = [dict(name="teacher", options=None, loss=mean_loss(teacher, chunks, args.batch_size))]
    print(f"{args.chunks} chunks x {args.length} tokens of {args.text}\nteacher: {rows[0]['loss']:.3f}", flush=True)
    for name, options in args.settings:
        started = time.time()
        model = liger.convert(teacher, **options).eval()
        rows.append(dict(name=name, options=options, loss=mean_loss(model, chunks, args.batch_size)))
        print(f"{name} {options}: {rows[-1]['loss']:.3f} ({time.time() - started:.0f} s)", flush=True)
        del model
    if args.output:
        Path(args.output).write_text(json.dumps(dict(command=" ".join(sys.argv), model=args.model, text=args.text,
                                                     chunks=args.chunks, length=args.length, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
