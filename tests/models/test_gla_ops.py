import pytest
import torch
import torch.nn.functional as F

from liger.models.gla_ops import chunk_gla, naive_recurrent_gla
from tests.conftest import assert_close

GATES = ("key", "scalar", "value", "none")


def make_inputs(B, T, H, G, K, V, gate, dtype=torch.float64, strength=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H * G, K, dtype=dtype, generator=g)
    k = torch.randn(B, T, H, K, dtype=dtype, generator=g)
    v = torch.randn(B, T, H, V, dtype=dtype, generator=g)
    gk = gv = None
    if gate == "key":
        gk = F.logsigmoid(torch.randn(B, T, H, K, dtype=dtype, generator=g) * strength)
    elif gate == "scalar":
        gk = F.logsigmoid(torch.randn(B, T, H, dtype=dtype, generator=g) * strength)
    elif gate == "value":
        gv = F.logsigmoid(torch.randn(B, T, H, V, dtype=dtype, generator=g) * strength)
    h0 = torch.randn(B, H, K, V, dtype=dtype, generator=g)
    return q, k, v, gk, gv, h0


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("T", [1, 7, 63, 64, 130])
def test_chunk_gla_matches_recurrent(gate, T):
    q, k, v, gk, gv, h0 = make_inputs(2, T, 3, 2, 8, 6, gate)
    o_ref, s_ref = naive_recurrent_gla(q, k, v, gk, gv, 0.7, h0, True)
    o, s = chunk_gla(q, k, v, gk, gv, 0.7, h0, True, chunk_size=32, sub_chunk_size=8)
    assert_close(o, o_ref, 1e-12, msg="output")
    assert_close(s, s_ref, 1e-12, msg="final state")


@pytest.mark.parametrize("gate", GATES)
def test_chunk_gla_gradients_match_recurrent(gate):
    inputs = make_inputs(1, 45, 2, 2, 8, 4, gate)
    grads = []
    for fn in (naive_recurrent_gla, chunk_gla):
        leaves = [x.clone().requires_grad_() if x is not None else None for x in inputs]
        q, k, v, gk, gv, h0 = leaves
        o, s = fn(q, k, v, gk, gv, 0.5, h0, True)
        (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum().backward(retain_graph=True)
        (s.sin().sum()).backward()
        grads.append([x.grad for x in leaves if x is not None])
    for g_ref, g_chunk in zip(*grads):
        assert_close(g_chunk, g_ref, 1e-11, msg="gradient")


@pytest.mark.parametrize("gate", GATES)
def test_chunk_gla_gradcheck(gate):
    q, k, v, gk, gv, h0 = make_inputs(1, 11, 1, 2, 3, 2, gate, strength=1.0)
    args = [x.requires_grad_() for x in (q, k, v, gk, gv, h0) if x is not None]

    def fn(*xs):
        xs = list(xs)
        q, k, v = xs[:3]
        rest = xs[3:]
        gk = rest.pop(0) if gate in ("key", "scalar") else None
        gv = rest.pop(0) if gate == "value" else None
        o, s = chunk_gla(q, k, v, gk, gv, 1.0, rest[0], True, chunk_size=8, sub_chunk_size=4)
        return o, s

    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("fn", [naive_recurrent_gla, chunk_gla])
@pytest.mark.parametrize("gate", GATES)
def test_split_sequence_with_carried_state_equals_whole(fn, gate):
    q, k, v, gk, gv, h0 = make_inputs(2, 100, 2, 3, 8, 8, gate)
    o, s = fn(q, k, v, gk, gv, 1.0, h0, True)
    cut = 37
    part = lambda x, sl: x[:, sl] if x is not None else None  # noqa: E731
    a = slice(0, cut)
    b = slice(cut, None)
    o1, s1 = fn(part(q, a), part(k, a), part(v, a), part(gk, a), part(gv, a), 1.0, h0, True)
    o2, s2 = fn(part(q, b), part(k, b), part(v, b), part(gk, b), part(gv, b), 1.0, s1, True)
    assert_close(torch.cat([o1, o2], 1), o, 1e-12)
    assert_close(s2, s, 1e-12)


@pytest.mark.parametrize("normalizer", [1.0, 16.0])
def test_chunk_gla_is_finite_with_strong_gates(normalizer):
    # logsigmoid of large negative keys with normalizer 1 (HGRN2) gives decays near exp(-60) per step:
    # a naive exp(-cumsum) chunked form overflows here
    q, k, v, _, _, _ = make_inputs(1, 200, 2, 1, 16, 16, "none", dtype=torch.float32)
    gk = F.logsigmoid(-60 * torch.rand(1, 200, 2, 16)) / normalizer
    o_ref, s_ref = naive_recurrent_gla(q.double(), k.double(), v.double(), gk.double(), output_final_state=True)
    o, s = chunk_gla(q, k, v, gk, output_final_state=True)
    assert_close(o, o_ref, 1e-5)
    assert_close(s, s_ref, 1e-5)


def test_float32_inputs_compute_in_float32_and_bfloat16_upcasts():
    q, k, v, gk, _, _ = make_inputs(1, 20, 1, 1, 4, 4, "key", dtype=torch.bfloat16)
    o, s = chunk_gla(q, k, v, gk, output_final_state=True)
    assert o.dtype == torch.float32 and s.dtype == torch.float32


def test_shape_errors_are_clear():
    q, k, v, gk, _, _ = make_inputs(1, 5, 2, 1, 4, 4, "key")
    with pytest.raises(ValueError, match="gk must be"):
        chunk_gla(q, k, v, gk[..., :2])
    with pytest.raises(ValueError, match="multiple of key heads"):
        chunk_gla(q[:, :, :1], k, v)
    with pytest.raises(ValueError, match="not both"):
        chunk_gla(q, k, v, gk, torch.zeros_like(v))
