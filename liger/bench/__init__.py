"""Speed and memory of a Liger model against its teacher: prefill, per-token decoding at given context
lengths, CUDA-graph decoding, and LoRA fine-tuning throughput (``liger bench``).

    from liger.bench import load_bench_config, run_bench, format_report
    report = run_bench(load_bench_config("bench.yaml", ["batch_size=8"]))

``config.py``: the typed config; ``measure.py``: the measurements (:func:`run_bench`); ``report.py``: the table,
the plot and the estimated decode times; ``autotune.py``: bounds on Triton's autotuning for benchmark runs.
Not imported by ``import liger``.
"""

from .config import BenchConfig, load_bench_config
from .measure import run_bench
from .report import format_report, plot_report

__all__ = ["BenchConfig", "format_report", "load_bench_config", "plot_report", "run_bench"]
