"""The Triton RoPE and Liger-GLA input kernels (the CUDA fast path) on CPU, through Triton's interpreter: outputs
and gradients against the PyTorch functions they replace (``attention.rope_pair``, ``variants._fla_inputs``),
with grouped heads, padding, head dims that are not powers of two and cos/sin shared over the batch. Skipped when
Triton is not installed; the gpu tier checks the compiled kernels inside the model (tests/gpu)."""

import importlib.util
import textwrap

import pytest

from tests.conftest import run_in_triton_interpreter

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

SCRIPT = textwrap.dedent('''
    import torch
    from types import SimpleNamespace
    from liger.models import triton_ops
    from liger.models.attention import rope_pair
    from liger.models.variants import _fla_inputs, get_recurrence

    torch.manual_seed(0)
    worst = {}

    for B, T, HQ, H, D, cos_batch in [(2, 37, 6, 2, 16, 2), (1, 50, 3, 3, 24, 1), (3, 9, 4, 1, 64, 1)]:
        q = torch.randn(B, T, HQ, D, requires_grad=True)
        k = torch.randn(B, T, H, D, requires_grad=True)
        angle = torch.randn(cos_batch, T, D // 2).repeat(1, 1, 2) * 3
        cos, sin = angle.cos(), angle.sin()
        out = triton_ops.rope_pair(q, k, cos, sin)
        ref = rope_pair(q, k, cos, sin)
        w = [torch.randn_like(x) for x in ref]
        for name, a, b in zip(("q", "k"), out, ref):
            note("rope " + name, rel(a, b))
        grads = torch.autograd.grad(out, (q, k), w), torch.autograd.grad(ref, (q, k), w)
        for name, a, b in zip(("dq", "dk"), *grads):
            note("rope " + name, rel(a, b))

    rec = get_recurrence(SimpleNamespace(variant="gla", feature_map="softmax", linear_scale=1.0, gate_normalizer=16.0,
                                         gate_pool_size=None, hgrn2_lower_bound=0.0, gsa_num_slots=None,
                                         linear_normalizer="none", global_cache_size=0, delta_write_strength=None))
    for B, T, HQ, H, D, padded in [(2, 37, 6, 2, 16, True), (1, 50, 3, 3, 24, False), (3, 9, 4, 1, 64, True)]:
        q = torch.randn(B, T, HQ, D, requires_grad=True)
        k = (torch.randn(B, T, H, D) * 4).requires_grad_()  # gates near 0 and 1
        v = torch.randn(B, T, H, D, requires_grad=True)
        valid = None
        if padded:
            valid = torch.ones(B, T, dtype=torch.bool)
            valid[0, :5] = False
            valid[-1, T // 2] = False
        assert rec.triton_inputs(q, k)
        out = triton_ops.gla_inputs(q, k, v, valid, 16.0, torch.float32)
        ref = _fla_inputs(rec, q, k, v, valid)[:4]  # (q, k, v, log-decay, value gate None)
        for name, a, b in zip(("q", "k", "v", "g"), out, ref):
            assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
            note("inputs " + name, rel(a, b))
        w = [torch.randn_like(x) for x in ref]
        grads = torch.autograd.grad(out, (q, k, v), w), torch.autograd.grad(ref, (q, k, v), w)
        for name, a, b in zip(("dq", "dk", "dv"), *grads):
            note("inputs " + name, rel(a, b))
        # once per KV head (repeat=False, for the grouped-query chunk kernels): the repeated tensors' first copies
        G = HQ // H
        once = triton_ops.gla_inputs(q, k, v, valid, 16.0, torch.float32, repeat=False)
        ref = _fla_inputs(rec, q, k, v, valid)[:4]  # (a new graph: the one above was freed by its backward)
        ref_once = (ref[0], *(x[:, :, ::G] for x in ref[1:4]))
        for name, a, b in zip(("q", "k", "v", "g"), once, ref_once):
            assert a.shape == b.shape, (name, a.shape, b.shape)
            note("once " + name, rel(a, b))
        w = [torch.randn_like(x) for x in ref_once]
        grads = torch.autograd.grad(once, (q, k, v), w), torch.autograd.grad(ref_once, (q, k, v), w)
        for name, a, b in zip(("dq", "dk", "dv"), *grads):
            note("once " + name, rel(a, b))
    print("WORST", worst)
''')


def test_triton_rope_and_gla_inputs_match_torch_in_the_interpreter():
    worst = run_in_triton_interpreter(SCRIPT)
    expected = {f"rope {n}" for n in ("q", "k", "dq", "dk")}
    expected |= {f"{kind} {n}" for kind in ("inputs", "once") for n in ("q", "k", "v", "g", "dq", "dk", "dv")}
    assert set(worst) == expected
    for name, err in worst.items():
        assert err < 1e-5, (name, err)
