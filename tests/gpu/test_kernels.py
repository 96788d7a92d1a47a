"""GPU tier: fla's Triton kernels (through liger's adapters) against the pure-PyTorch references.

Run on a CUDA machine with fla installed: ``pytest -m gpu tests/gpu``. Model-level checks (every variant on fla
vs the PyTorch path, FlexAttention, CUDA-graph decoding) are in test_model_gpu.py and test_decode.py.
Tolerances (relative RMS error): float32 inputs 1e-4, bfloat16 inputs 1e-2. fla autotunes each new kernel
shape on first use (seconds per kernel on a fresh machine), so the shapes here are few and share head_dim 64.
"""

import pytest
import torch
import torch.nn.functional as F

from liger.models import fla_backend
from liger.models.recurrence import naive_recurrent_gla
from tests.conftest import assert_close

pytestmark = pytest.mark.gpu

TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


def needs_fla():
    if not fla_backend.is_available():
        pytest.skip("fla is not installed")


def inputs(B, T, H, G, K, V, gate, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, T, H * G, K, device="cuda", generator=g).softmax(-1)
    k_raw = torch.randn(B, T, H, K, device="cuda", generator=g)
    k = k_raw.softmax(-1)
    v = torch.randn(B, T, H, V, device="cuda", generator=g)
    gk = gv = None
    if gate == "key":
        gk = F.logsigmoid(k_raw) / 16
    elif gate == "scalar":
        gk = F.logsigmoid(k_raw.mean(-1)) / 16
    elif gate == "value":
        gv = F.logsigmoid(torch.randn(B, T, H, V, device="cuda", generator=g)) / 16
    h0 = torch.randn(B, H, K, V, device="cuda", generator=g) * 0.1
    cast = lambda x: None if x is None else x.to(dtype)  # noqa: E731
    return cast(q), cast(k), cast(v), gk, gv, h0


def reference(q, k, v, gk, gv, h0):
    d = lambda x: None if x is None else x.double().cpu()  # noqa: E731
    return naive_recurrent_gla(d(q), d(k), d(v), d(gk), d(gv), 1.0, d(h0), True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [1000])
@pytest.mark.parametrize("gate", ["key", "scalar"])
@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_fla_gla_matches_reference(dtype, T, gate, mode):
    needs_fla()
    q, k, v, gk, gv, h0 = inputs(2, T, 2, 3, 64, 64, gate, dtype)
    o, s = fla_backend.gla(q, k, v, gk, gv, 1.0, h0, True, mode)
    o_ref, s_ref = reference(q, k, v, gk, gv, h0)
    assert o.shape == o_ref.shape and s.shape == s_ref.shape
    assert_close(o.cpu(), o_ref, TOL[dtype], msg="output")
    assert_close(s.cpu(), s_ref, TOL[dtype], msg="final state")


def test_fla_single_token_decode_step_matches_reference():
    needs_fla()
    q, k, v, gk, gv, h0 = inputs(3, 1, 2, 3, 64, 64, "key", torch.float32)
    o, s = fla_backend.gla(q, k, v, gk, gv, 1.0, h0, True, "recurrent")
    o_ref, s_ref = reference(q, k, v, gk, gv, h0)
    assert_close(o.cpu(), o_ref, 1e-4)
    assert_close(s.cpu(), s_ref, 1e-4)


def test_fla_gla_value_gate_matches_reference():
    needs_fla()
    q, k, v, gk, gv, h0 = inputs(1, 300, 2, 2, 64, 64, "value", torch.float32)
    o, s = fla_backend.gla(q, k, v, gk, gv, 1.0, h0, True, "recurrent")
    o_ref, s_ref = reference(q, k, v, gk, gv, h0)
    assert_close(o.cpu(), o_ref, 1e-4)
    assert_close(s.cpu(), s_ref, 1e-4)


@pytest.mark.parametrize("gate", ["key", "scalar"])
def test_fla_gla_gradients_match_reference(gate):
    needs_fla()
    q, k, v, gk, gv, h0 = inputs(1, 200, 2, 2, 64, 64, gate, torch.float32)
    leaves = [x.clone().requires_grad_() for x in (q, k, v, gk, h0)]
    o, s = fla_backend.gla(leaves[0], leaves[1], leaves[2], leaves[3], None, 1.0, leaves[4], True, "chunk")
    (o.square().sum() + s.sin().sum()).backward()
    ref = [x.detach().double().cpu().requires_grad_() for x in (q, k, v, gk, h0)]
    o_r, s_r = naive_recurrent_gla(ref[0], ref[1], ref[2], ref[3], None, 1.0, ref[4], True)
    (o_r.square().sum() + s_r.sin().sum()).backward()
    for name, a, b in zip("q k v g h0".split(), leaves, ref):
        assert_close(a.grad.cpu(), b.grad, 1e-4, msg=f"d{name}")
