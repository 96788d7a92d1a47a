"""Each variant's documented formula, and its chunked and recurrent forms agreeing."""

import pytest
import torch
import torch.nn.functional as F

from liger.models.configuration_liger import LigerConfig
from liger.models.variants import VARIANT_CLASSES
from tests.conftest import VARIANTS, assert_close, tiny_config


def make(variant, **kw):
    config = LigerConfig.from_base_config(tiny_config("llama"), variant=variant, **kw)
    return VARIANT_CLASSES[variant](config), config


def qkv(B=2, T=40, HQ=4, H=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, HQ, D, generator=g, dtype=torch.float64) * 2,
            torch.randn(B, T, H, D, generator=g, dtype=torch.float64) * 2,
            torch.randn(B, T, H, D, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("variant", VARIANTS)
def test_chunk_and_recurrent_forms_agree_and_state_carries(variant):
    rec, _ = make(variant)
    q, k, v = qkv()
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[1, :6] = False
    o_chunk, s_chunk = rec(q, k, v, valid, None, "chunk", "torch")
    o_rec, s_rec = rec(q, k, v, valid, None, "recurrent", "torch")
    assert_close(o_chunk[0], o_rec[0], 1e-11)
    assert_close(o_chunk[1, 6:], o_rec[1, 6:], 1e-11)
    for a, b in zip(s_chunk, s_rec):
        assert_close(a, b, 1e-11)
    o1, s1 = rec(q[:, :25], k[:, :25], v[:, :25], valid[:, :25], None, "chunk", "torch")
    o2, s2 = rec(q[:, 25:], k[:, 25:], v[:, 25:], valid[:, 25:], s1, "recurrent", "torch")
    assert_close(torch.cat([o1, o2], 1)[0], o_chunk[0], 1e-11)
    for a, b in zip(s2, s_chunk):
        assert_close(a, b, 1e-11)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_is_transparent(variant):
    # left padding must not change the outputs or the state of the real tokens
    rec, _ = make(variant)
    q, k, v = qkv(B=1, T=30)
    pad = 7
    junk = qkv(B=1, T=pad, seed=5)
    qp, kp, vp = (torch.cat([j, x], 1) for j, x in zip(junk, (q, k, v)))
    valid = torch.ones(1, 30 + pad, dtype=torch.bool)
    valid[:, :pad] = False
    o, s = rec(q, k, v, None, None, "chunk", "torch")
    op, sp = rec(qp, kp, vp, valid, None, "chunk", "torch")
    assert_close(op[:, pad:], o, 1e-11)
    for a, b in zip(sp, s):
        assert_close(a, b, 1e-11)


def test_default_normalizers():
    assert make("gla")[1].gate_normalizer == 16.0
    assert make("gsa")[1].gate_normalizer == 16.0
    assert make("hgrn2")[1].gate_normalizer == 1.0
    assert make("hgrn2", gate_normalizer=4.0)[1].gate_normalizer == 4.0


def test_gate_formulas():
    _, k, _ = qkv()
    kf = k.float()
    mean = kf.mean(-1)
    assert_close(make("gla")[0].inputs(*qkv())[3], F.logsigmoid(kf) / 16, 1e-6)
    assert_close(make("rwkv6")[0].inputs(*qkv())[3], -torch.exp(kf) / 16, 1e-6)
    assert_close(make("mamba2")[0].inputs(*qkv())[3], -F.softplus(mean) / 16, 1e-6)
    assert_close(make("gated_retention")[0].inputs(*qkv())[3], F.logsigmoid(mean) / 16, 1e-6)
    assert_close(make("mlstm")[0].inputs(*qkv())[3], F.logsigmoid(mean) / 16, 1e-6)
    q_, key, v_, g = make("hgrn2")[0].inputs(*qkv())
    assert_close(g, F.logsigmoid(kf), 1e-6)
    assert_close(key, 1 - torch.sigmoid(kf), 1e-6)
    _, _, _, g = make("hgrn2", hgrn2_lower_bound=0.25)[0].inputs(*qkv())
    assert_close(g, torch.log(0.25 + 0.75 * torch.sigmoid(kf)), 1e-6)


def test_gate_pooling_stays_within_heads():
    rec, _ = make("gla", gate_pool_size=4)
    _, k, _ = qkv()
    g = rec.inputs(*qkv())[3]  # [B,T,H,16]
    expected = F.logsigmoid(k.float().reshape(2, 40, 2, 4, 4).mean(-1)).repeat_interleave(4, -1) / 16
    assert_close(g, expected, 1e-6)


def test_feature_maps():
    q, k, v = qkv()
    for name, fn in {"softmax": lambda x: x.softmax(-1), "relu": torch.relu,
                     "elu_plus_one": lambda x: F.elu(x) + 1, "identity": lambda x: x}.items():
        qf, kf, _, _ = make("gla", feature_map=name)[0].inputs(q, k, v)
        assert_close(qf, fn(q), 1e-12)
        assert_close(kf, fn(k), 1e-12)


def test_mlstm_normaliser_formula():
    rec, _ = make("mlstm")
    q, k, v = qkv(B=1, T=12, HQ=2, H=2, D=4)
    o, _ = rec(q, k, v, None, None, "chunk", "torch")
    qf, kf = q.softmax(-1), k.softmax(-1)
    alpha = torch.sigmoid(k.mean(-1)) ** (1 / 16)
    S = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    n = torch.zeros(1, 2, 4, dtype=torch.float64)
    for t in range(12):
        S = alpha[:, t, :, None, None] * S + kf[:, t, :, :, None] * v[:, t, :, None, :]
        n = alpha[:, t, :, None] * n + kf[:, t]
        num = torch.einsum("bhk,bhkv->bhv", qf[:, t], S)
        den = torch.einsum("bhk,bhk->bh", qf[:, t], n).abs().clamp_min(1.0)
        assert_close(o[:, t], num / den[..., None], 1e-10, msg=f"t={t}")


def test_gsa_formula():
    rec, _ = make("gsa", gsa_num_slots=8)
    q, k, v = qkv(B=1, T=10, HQ=2, H=1, D=16)
    o, _ = rec(q, k, v, None, None, "chunk", "torch")
    alpha = torch.sigmoid(k.reshape(1, 10, 1, 8, 2).mean(-1)) ** (1 / 16)  # [1,T,1,M]
    s = 1 - alpha
    Kt = torch.zeros(1, 1, 16, 8, dtype=torch.float64)
    Vt = torch.zeros(1, 1, 8, 16, dtype=torch.float64)
    for t in range(10):
        Kt = Kt * alpha[:, t, :, None, :] + k[:, t, :, :, None] * s[:, t, :, None, :]
        Vt = alpha[:, t, :, :, None] * Vt + s[:, t, :, :, None] * v[:, t, :, None, :]
        for h in range(2):  # both query heads read KV head 0
            scores = torch.einsum("bk,bkm->bm", q[:, t, h], Kt[:, 0]).softmax(-1)
            assert_close(o[:, t, h], torch.einsum("bm,bmv->bv", scores, Vt[:, 0]), 1e-10)


@pytest.mark.parametrize("variant", ["gla", "hgrn2", "mamba2", "rwkv6"])
def test_sum_normaliser_formula_and_forms(variant):
    # linear_normalizer="sum": o_t = φ(q_t)S_t / φ(q_t)·z_t with z_t = Σ decayed φ(k) (the same gates as S)
    rec, _ = make(variant, linear_normalizer="sum")
    plain, _ = make(variant)
    q, k, v = qkv(B=1, T=14, HQ=2, H=1, D=4)
    o, _ = rec(q, k, v, None, None, "chunk", "torch")
    qf, kf, _, g = plain.inputs(q, k, v)
    decay = g.exp() if g.dim() == 4 else g.exp()[..., None].expand_as(kf)
    S = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    z = torch.zeros(1, 1, 4, dtype=torch.float64)
    for t in range(14):
        S = decay[:, t, :, :, None] * S + kf[:, t, :, :, None] * v[:, t, :, None, :]
        z = decay[:, t] * z + kf[:, t]
        for j in range(2):
            num = torch.einsum("bk,bkv->bv", qf[:, t, j], S[:, 0])
            den = torch.einsum("bk,bk->b", qf[:, t, j], z[:, 0])
            assert_close(o[:, t, j], num / den[:, None], 1e-10, msg=f"t={t}")
    o_rec, s_rec = rec(q, k, v, None, None, "recurrent", "torch")
    assert_close(o_rec, o, 1e-11)
    assert s_rec[0].shape[-1] == 5  # the normaliser rides along as one value column


def test_sum_normaliser_is_refused_where_it_does_not_apply():
    for variant in ("gsa", "mlstm"):
        with pytest.raises(ValueError, match="linear_normalizer"):
            make(variant, linear_normalizer="sum")
    with pytest.raises(ValueError, match="linear_normalizer"):
        make("gla", linear_normalizer="sum", feature_map="identity")


def test_option_tables_agree():
    # each option's names are written once (the config's Literal types); the implementations are keyed by them
    from liger.models.configuration_liger import FEATURE_MAPS, VARIANTS
    from liger.models.variants import FEATURE_MAPS as FEATURE_MAP_FUNCTIONS

    assert set(VARIANT_CLASSES) == set(VARIANTS)
    assert set(FEATURE_MAP_FUNCTIONS) == set(FEATURE_MAPS)
