"""Reproduce the paper's recovery at small scale: corpus -> students -> one recovery report (docs/reproduce.md).

The steps live in the package ``benchmarks/repro`` (``common``, ``corpus``, ``train``, ``evaluate``, ``results``,
``cli``; its docstring describes them); this script is its command line::

    python benchmarks/reproduce.py corpus --out ~/.cache/liger/repro-corpus
    python benchmarks/reproduce.py train --corpus CORPUS --students gla,window-only --tokens 2500000 --out RUNS
    python benchmarks/reproduce.py eval --corpus CORPUS --runs RUNS --output-dir REPORT
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # liger, when run from a checkout without installing it
sys.path.insert(0, str(HERE))  # the repro package

from repro.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
