"""``liger eval``: lm-eval suites, perplexity and the long-context measures (passkey and multi-key retrieval,
loss by position, repeated-span recall) for one model, or a recovery report comparing students with their
teacher."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..utils import file_fields
from . import positive_int_list

# what --passkey / --multikey and --repeat-recall mean without a value
PASSKEY_LENGTHS = [1024, 2048, 4096, 8192]
REPEAT_GAPS = [256, 512, 1024, 2048, 4096]
# read from the source, so that --help imports neither torch nor transformers (importing liger.eval does)
_CONFIG_SOURCE = Path(__file__).resolve().parents[1] / "eval" / "config.py"

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

# command-line flag -> (config key, argparse options); the help text is the key's docstring in EvalConfig
FLAGS = {
    "--model": ("model", dict(metavar="MODEL")),
    "--compare": ("compare", dict(nargs="+", metavar="MODEL")),
    "--tasks": ("tasks", dict(metavar="T1,T2,...")),
    "--include-path": ("include_path", dict(metavar="DIR")),
    "--limit": ("limit", dict(type=int, metavar="N")),
    "--batch-size": ("batch_size", dict(type=int, metavar="B")),
    "--ppl": ("ppl", dict(nargs="+", metavar="FILE")),
    "--ppl-context": ("ppl_context", dict(type=int, metavar="N")),
    "--ppl-stride": ("ppl_stride", dict(type=int, metavar="N")),
    "--ppl-max-tokens": ("ppl_max_tokens", dict(type=int, metavar="N")),
    "--passkey": ("passkey", dict(type=positive_int_list, nargs="?", const=PASSKEY_LENGTHS, metavar="L1,L2,...")),
    "--passkey-trials": ("passkey_trials", dict(type=int, metavar="N")),
    "--multikey": ("multikey", dict(type=positive_int_list, nargs="?", const=PASSKEY_LENGTHS, metavar="L1,L2,...")),
    "--multikey-trials": ("multikey_trials", dict(type=int, metavar="N")),
    "--multikey-pairs": ("multikey_pairs", dict(type=int, metavar="K")),
    "--position-loss": ("position_loss", dict(action="store_const", const=True)),
    "--position-length": ("position_length", dict(type=int, metavar="L")),
    "--position-sequences": ("position_sequences", dict(type=int, metavar="N")),
    "--position-buckets": ("position_buckets", dict(type=positive_int_list, metavar="E1,E2,...")),
    "--repeat-recall": ("repeat_recall", dict(type=positive_int_list, nargs="?", const=REPEAT_GAPS,
                                              metavar="D1,D2,...")),
    "--repeat-trials": ("repeat_trials", dict(type=int, metavar="N")),
    "--long-text": ("long_text", dict(nargs="+", metavar="FILE")),
    "--tokenizer": ("tokenizer", dict(metavar="DIR")),
    "--device": ("device", dict(metavar="DEVICE")),
    "--dtype": ("dtype", dict(choices=["float32", "bfloat16", "float16"])),
    "--seed": ("seed", dict(type=int, metavar="S")),
    "--output": ("output", dict(metavar="FILE.json")),
    "--output-dir": ("output_dir", dict(metavar="DIR")),
}


def _help(doc: str, default: str, options: dict) -> str:
    doc = doc.replace("``", "")
    if options.get("action") == "store_const":
        return doc.replace("%", "%%")
    shown = {"None": "unset", "[]": "unset"}.get(default, default.strip("'\""))
    return f"{doc} (default: {shown})".replace("%", "%%")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model (lm-eval tasks, perplexity, long-context measures) or compare students with a teacher",
        description="Evaluate with lm-eval on an in-memory model (suites: paper, offline), perplexity on text "
        "files and long-context measures (passkey and multi-key retrieval, loss by position, repeated-span "
        "recall); or write a recovery report (--compare). Settings: defaults < --config YAML < flags < key=value "
        "overrides (every key of the config, e.g. limit=50 passkey_trials=40).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fields = {f.name: f for f in file_fields(_CONFIG_SOURCE, "EvalConfig")}
    docs = {name: f.doc for name, f in fields.items()}
    values = {name: "[]" if f.default.startswith("field(default_factory=") else f.default for name, f in fields.items()}
    parser.add_argument("--config", metavar="FILE.yaml", help="evaluation config (YAML); keys as in EvalConfig "
                        "(liger/eval/config.py)")
    for flag, (key, options) in FLAGS.items():
        parser.add_argument(flag, dest=f"eval_{key}", default=None, help=_help(docs[key], values[key], options),
                            **options)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. limit=50")
    parser.set_defaults(run=run)


def resolve_config(args: argparse.Namespace):
    """Defaults < YAML < flags < ``key=value`` overrides."""
    from ..eval.config import load_eval_config

    settings = {key: getattr(args, f"eval_{key}") for key, _ in FLAGS.values()
                if getattr(args, f"eval_{key}") is not None}
    return load_eval_config(args.config, args.overrides, settings)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)  # every setting checked once, before anything heavy is imported
    import torch

    from liger.eval.harness import resolve_tasks
    from liger.eval.long_context import check_long_context
    from liger.eval.models import load_checkpoint, load_tokenizer
    from liger.eval.report import compare, markdown, measure, provenance, write_report

    tasks = cfg.resolved_tasks
    if tasks:
        resolve_tasks(tasks, cfg.include_path)  # unknown names fail before any model is loaded
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    options = dict(tasks=tasks, limit=cfg.limit, batch_size=cfg.batch_size, include_path=cfg.include_path,
                   ppl_files=cfg.ppl, ppl_context=cfg.ppl_context, ppl_stride=cfg.ppl_stride,
                   ppl_max_tokens=cfg.ppl_max_tokens, passkey_lengths=cfg.passkey,
                   passkey_trials=cfg.passkey_trials, seed=cfg.seed, long_text=cfg.long_text or None,
                   multikey_lengths=cfg.multikey, multikey_trials=cfg.multikey_trials,
                   multikey_pairs=cfg.multikey_pairs,
                   position_length=cfg.position_length if cfg.position_loss else None,
                   position_sequences=cfg.position_sequences, position_edges=cfg.position_buckets,
                   repeat_gaps=cfg.repeat_recall, repeat_trials=cfg.repeat_trials)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
    config.update(device=device, dtype=cfg.dtype)

    if cfg.compare:
        report = compare(cfg.compare[0], cfg.compare[1:], device=device, dtype=cfg.dtype,
                         tokenizer=cfg.tokenizer, **options)
        report["config"] = config
        report["provenance"] = provenance(device, seed=cfg.seed, limit=cfg.limit)
        paths = write_report(report, cfg.output_dir or "eval-report")
        print(markdown(report))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return 1 if any(m["skipped"] for m in report["models"].values()) else 0

    # the long-context settings and text are checked against the tokenizer before the model is loaded
    long_options = {k: options[k] for k in ("passkey_lengths", "passkey_trials", "multikey_lengths",
                                            "multikey_trials", "multikey_pairs", "position_length",
                                            "position_sequences", "position_edges", "repeat_gaps", "repeat_trials")}
    corpus = None
    if cfg.passkey or cfg.needs_text:
        corpus = check_long_context(load_tokenizer(cfg.model, cfg.tokenizer), cfg.long_text or None, **long_options)
    loaded = load_checkpoint(cfg.model, dtype=cfg.dtype, device=device, tokenizer=cfg.tokenizer)
    result = {"model": cfg.model, **measure(loaded.model, loaded.tokenizer, **dict(options, long_text=corpus)),
              "config": config, "provenance": provenance(device, seed=cfg.seed, limit=cfg.limit)}
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
    if cfg.output:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.output)), exist_ok=True)
        with open(cfg.output, "w") as f:
            f.write(text)
        print(f"wrote {cfg.output}")
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
