"""liger/bench/measure.py: the correctness check of the fast path against the reference ops."""

import torch

from tests.conftest import tiny_teacher


def test_half_precision_check_measures_both_paths_against_float32(monkeypatch):
    """bf16: when the fast path and the reference ops differ by more than the limit, both are compared with the
    reference ops in float32; a fast path as close to float32 as the reference passes, a worse one fails."""
    import liger
    from liger.bench import measure
    from liger.bench.report import format_report

    model = liger.convert(tiny_teacher("llama", dtype=torch.bfloat16)).eval()
    generator = torch.Generator().manual_seed(0)
    monkeypatch.setattr(measure, "HALF_PRECISION_LIMIT", 0.0)  # always go on to the float32 comparison
    report = {}
    with torch.no_grad():
        measure._check_fast_path(model, None, torch.device("cpu"), generator, report)
    check = report["checks"]
    assert check["float32_prefill_rel_err"]["reference"] > 0  # bf16 rounding, measured
    # (on a CPU the fast path differs from the reference ops only in the window's op, SDPA blocks: bf16 rounding
    # of the same size)
    fast, ref = check["float32_prefill_rel_err"]["fast"], check["float32_prefill_rel_err"]["reference"]
    assert abs(fast - ref) <= 0.05 * ref, (fast, ref)
    assert check["passed"]

    real = measure._path_logits

    def noisy(model, ids, mask, pos, T, steps, backend, mode):
        out = real(model, ids, mask, pos, T, steps, backend, mode)
        if backend is None and model.dtype == torch.bfloat16:  # the "fast" path: 5% relative noise
            return tuple(x + 0.05 * x.std() * torch.randn_like(x) if torch.is_tensor(x) else x for x in out)
        return out

    monkeypatch.setattr(measure, "_path_logits", noisy)
    report = {}
    with torch.no_grad():
        measure._check_fast_path(model, None, torch.device("cpu"), generator, report)
    assert not report["checks"]["passed"]
    empty = {key: [] for key in ("prefill", "decode", "graph", "train", "errors", "skipped")}
    printed = format_report(dict(empty, provenance={}, config={"dtype": "bfloat16", "batch_size": 1},
                                            models={}, profiles={}, checks=report["checks"]))
    assert "vs the reference ops in float32" in printed and printed.splitlines()[2].endswith("FAIL")
