"""LigerAttention against an independent, loop-by-loop transcription of the method (docs/method.md, "Liger
attention (one layer)" and "Variants")."""

import pytest
import torch
import torch.nn.functional as F

import liger
from liger.models.attention import LigerAttention
from tests.conftest import assert_close, tiny_teacher


def rope(x, cos, sin):
    # x [B, T, H, D], cos/sin [B, T, D]
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos[:, :, None] + rotated * sin[:, :, None]


def spec_liger_gla(attn: LigerAttention, x, cos, sin, window, lw, ww, normalizer=16.0):
    """The default Liger-GLA layer written out: heads expanded (repeat_kv), token loops, float64."""
    B, T, _ = x.shape
    H, Hk, D = attn.num_heads, attn.num_key_value_heads, attn.head_dim
    G = H // Hk
    x = x.double()
    lin = lambda m, y: F.linear(y, m.weight.double(), None if m.bias is None else m.bias.double())  # noqa: E731
    q = lin(attn.q_proj, x).view(B, T, H, D)
    k = lin(attn.k_proj, x).view(B, T, Hk, D).repeat_interleave(G, 2)
    v = lin(attn.v_proj, x).view(B, T, Hk, D).repeat_interleave(G, 2)
    if attn.q_norm is not None:
        def rms(m, y):
            return m.weight.double() * y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + m.variance_epsilon)
        q, k = rms(attn.q_norm, q), rms(attn.k_norm, k)
    # recurrent branch: softmax feature map on pre-RoPE q/k, gate logsigmoid(k)/16, scale 1, no normaliser
    qf, kf, logdecay = q.softmax(-1), k.softmax(-1), F.logsigmoid(k) / normalizer
    S = torch.zeros(B, H, D, D, dtype=torch.float64)
    o_rec = torch.zeros(B, T, H, D, dtype=torch.float64)
    for t in range(T):
        S = S * logdecay[:, t].exp()[..., None] + kf[:, t, :, :, None] * v[:, t, :, None, :]
        o_rec[:, t] = torch.einsum("bhk,bhkv->bhv", qf[:, t], S)
    # window branch: RoPE'd softmax attention over the last `window` keys, scale 1/sqrt(D)
    qr, kr = rope(q, cos.double(), sin.double()), rope(k, cos.double(), sin.double())
    o_win = torch.zeros_like(o_rec)
    for t in range(T):
        lo = max(0, t - window + 1)
        scores = torch.einsum("bhd,bjhd->bhj", qr[:, t], kr[:, lo : t + 1]) / D**0.5
        o_win[:, t] = torch.einsum("bhj,bjhd->bhd", scores.softmax(-1), v[:, lo : t + 1])
    o = (lw * o_rec + ww * o_win).reshape(B, T, H * D)
    return lin(attn.o_proj, o)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("window,lw,ww", [(64, 0.5, 0.5), (5, 0.5, 0.5), (7, 0.3, 0.9)])
def test_liger_gla_layer_matches_spec(family, window, lw, ww):
    teacher = tiny_teacher(family)
    model = liger.convert(teacher, window_size=window, linear_weight=lw, window_weight=ww)
    attn = model.model.layers[0].self_attn
    assert isinstance(attn, LigerAttention)
    torch.manual_seed(1)
    x = torch.randn(2, 23, teacher.config.hidden_size)
    pos = torch.arange(23)[None].expand(2, -1)
    cos, sin = model.model.rotary_emb(x, pos)
    out, _ = attn(x, (cos, sin))
    assert_close(out, spec_liger_gla(attn, x, cos, sin, window, lw, ww), 1e-5)


def test_gqa_shares_key_value_and_gate_across_the_group():
    # query heads of one group differ only through q: giving them identical q rows must give identical outputs
    teacher = tiny_teacher("llama")
    model = liger.convert(teacher)
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        w = attn.q_proj.weight.view(attn.num_heads, attn.head_dim, -1)
        w[1] = w[0]  # heads 0 and 1 form a group over KV head 0 (4 query heads, 2 KV heads)
        w[2] = w[0]  # head 2 reads KV head 1: it must differ
    torch.manual_seed(0)
    x = torch.randn(1, 9, teacher.config.hidden_size)
    cos, sin = model.model.rotary_emb(x, torch.arange(9)[None])
    captured = {}
    attn.o_proj.register_forward_hook(lambda m, i, o: captured.setdefault("in", i[0]))
    attn(x, (cos, sin))
    heads = captured["in"].view(1, 9, attn.num_heads, attn.head_dim)
    assert_close(heads[:, :, 1], heads[:, :, 0], 1e-6)
    assert (heads[:, :, 2] - heads[:, :, 0]).abs().max() > 1e-3
