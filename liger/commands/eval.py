"""``liger eval``: lm-eval suites, perplexity and passkey retrieval for one model, or a recovery report
comparing students with their teacher."""

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

Students of --compare: checkpoint directories, swa:W:S (the teacher restricted to a W-key sliding window
plus S sink tokens, no training) and convert:VARIANT (the teacher freshly converted, not fine-tuned).
Without --tasks, --ppl or --passkey, the offline suite runs; with --ppl or --passkey only, no lm-eval task runs.
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model (lm-eval tasks, perplexity, passkey) or compare students with a teacher",
        description="Evaluate with lm-eval on an in-memory model (suites: paper, offline), perplexity on text "
        "files and passkey retrieval; or write a recovery report (--compare).",
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
    parser.add_argument("--passkey", type=positive_int_list, metavar="L1,L2,...",
                        help="passkey retrieval at these prompt lengths in tokens, e.g. 512,1024,4096")
    parser.add_argument("--passkey-trials", type=int, default=5, help="prompts per length (default: 5)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the model's own)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="--model: write the results JSON here")
    parser.add_argument("--output-dir", help="--compare: write report.json, report.md and report.png here "
                        "(default: eval-report)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from liger.eval.harness import resolve_tasks
    from liger.eval.models import load_checkpoint
    from liger.eval.report import compare, markdown, measure, provenance, write_report

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.passkey_trials < 1:
        raise ValueError(f"--passkey-trials must be >= 1, got {args.passkey_trials}")
    if args.ppl_context < 2 or not 1 <= args.ppl_stride <= args.ppl_context:
        raise ValueError(f"need --ppl-context >= 2 and 1 <= --ppl-stride <= --ppl-context, got "
                         f"{args.ppl_context} and {args.ppl_stride}")
    if args.output and args.compare:
        raise ValueError("--output is for --model; --compare writes to --output-dir")
    if args.output_dir and args.model:
        raise ValueError("--output-dir is for --compare; --model writes to --output")
    tasks = args.tasks
    if tasks is None and not args.ppl and not args.passkey:
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
                   passkey_trials=args.passkey_trials, seed=args.seed)
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

    loaded = load_checkpoint(args.model, dtype=args.dtype, device=device, tokenizer=args.tokenizer)
    result = {"model": args.model, **measure(loaded.model, loaded.tokenizer, **options), "config": config,
              "provenance": provenance(device, seed=args.seed, limit=args.limit)}
    for name, r in result["tasks"].items():
        err = f" ± {r['stderr']:.4f}" if r["stderr"] is not None else ""
        print(f"{name:28s} {r['metric']:>9s} {r['value']:.4f}{err}  ({r['samples']} docs, {r['num_fewshot']}-shot)")
    if result["average"] is not None:
        print(f"{'average':28s} {'':>9s} {result['average']:.4f}")
    if result["ppl"]:
        for path, p in result["ppl"]["files"].items():
            print(f"perplexity {p['ppl']:.3f} on {path} ({p['tokens']} tokens)")
    if result["passkey"]:
        for length, p in result["passkey"]["lengths"].items():
            print(f"passkey {length:>6d} tokens: accuracy {p['accuracy']:.2f} ({p['trials']} trials)")
    text = json.dumps(result, indent=2, default=str) + "\n"
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.output}")
    for name, why in result["skipped"].items():
        print(f"liger eval: task '{name}' skipped: {why}", file=sys.stderr)
    return 1 if result["skipped"] else 0
