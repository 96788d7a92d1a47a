"""fla adapters on CPU through Triton's interpreter (fla's fused_recurrent kernels run there; its chunk kernels
do not): checks the argument layout the adapters pass (time-first tensors, grouped heads, per-KV-head states)
against the pure-PyTorch recurrence. Skipped when fla is not installed. The CUDA kernels themselves are
checked by the gpu tier (tests/gpu)."""

import importlib.util
import textwrap

import pytest

from tests.conftest import run_in_triton_interpreter

pytestmark = pytest.mark.skipif(importlib.util.find_spec("fla") is None, reason="fla is not installed")

SCRIPT = textwrap.dedent('''
    import triton.runtime.autotuner as at
    _prune = at.Autotuner.prune_configs
    at.Autotuner.prune_configs = lambda self, kwargs: _prune(self, kwargs)[:1]  # no GPU to benchmark configs on
    import torch
    import torch.nn.functional as F
    from types import SimpleNamespace
    from liger.models.variants import get_recurrence
    torch.manual_seed(0)
    B, T, H, G, D = 2, 5, 2, 3, 16
    q, k, v = torch.randn(B, T, H * G, D), torch.randn(B, T, H, D), torch.randn(B, T, H, D)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, :2] = False
    worst = 0.0
    cases = [(variant, None, "none") for variant in ("gla", "hgrn2", "gsa", "mamba2", "mlstm", "gated_retention",
                                                     "rwkv6", "gated_deltanet")]
    cases += [("gated_deltanet", 0.4, "none"), ("gla", None, "sum"), ("mamba2", None, "sum")]
    for variant, strength, normalizer in cases:
        rec = get_recurrence(SimpleNamespace(variant=variant, feature_map="softmax", linear_scale=1.0,
                                             gate_normalizer=1.0 if variant == "hgrn2" else 16.0,
                                             gate_pool_size=None, hgrn2_lower_bound=0.0, gsa_num_slots=None,
                                             delta_write_strength=strength, linear_normalizer=normalizer,
                                             global_cache_size=4 if normalizer == "sum" else 0))
        o_t, s_t = rec(q, k, v, valid, None, "recurrent", "torch")
        o_f, s_f = rec(q, k, v, valid, None, "recurrent", "fla")
        # then one decode token from the carried state (the single-token kernels)
        o_t1, s_t1 = rec(q[:, :1], k[:, :1], v[:, :1], None, s_t, "recurrent", "torch")
        with torch.no_grad():
            o_f1, s_f1 = rec(q[:, :1], k[:, :1], v[:, :1], None, s_f, "recurrent", "fla")
        pairs = [(o_t, o_f), (o_t1, o_f1), *zip(s_t, s_f), *zip(s_t1, s_f1)]
        if normalizer == "sum":  # the global cache's self-recall reads: earlier keys as one query per KV head
            with torch.no_grad():
                pairs.append((rec.recall(k, k, v, valid, None, "recurrent", "torch")[0],
                              rec.recall(k, k, v, valid, None, "recurrent", "fla")[0]))
        for a, b in pairs:
            assert a.shape == b.shape, (variant, a.shape, b.shape)
            worst = max(worst, ((a.float() - b.float()).norm() / a.float().norm()).item())
    print("WORST", worst)
''')


def test_fla_adapters_match_torch_in_the_triton_interpreter():
    worst = run_in_triton_interpreter(SCRIPT)
    assert worst < 1e-5, worst
