"""``liger eval``: lm-eval suites, perplexity and the long-context measures (passkey and multi-key retrieval,
loss by position, repeated-span recall) for one model, or a recovery report comparing students with their
teacher."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import positive_int_list

EXAMPLES = """examples:
  liger eval --model out/liger-gla --tasks offline --limit 100 --output results.json
  liger eval --model smollm2 --ppl text.txt --passkey 512,1024
  liger eval --model out/liger-gla --tasks paper            (needs the Hugging Face Hub)
  liger eval --compare smollm2 swa:64:4 convert:gla out/liger-gla --limit 50 --ppl text.txt \\
      --passkey 512,1024 --output-dir report/
  liger eval --compare smollm2 swa:64:0 out/liger-gla --passkey --multikey 1024,2048 --position-loss \\
      --repeat-recall --long-text heldout/*.txt --output-dir report/

Students of --compare: checkpoint directories, swa:W:S (the teacher restricted to a W-key sliding window
plus S sink tokens, no training) and convert:VARIANT (the teacher freshly converted, not fine-tuned).

Long-context measures (torch and transformers only; lengths in tokens of the model's tokenizer):
  --passkey [L,...]        passkey retrieval (the Landmark-Attention prompt), accuracy per length with its
                           binomial standard error and Wilson 95 % interval; default lengths 1024,2048,4096,8192
  --multikey [L,...]       multi-key retrieval: --multikey-pairs pairs "The special magic number for WORD is
                           NUMBER." at spread depths in --long-text paragraphs, one asked; default lengths as above
  --position-loss          mean loss per position bucket (1-63, 64-255, 256-1023, 1024-4095, ... below
                           --position-length) over --position-sequences sequences of --long-text, one forward each
  --repeat-recall [D,...]  a --long-text paragraph, D tokens of other text, the paragraph again: its loss at the
                           first and second occurrence and the drop; default D 256,512,1024,2048,4096
--long-text FILE...: plain-text files (consecutive segments) or .jsonl files with one {"text": ...} document per
line (whole documents); checked against the asked lengths before any model is loaded.
Without --tasks, --ppl or a long-context measure, the offline suite runs; with those only, no lm-eval task runs.
"""

PASSKEY_LENGTHS = [1024, 2048, 4096, 8192]
REPEAT_GAPS = [256, 512, 1024, 2048, 4096]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model (lm-eval tasks, perplexity, long-context measures) or compare students with a teacher",
        description="Evaluate with lm-eval on an in-memory model (suites: paper, offline), perplexity on text "
        "files and long-context measures (passkey and multi-key retrieval, loss by position, repeated-span "
        "recall); or write a recovery report (--compare).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="checkpoint directory (base or Liger) or the alias 'smollm2'")
    which.add_argument("--compare", nargs="+", metavar="MODEL",
                       help="TEACHER STUDENT...: measure all the same way and write a recovery report")
    parser.add_argument("--tasks", help="comma-separated suites (paper, offline) and lm-eval task names")
    parser.add_argument("--include-path", help="folder of extra lm-eval task YAMLs")
    parser.add_argument("--limit", type=int, help="documents per task (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size (default: 8)")
    parser.add_argument("--ppl", nargs="+", metavar="FILE", help="plain-text files to measure perplexity on")
    parser.add_argument("--ppl-context", type=int, default=512, help="tokens per window (default: 512)")
    parser.add_argument("--ppl-stride", type=int, default=256, help="tokens between windows (default: 256)")
    parser.add_argument("--ppl-max-tokens", type=int, help="score only the first N tokens of each file")
    parser.add_argument("--passkey", type=positive_int_list, nargs="?", const=PASSKEY_LENGTHS, metavar="L1,L2,...",
                        help="passkey retrieval at these prompt lengths in tokens (default: 1024,2048,4096,8192)")
    parser.add_argument("--passkey-trials", type=int, metavar="N", default=20, help="prompts per length (default: 20)")
    parser.add_argument("--multikey", type=positive_int_list, nargs="?", const=PASSKEY_LENGTHS, metavar="L1,L2,...",
                        help="multi-key retrieval at these prompt lengths in tokens (default: 1024,2048,4096,8192; "
                        "needs --long-text)")
    parser.add_argument("--multikey-trials", type=int, metavar="N", default=20,
                        help="prompts per length (default: 20)")
    parser.add_argument("--multikey-pairs", type=int, metavar="K", default=4,
                        help="key-value pairs per prompt (default: 4)")
    parser.add_argument("--position-loss", action="store_true",
                        help="mean loss per position bucket on --long-text sequences")
    parser.add_argument("--position-length", type=int, metavar="L", default=4096,
                        help="tokens per sequence (default: 4096)")
    parser.add_argument("--position-sequences", type=int, metavar="N", default=20,
                        help="sequences scored (default: 20)")
    parser.add_argument("--position-buckets", type=positive_int_list, metavar="E1,E2,...",
                        help="first position of each bucket after 1-63 (default: 64,256,1024,... below the length)")
    parser.add_argument("--repeat-recall", type=positive_int_list, nargs="?", const=REPEAT_GAPS, metavar="D1,D2,...",
                        help="repeated-span recall at these distances in tokens (default: 256,512,1024,2048,4096; "
                        "needs --long-text)")
    parser.add_argument("--repeat-trials", type=int, metavar="N", default=20,
                        help="paragraphs per distance (default: 20)")
    parser.add_argument("--long-text", nargs="+", metavar="FILE",
                        help="text for --multikey, --position-loss and --repeat-recall (.txt or .jsonl)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the model's own)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="--model: write the results JSON here")
    parser.add_argument("--output-dir", help="--compare: write report.json, report.md and the plots (PNG) "
                        "here (default: eval-report)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from liger.eval.harness import resolve_tasks
    from liger.eval.long_context import check_long_context
    from liger.eval.models import load_checkpoint, load_tokenizer
    from liger.eval.report import compare, markdown, measure, provenance, write_report

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    for flag in ("passkey_trials", "multikey_trials", "multikey_pairs", "position_sequences", "repeat_trials"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.position_length < 2:
        raise ValueError(f"--position-length must be >= 2, got {args.position_length}")
    needs_text = [flag for flag, on in (("--multikey", args.multikey), ("--position-loss", args.position_loss),
                                        ("--repeat-recall", args.repeat_recall)) if on]
    if needs_text and not args.long_text:
        raise ValueError(f"{', '.join(needs_text)} need{'s' if len(needs_text) == 1 else ''} --long-text FILE...")
    if args.long_text and not needs_text:
        raise ValueError("--long-text is read by --multikey, --position-loss and --repeat-recall; none was given")
    if args.ppl_context < 2 or not 1 <= args.ppl_stride <= args.ppl_context:
        raise ValueError(f"need --ppl-context >= 2 and 1 <= --ppl-stride <= --ppl-context, got "
                         f"{args.ppl_context} and {args.ppl_stride}")
    if args.output and args.compare:
        raise ValueError("--output is for --model; --compare writes to --output-dir")
    if args.output_dir and args.model:
        raise ValueError("--output-dir is for --compare; --model writes to --output")
    tasks = args.tasks
    if tasks is None and not args.ppl and not args.passkey and not needs_text:
        tasks = "offline"
    if tasks:
        resolve_tasks(tasks, args.include_path)  # unknown names fail before any model is loaded
    for path in args.ppl or []:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no text file at '{path}'")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    options = dict(tasks=tasks, limit=args.limit, batch_size=args.batch_size, include_path=args.include_path,
                   ppl_files=args.ppl or (), ppl_context=args.ppl_context, ppl_stride=args.ppl_stride,
                   ppl_max_tokens=args.ppl_max_tokens, passkey_lengths=args.passkey or (),
                   passkey_trials=args.passkey_trials, seed=args.seed, long_text=args.long_text or None,
                   multikey_lengths=args.multikey or (), multikey_trials=args.multikey_trials,
                   multikey_pairs=args.multikey_pairs,
                   position_length=args.position_length if args.position_loss else None,
                   position_sequences=args.position_sequences, position_edges=args.position_buckets,
                   repeat_gaps=args.repeat_recall or (), repeat_trials=args.repeat_trials)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
    config.update(device=device, dtype=args.dtype)

    if args.compare:
        report = compare(args.compare[0], args.compare[1:], device=device, dtype=args.dtype,
                         tokenizer=args.tokenizer, **options)
        report["config"] = config
        report["provenance"] = provenance(device, seed=args.seed, limit=args.limit)
        paths = write_report(report, args.output_dir or "eval-report")
        print(markdown(report))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return 1 if any(m["skipped"] for m in report["models"].values()) else 0

    # the long-context settings and text are checked against the tokenizer before the model is loaded
    long_options = {k: options[k] for k in ("passkey_lengths", "passkey_trials", "multikey_lengths",
                                            "multikey_trials", "multikey_pairs", "position_length",
                                            "position_sequences", "position_edges", "repeat_gaps", "repeat_trials")}
    corpus = None
    if args.passkey or needs_text:
        corpus = check_long_context(load_tokenizer(args.model, args.tokenizer), args.long_text, **long_options)
    loaded = load_checkpoint(args.model, dtype=args.dtype, device=device, tokenizer=args.tokenizer)
    result = {"model": args.model, **measure(loaded.model, loaded.tokenizer, **dict(options, long_text=corpus)),
              "config": config, "provenance": provenance(device, seed=args.seed, limit=args.limit)}
    for name, r in result["tasks"].items():
        err = f" ± {r['stderr']:.4f}" if r["stderr"] is not None else ""
        print(f"{name:28s} {r['metric']:>9s} {r['value']:.4f}{err}  ({r['samples']} docs, {r['num_fewshot']}-shot)")
    if result["average"] is not None:
        print(f"{'average':28s} {'':>9s} {result['average']:.4f}")
    if result["ppl"]:
        for path, p in result["ppl"]["files"].items():
            print(f"perplexity {p['ppl']:.3f} on {path} ({p['tokens']} tokens)")
    print_long_context(result)
    text = json.dumps(result, indent=2, default=str) + "\n"
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.output}")
    for name, why in result["skipped"].items():
        print(f"liger eval: task '{name}' skipped: {why}", file=sys.stderr)
    return 1 if result["skipped"] else 0


def print_long_context(result: dict) -> None:
    """One line per length, bucket or distance of the long-context measures in ``result``."""
    for key in ("passkey", "multikey"):
        if result.get(key):
            pairs = f", {result[key]['pairs']} pairs" if key == "multikey" else ""
            for length, p in result[key]["lengths"].items():
                low, high = p["wilson95"]
                print(f"{key} {length:>6d} tokens: accuracy {p['accuracy']:.2f} [{low:.2f}, {high:.2f}] "
                      f"({p['trials']} trials{pairs})")
    if result.get("position_loss"):
        pl = result["position_loss"]
        for label, b in pl["buckets"].items():
            err = f" ± {b['stderr']:.3f}" if b["stderr"] is not None else ""
            print(f"loss at positions {label:>11s}: {b['nll']:.3f}{err} nats ({b['tokens']} tokens)")
        print(f"loss at all positions      : {pl['nll']:.3f} nats ({pl['sequences']} sequences of "
              f"{pl['length']} tokens)")
    if result.get("repeat_recall"):
        for gap, r in result["repeat_recall"]["gaps"].items():
            err = f" ± {r['drop_stderr']:.3f}" if r["drop_stderr"] is not None else ""
            print(f"repeat recall D={gap:<5d}: drop {r['drop']:.3f}{err} nats (first {r['first']:.3f}, second "
                  f"{r['second']:.3f}; {r['trials']} trials)")
