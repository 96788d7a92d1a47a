"""Evaluation: lm-eval suites on in-memory models, perplexity, long-context measures (passkey and multi-key
retrieval, loss by position, repeated-span recall) and recovery reports.

    from liger.eval import evaluate
    result = evaluate("out/liger-gla", tasks="offline", limit=100)
    result["tasks"]["bb_social_iqa"]   # {"metric": "acc_norm", "value": ..., "stderr": ..., ...}

Not imported by ``import liger``; lm-eval and matplotlib (the ``eval`` extra) are imported when used: the
long-context measures (:func:`long_context`) need neither.
"""

from .harness import SUITES, evaluate
from .long_context import check_long_context, long_context
from .longtext import LongText
from .multikey import multikey
from .passkey import passkey
from .position import position_loss
from .ppl import perplexity
from .recall import repeat_recall
from .report import compare, measure, write_report

__all__ = ["SUITES", "LongText", "check_long_context", "compare", "evaluate", "long_context", "measure", "multikey",
           "passkey", "perplexity", "position_loss", "repeat_recall", "write_report"]
