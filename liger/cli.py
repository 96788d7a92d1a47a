"""The ``liger`` command line: thin subcommands over the library API.

Each subcommand lives in a module with ``add_parser(subparsers)`` (which sets ``run`` as the parser's
default) and imports its heavy dependencies inside ``run``, so ``liger --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__

SUBCOMMANDS = [
    "liger.commands.convert",
    "liger.commands.generate",
    "liger.commands.bench",
    "liger.commands.finetune",
    "liger.commands.linearize",
    "liger.commands.eval",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liger",
        description="Linearize pretrained LLMs into gated linear recurrent models (Liger, arXiv 2503.01496).",
    )
    parser.add_argument("--version", action="version", version=f"liger {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback when a command fails")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # ``key.sub=value`` overrides may come between options; argparse leaves those out of the positionals
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"liger {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line for the user; --traceback for the whole story
        if args.traceback:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"liger {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
