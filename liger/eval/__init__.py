"""Evaluation: lm-eval suites on in-memory models, perplexity, passkey retrieval and recovery reports.

    from liger.eval import evaluate
    result = evaluate("out/liger-gla", tasks="offline", limit=100)
    result["tasks"]["bb_social_iqa"]   # {"metric": "acc_norm", "value": ..., "stderr": ..., ...}

Not imported by ``import liger``; lm-eval and matplotlib (the ``eval`` extra) are imported when used.
"""

from .harness import SUITES, evaluate
from .passkey import passkey
from .ppl import perplexity
from .report import compare, measure, write_report

__all__ = ["SUITES", "compare", "evaluate", "measure", "passkey", "perplexity", "write_report"]
