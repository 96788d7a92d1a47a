"""The gated delta rule (delta_rule.py): chunked form and decode step against the token loop, and the
gated_deltanet variant against a direct transcription of its formula."""

import pytest
import torch
import torch.nn.functional as F

from liger.models.configuration_liger import LigerConfig
from liger.models.delta_rule import chunk_gated_delta_rule, gated_delta_rule_step_, naive_recurrent_gated_delta_rule
from liger.models.variants import VARIANT_CLASSES, get_recurrence
from tests.conftest import assert_close, tiny_config


def make_inputs(B, T, H, G, K, V, dtype=torch.float64, strength=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H * G, K, dtype=dtype, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, dtype=dtype, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, dtype=dtype, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, dtype=dtype, generator=gen) * strength)
    beta = torch.rand(B, T, H, dtype=dtype, generator=gen)
    h0 = torch.randn(B, H, K, V, dtype=dtype, generator=gen)
    return q, k, v, g, beta, h0


@pytest.mark.parametrize("T", [1, 7, 63, 64, 65, 130])
def test_chunk_matches_recurrent(T):
    q, k, v, g, beta, h0 = make_inputs(2, T, 2, 2, 8, 6)
    o_ref, s_ref = naive_recurrent_gated_delta_rule(q, k, v, g, beta, 0.7, h0, True)
    o, s = chunk_gated_delta_rule(q, k, v, g, beta, 0.7, h0, True)
    assert o.shape == (2, T, 4, 6) and s.shape == (2, 2, 8, 6)
    assert_close(o, o_ref, 1e-12, msg="output")
    assert_close(s, s_ref, 1e-12, msg="final state")


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_chunk_size_does_not_change_the_result(chunk_size):
    q, k, v, g, beta, h0 = make_inputs(1, 100, 2, 1, 8, 8)
    o_ref, s_ref = naive_recurrent_gated_delta_rule(q, k, v, g, beta, 1.0, h0, True)
    o, s = chunk_gated_delta_rule(q, k, v, g, beta, 1.0, h0, True, chunk_size=chunk_size)
    assert_close(o, o_ref, 1e-12)
    assert_close(s, s_ref, 1e-12)


def test_chunk_gradients_match_recurrent():
    # T = 45 with chunks of 16: three chunks, the last one padded; grouped queries
    inputs = make_inputs(1, 45, 2, 2, 8, 4)
    grads = []
    for fn in (naive_recurrent_gated_delta_rule, lambda *a: chunk_gated_delta_rule(*a, chunk_size=16)):
        leaves = [x.clone().requires_grad_() for x in inputs]
        q, k, v, g, beta, h0 = leaves
        o, s = fn(q, k, v, g, beta, 0.5, h0, True)
        (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum().backward(retain_graph=True)
        s.sin().sum().backward()
        grads.append([x.grad for x in leaves])
    for name, g_ref, g_chunk in zip(("q", "k", "v", "g", "beta", "h0"), *grads):
        assert g_ref is not None and g_ref.abs().sum() > 0, name
        assert_close(g_chunk, g_ref, 1e-11, msg=f"d{name}")


def test_chunk_gradcheck():
    q, k, v, g, beta, h0 = make_inputs(1, 11, 1, 2, 3, 2, strength=1.0)
    args = [x.requires_grad_() for x in (q, k, v, g, beta, h0)]

    def fn(q, k, v, g, beta, h0):
        return chunk_gated_delta_rule(q, k, v, g, beta, 1.0, h0, True, chunk_size=4)

    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("fn", [naive_recurrent_gated_delta_rule, chunk_gated_delta_rule])
def test_split_sequence_with_carried_state_equals_whole(fn):
    q, k, v, g, beta, h0 = make_inputs(2, 100, 2, 3, 8, 8)
    o, s = fn(q, k, v, g, beta, 1.0, h0, True)
    cut = 37
    first = [x[:, :cut] for x in (q, k, v, g, beta)]
    second = [x[:, cut:] for x in (q, k, v, g, beta)]
    o1, s1 = fn(*first, 1.0, h0, True)
    o2, s2 = fn(*second, 1.0, s1, True)
    assert_close(torch.cat([o1, o2], 1), o, 1e-12)
    assert_close(s2, s, 1e-12)


def test_step_matches_recurrent_and_updates_the_state_in_place():
    q, k, v, g, beta, h0 = make_inputs(2, 9, 2, 2, 8, 6)
    o_ref, s_ref = naive_recurrent_gated_delta_rule(q, k, v, g, beta, 0.7, h0, True)
    state = h0.clone()
    address = state.data_ptr()
    outs = [gated_delta_rule_step_(state, q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], g[:, t : t + 1],
                                   beta[:, t : t + 1], 0.7) for t in range(9)]
    assert state.data_ptr() == address
    assert_close(torch.cat(outs, 1), o_ref, 1e-12)
    assert_close(state, s_ref, 1e-12)


@pytest.mark.parametrize("normalizer", [1.0, 16.0])
def test_chunk_is_finite_with_strong_gates(normalizer):
    # log-decays down to -60 per step: a chunked form that divides by exp(cumsum) overflows here
    q, k, v, _, beta, _ = make_inputs(1, 200, 2, 1, 16, 16, dtype=torch.float32)
    g = F.logsigmoid(-60 * torch.rand(1, 200, 2)) / normalizer
    o_ref, s_ref = naive_recurrent_gated_delta_rule(q.double(), k.double(), v.double(), g.double(), beta.double(),
                                                    output_final_state=True)
    o, s = chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert_close(o, o_ref, 1e-5)
    assert_close(s, s_ref, 1e-5)


def test_grouped_queries_read_their_kv_heads_state():
    # HQ = 4 query heads over H = 2 KV heads equals each query head run against its KV head alone
    q, k, v, g, beta, h0 = make_inputs(1, 20, 2, 2, 8, 6)
    o, s = chunk_gated_delta_rule(q, k, v, g, beta, 1.0, h0, True)
    for hq in range(4):
        h = slice(hq // 2, hq // 2 + 1)
        o_h, s_h = naive_recurrent_gated_delta_rule(q[:, :, hq : hq + 1], k[:, :, h], v[:, :, h], g[:, :, h],
                                                    beta[:, :, h], 1.0, h0[:, h], True)
        assert_close(o[:, :, hq : hq + 1], o_h, 1e-12, msg=f"query head {hq}")
        assert_close(s[:, h], s_h, 1e-12)


def test_padding_positions_leave_the_state_unchanged():
    q, k, v, g, beta, h0 = make_inputs(1, 30, 2, 1, 8, 8)
    g, beta = g.clone(), beta.clone()
    g[:, 10:20], beta[:, 10:20] = 0, 0
    for fn in (naive_recurrent_gated_delta_rule, chunk_gated_delta_rule):
        _, s_before = fn(q[:, :10], k[:, :10], v[:, :10], g[:, :10], beta[:, :10], 1.0, h0, True)
        _, s_after = fn(q[:, :20], k[:, :20], v[:, :20], g[:, :20], beta[:, :20], 1.0, h0, True)
        assert_close(s_after, s_before, 1e-14)


def test_float32_and_bfloat16_inputs_compute_in_float32():
    q, k, v, g, beta, _ = make_inputs(1, 20, 1, 1, 4, 4, dtype=torch.bfloat16)
    o, s = chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    assert o.dtype == torch.float32 and s.dtype == torch.float32


def test_shape_errors_are_clear():
    q, k, v, g, beta, _ = make_inputs(1, 5, 2, 1, 4, 4)
    with pytest.raises(ValueError, match="beta must be"):
        chunk_gated_delta_rule(q, k, v, g, beta[..., None])
    with pytest.raises(ValueError, match="g must be"):
        naive_recurrent_gated_delta_rule(q, k, v, g[:, :, :1], beta)
    with pytest.raises(ValueError, match="multiple of key heads"):
        chunk_gated_delta_rule(q[:, :, :1], k, v, g, beta)


def make(**kw):
    config = LigerConfig.from_base_config(tiny_config("llama"), variant="gated_deltanet", **kw)
    return VARIANT_CLASSES["gated_deltanet"](config)


def transcription(q, k, v, valid, beta_const=None, n=16.0, s=1.0):
    """The variant's formula, token by token, written out directly (float64)."""
    B, T, HQ, D = q.shape
    H = k.shape[2]
    l2 = lambda x: x / (x.square().sum(-1, keepdim=True) + 1e-6).sqrt()  # noqa: E731
    qn, kn = l2(q), l2(k)
    m = k.mean(-1)  # [B,T,H]
    alpha = torch.sigmoid(m) ** (1 / n)
    beta = torch.sigmoid(m) if beta_const is None else torch.full_like(m, beta_const)
    S = torch.zeros(B, H, D, D, dtype=torch.float64)
    out = torch.zeros(B, T, HQ, D, dtype=torch.float64)
    eye = torch.eye(D, dtype=torch.float64)
    for t in range(T):
        for b in range(B):
            if not valid[b, t]:
                continue
            for h in range(H):
                kk, a, bt = kn[b, t, h][:, None], alpha[b, t, h], beta[b, t, h]  # k̂ as a column
                # S_t = α_t (I − β_t k̂ k̂ᵀ) S_{t-1} + β_t k̂ v_tᵀ
                S[b, h] = a * (eye - bt * kk @ kk.T) @ S[b, h] + bt * kk @ v[b, t, h][None]
        for hq in range(HQ):
            out[:, t, hq] = s * torch.einsum("bk,bkv->bv", qn[:, t, hq], S[:, hq // (HQ // H)])
    return out, S


@pytest.mark.parametrize("strength", [None, 0.3])
def test_gated_deltanet_formula(strength):
    from tests.models.test_variants import qkv

    q, k, v = qkv(B=2, T=13, HQ=4, H=2, D=8)
    valid = torch.ones(2, 13, dtype=torch.bool)
    valid[1, :4] = False
    rec = make(delta_write_strength=strength, linear_scale=0.5)
    expected, S_expected = transcription(q, k, v, valid, strength, s=0.5)
    for mode in ("chunk", "recurrent"):
        o, (S,) = rec(q, k, v, valid, None, mode, "torch")
        assert_close(o[0], expected[0], 1e-10, msg=mode)
        assert_close(o[1, 4:], expected[1, 4:], 1e-10, msg=mode)
        assert_close(S, S_expected, 1e-10, msg=mode)


def test_gated_deltanet_ignores_the_feature_map_and_uses_its_gate_normaliser():
    from tests.models.test_variants import qkv

    q, k, v = qkv(B=1, T=9, HQ=2, H=1, D=8)
    o_soft, _ = make(feature_map="softmax")(q, k, v, None, None, "chunk", "torch")
    o_relu, _ = make(feature_map="relu")(q, k, v, None, None, "chunk", "torch")
    assert torch.equal(o_soft, o_relu)
    qn, kn, _, g, beta = make(gate_normalizer=4.0).inputs(q, k, v)
    assert_close(g, F.logsigmoid(k.mean(-1)) / 4, 1e-12)
    assert_close(beta, torch.sigmoid(k.mean(-1)), 1e-12)
    assert_close(kn.norm(dim=-1), torch.ones(1, 9, 1, dtype=torch.float64), 1e-6)


def test_delta_write_strength_is_part_of_the_shared_instance_key():
    config = LigerConfig.from_base_config(tiny_config("llama"), variant="gated_deltanet")
    strong = LigerConfig.from_base_config(tiny_config("llama"), variant="gated_deltanet", delta_write_strength=0.5)
    assert get_recurrence(config).write_strength is None
    assert get_recurrence(strong).write_strength == 0.5
    assert get_recurrence(strong) is get_recurrence(strong)
