"""Speed and memory of a Liger model against its teacher: prefill, per-token decoding at given context
lengths, CUDA-graph decoding, and LoRA fine-tuning throughput (``liger bench``).

    from liger.bench import load_bench_config, run_bench, format_report
    report = run_bench(load_bench_config("bench.yaml", ["batch_size=8"]))

``config.py``: the typed config; ``measure.py``: the measurements (:func:`run_bench`); ``teachers.py``: the
teachers decoded against (HF eager, HF static cache + torch.compile, and ``teacher_decode.py``'s hand-written
GQA step in a CUDA graph); ``serve.py``: the serving-throughput search; ``report.py``: the tables, the plots, the
ratios against each teacher and the estimated decode times; ``autotune.py``: bounds on Triton's autotuning for
benchmark runs.
Not imported by ``import liger``; importing it imports none of its modules until a name below is used.
"""

import importlib

_EXPORTS = {"BenchConfig": ".config", "load_bench_config": ".config", "run_bench": ".measure",
            "format_report": ".report", "plot_report": ".report", "plot_serving": ".report",
            "find_max_batch": ".serve", "GQADecodeTeacher": ".teacher_decode"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'liger.bench' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
