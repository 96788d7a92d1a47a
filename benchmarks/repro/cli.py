"""The command line of ``benchmarks/reproduce.py``: one subcommand per step."""

from __future__ import annotations

import argparse

from .common import (
    DEFAULT_SCRATCH,
    STUDENTS,
)
from .corpus import GCIDE_MAX_BYTES, SOURCES, cmd_corpus
from .evaluate import cmd_eval, cmd_longctx, run_longctx_model
from .train import cmd_train, run_student


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("corpus", help="build the training / validation / held-out corpus")
    p.add_argument("--out", required=True, help="corpus folder (DIR.tar.xz is written next to it)")
    p.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, from {', '.join(SOURCES)}")
    p.add_argument("--max-tokens", type=int, help="cap the training split at about N tokens (proportionally)")
    p.add_argument("--gcide-max-bytes", type=int, default=GCIDE_MAX_BYTES,
                   help=f"characters of dictionary entries kept (default {GCIDE_MAX_BYTES:,})")
    p.add_argument("--no-archive", action="store_true", help="do not write DIR.tar.xz")
    p.set_defaults(run=cmd_corpus)

    def common(p):
        p.add_argument("--corpus", required=True, help="folder written by `corpus`")
        p.add_argument("--model", default="smollm2", help="teacher checkpoint (default: smollm2)")
        p.add_argument("--scratch", default=str(DEFAULT_SCRATCH),
                       help=f"folder for big files: packed data, merged weights (default {DEFAULT_SCRATCH})")

    p = sub.add_parser("train", help="fine-tune the students (in parallel over GPUs)")
    common(p)
    p.add_argument("--students", default=",".join(STUDENTS), help=f"comma-separated, from {', '.join(STUDENTS)}")
    p.add_argument("--tokens", type=int,
                   help="training tokens per student (steps = N // (8*1024)); a student named NAME@TOKENS "
                   "(e.g. gla@20M) has its own budget")
    p.add_argument("--gpus", type=int, default=1, help="GPUs to use")
    p.add_argument("--per-gpu", type=int, default=1,
                   help="students training at the same time on one GPU (default 1; small models are bound by "
                   "kernel launches, so 2 keep a GPU busier; their wall/GPU seconds are then shared)")
    p.add_argument("--out", required=True, help="runs folder: OUT/STUDENT/ with small files only")
    p.add_argument("--tiny", action="store_true", help="CPU test recipe: 128-token chunks, 2 per step")
    p.add_argument("--timeout", type=float, default=None, help="seconds per student process")
    p.add_argument("--keep-scratch", action="store_true", help="keep each run's checkpoints and merged weights")
    p.add_argument("--resume", action="store_true",
                   help="continue each student from its newest checkpoint: this machine's scratch, else the one a "
                   "stopped run kept in OUT/STUDENT/resume/ (e.g. carried from an earlier lease); new runs otherwise")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("_student", help=argparse.SUPPRESS)
    common(p)
    p.add_argument("--student", required=True)
    p.add_argument("--tokens", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data-cache", required=True)
    p.add_argument("--per-gpu", type=int, default=1)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--keep-scratch", action="store_true")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(run=run_student)

    p = sub.add_parser("eval", help="merge the students and run one `liger eval --compare`")
    common(p)
    p.add_argument("--runs", required=True, help="the OUT folder of `train`")
    p.add_argument("--students", help="comma-separated subset (default: every run in --runs)")
    p.add_argument("--output-dir", required=True, help="report folder (report.*, results.md, loss_curves.png)")
    p.add_argument("--results-md", help="also write the results page here (e.g. docs/results.md)")
    p.add_argument("--tasks", default="offline")
    p.add_argument("--limit", type=int, help="documents per task (default: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--passkey", default="512,1024,2048,4096", help="passkey lengths ('' = none)")
    p.add_argument("--passkey-trials", type=int, default=5)
    p.add_argument("--ppl-context", type=int, default=512)
    p.add_argument("--ppl-stride", type=int, default=256)
    p.add_argument("--ppl-max-tokens", type=int, default=4096, help="tokens scored per held-out file")
    p.add_argument("--device", help="cpu or cuda (default: liger eval's: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--report-only", action="store_true",
                   help="re-render results.md and the loss curves from the last evaluation in --output-dir")
    p.add_argument("--long-context", nargs="+", metavar="JSON",
                   help="`longctx` outputs whose measures join the report (same model names)")
    p.set_defaults(run=cmd_eval)

    def longctx_options(p):
        p.add_argument("--runs", required=True, help="the OUT folder of `train`")
        p.add_argument("--device", default="cuda", help="cuda or cpu (default cuda)")
        p.add_argument("--passkey", default="1024,2048,4096,8192", help="passkey lengths ('' = none)")
        p.add_argument("--multikey", default="1024,2048,4096,8192", help="multi-key retrieval lengths ('' = none)")
        p.add_argument("--repeat", default="256,512,1024,2048,4096", help="repeated-span gaps ('' = none)")
        p.add_argument("--position-length", type=int, default=4096, help="loss-by-position sequence length (0 = none)")
        p.add_argument("--trials", type=int, default=20, help="trials per length, sequences and spans (default 20)")

    p = sub.add_parser("longctx", help="long-context measures of the teacher, swa:64:4 and the students (GPU)")
    common(p)
    longctx_options(p)
    p.add_argument("--students", help="comma-separated subset (default: every run in --runs)")
    p.add_argument("--models", help="exactly these models: 'teacher', swa:64:4 and/or student names (instead of "
                   "the teacher, the baseline and --students)")
    p.add_argument("--output", required=True, help="JSON with every model's measures")
    p.add_argument("--parallel", type=int, default=16, help="models measured at once (one process each)")
    p.set_defaults(run=cmd_longctx)

    p = sub.add_parser("_longctx", help=argparse.SUPPRESS)
    common(p)
    longctx_options(p)
    p.add_argument("--spec", required=True)
    p.add_argument("--part", required=True)
    p.set_defaults(run=run_longctx_model)

    args = parser.parse_args(argv)
    return args.run(args)
