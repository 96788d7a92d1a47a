"""Speed and memory of a Liger model against its teacher: prefill, per-token decoding at given context
lengths, CUDA-graph decoding, and LoRA fine-tuning throughput (``liger bench``).

Not imported by ``import liger``.
"""

from .throughput import BenchConfig, evaluate_targets, format_report, run_bench

__all__ = ["BenchConfig", "evaluate_targets", "format_report", "run_bench"]
