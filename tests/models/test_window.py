import pytest
import torch
import torch.nn.functional as F

from liger.models.window import (
    Sinks,
    first_real_tokens,
    flex_window_attention,
    naive_window_attention,
    window_attention,
    window_block_mask,
    window_decode_attention,
)
from tests.conftest import assert_close


def inputs(B, Tq, Tk, H, G, D, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Tq, H * G, D, dtype=dtype, generator=g)
    k = torch.randn(B, Tk, H, D, dtype=dtype, generator=g)
    v = torch.randn(B, Tk, H, D, dtype=dtype, generator=g)
    return q, k, v


def sinks_for(B, S, H, D, index, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return Sinks(torch.randn(B, S, H, D, dtype=dtype, generator=g), torch.randn(B, S, H, D, dtype=dtype, generator=g),
                 torch.as_tensor(index), torch.ones(B, S, dtype=torch.bool))


@pytest.mark.parametrize("T,W", [(10, 16), (16, 16), (17, 16), (130, 16), (64, 64), (63, 64), (65, 64)])
@pytest.mark.parametrize("block", [8, 64])
def test_banded_matches_dense(T, W, block):
    q, k, v = inputs(2, T, T, 2, 3, 8)
    valid = torch.ones(2, T, dtype=torch.bool)
    valid[1, :5] = False  # left padding
    ref = naive_window_attention(q, k, v, W, 0.25, valid)
    out = window_attention(q, k, v, W, 0.25, valid, block_size=block)
    assert_close(out[1, 5:], ref[1, 5:], 1e-13)
    assert_close(out[0], ref[0], 1e-13)


@pytest.mark.parametrize("Tq,Tk", [(1, 16), (5, 20), (40, 47)])
def test_banded_matches_dense_with_cached_prefix_and_sinks(Tq, Tk):
    q, k, v = inputs(2, Tq, Tk, 2, 2, 8)
    valid = torch.ones(2, Tk, dtype=torch.bool)
    valid[0, :3] = False
    sinks = sinks_for(2, 3, 2, 8, [[-10, -9, -8], [0, 1, 2]])
    ref = naive_window_attention(q, k, v, 8, 0.3, valid, sinks)
    out = window_attention(q, k, v, 8, 0.3, valid, sinks, block_size=4)
    assert_close(out, ref, 1e-13)


def test_long_window_equals_causal_attention():
    q, k, v = inputs(2, 50, 50, 2, 2, 8)
    out = window_attention(q, k, v, 64, 8**-0.5)
    kr, vr = (x.repeat_interleave(2, dim=2).transpose(1, 2) for x in (k, v))
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), kr, vr, is_causal=True).transpose(1, 2)
    assert_close(out, ref, 1e-13)


def test_window_attends_to_exactly_w_keys():
    # one-hot values reveal which keys each query reads
    T, W = 12, 4
    q = torch.zeros(1, T, 1, T, dtype=torch.float64)
    k = torch.zeros(1, T, 1, T, dtype=torch.float64)
    v = torch.eye(T, dtype=torch.float64)[None, :, None, :]
    out = window_attention(q, k, v, W, 1.0)[0, :, 0]
    for t in range(T):
        expected = torch.zeros(T, dtype=torch.float64)
        expected[max(0, t - W + 1) : t + 1] = 1 / min(W, t + 1)
        assert_close(out[t], expected, 1e-14, msg=f"query {t}")


def test_sinks_count_once_and_respect_causality():
    T, W = 10, 3
    q = torch.zeros(1, T, 1, T, dtype=torch.float64)
    k = torch.zeros(1, T, 1, T, dtype=torch.float64)
    v = torch.eye(T, dtype=torch.float64)[None, :, None, :]
    sinks = Sinks(k[:, :2], v[:, :2], torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.bool))
    out = window_attention(q, k, v, W, 1.0, sinks=sinks)[0, :, 0]
    for t in range(T):
        keys = set(range(max(0, t - W + 1), t + 1)) | {s for s in (0, 1) if s <= t}
        expected = torch.zeros(T, dtype=torch.float64)
        expected[sorted(keys)] = 1 / len(keys)
        assert_close(out[t], expected, 1e-14, msg=f"query {t}")


def test_fully_padded_query_gives_zeros_not_nan():
    q, k, v = inputs(1, 6, 6, 1, 1, 4)
    valid = torch.tensor([[False, False, True, True, True, True]])
    out = window_attention(q, k, v, 4, 1.0, valid)
    assert torch.isfinite(out).all()
    assert (out[0, :2] == 0).all()


def test_banded_gradients_match_dense():
    q, k, v = inputs(1, 30, 30, 2, 2, 4)
    grads = []
    for fn in (naive_window_attention, window_attention):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out = fn(*leaves, 8, 0.5) if fn is naive_window_attention else fn(*leaves, 8, 0.5, block_size=8)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([x.grad for x in leaves])
    for a, b in zip(*grads):
        assert_close(b, a, 1e-12)


def _padded_with_sinks(B, Tq, Tk, S, dtype=torch.float64, padded=True):
    q, k, v = inputs(B, Tq, Tk, 2, 3, 8, dtype=dtype)
    valid = torch.ones(B, Tk, dtype=torch.bool)
    valid[-1, :5] = padded is False
    sinks = None
    if S:
        g = torch.Generator().manual_seed(2)
        index = torch.stack([torch.arange(S) - 7, torch.arange(S) + 5])[:B]  # before the keys / inside them
        sk, sv = (torch.randn(B, S, 2, 8, dtype=dtype, generator=g) for _ in range(2))
        sinks = Sinks(sk, sv, index, torch.tensor([[True] * S, [True] * (S - 1) + [False]])[:B])
    return q, k, v, valid, sinks


@pytest.mark.parametrize("Tq,Tk,W,S,block", [(40, 40, 8, 0, 16), (40, 40, 8, 3, 16), (5, 20, 8, 3, 16),
                                               (70, 70, 64, 4, 16), (33, 33, 100, 2, 16), (129, 192, 64, 4, 32)])
@pytest.mark.parametrize("padded", [True, False])
def test_flex_matches_dense_on_real_rows(Tq, Tk, W, S, block, padded):
    q, k, v, valid, sinks = _padded_with_sinks(2, Tq, Tk, S, dtype=torch.float32, padded=padded)
    ref = naive_window_attention(q, k, v, W, 0.3, valid, sinks)
    out = flex_window_attention(q, k, v, W, 0.3, valid if padded else None, sinks, block_size=block)
    real = valid[:, Tk - Tq :]
    assert_close(out[real], ref[real], 1e-5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("Tq,Tk,W,S,block", [(40, 40, 8, 0, 16), (40, 40, 8, 3, 16), (5, 20, 8, 3, 16),
                                               (100, 163, 64, 4, 16), (300, 300, 20, 0, 32), (300, 300, 20, 40, 32)])
def test_flex_block_lists_cover_every_visible_key(Tq, Tk, W, S, block):
    # eager FlexAttention applies mask_mod densely: check separately that the block lists (what the fused kernel
    # visits) contain every key the mask lets through
    from torch.nn.attention.flex_attention import create_mask

    B = 2
    valid = torch.ones(B, Tk, dtype=torch.bool)
    valid[-1, :5] = False
    sinks = None
    if S:
        sinks = Sinks(torch.zeros(B, S, 1, 4), torch.zeros(B, S, 1, 4), (torch.arange(S) - 3).expand(B, S),
                      torch.ones(B, S, dtype=torch.bool))
    mask = window_block_mask(B, Tq, Tk, W, valid, sinks, block, "cpu")
    tokens = create_mask(mask.mask_mod, B, 1, Tq, S + Tk, device="cpu")
    blocks = mask.to_dense().repeat_interleave(block, 2).repeat_interleave(block, 3)[..., :Tq, : S + Tk].bool()
    assert not (tokens & ~blocks).any()
    density = blocks.float().mean().item()
    assert density < 1.0 or Tq <= 2 * block, f"block mask is dense ({density:.2f})"


@pytest.mark.parametrize("L,S", [(0, 0), (3, 0), (7, 2)])
def test_decode_step_over_a_ring_matches_dense(L, S):
    # the ring holds the L tokens before the new one in a rotated slot order, one of them padding
    B, H, G, D, W = 2, 2, 3, 8, L + 1
    t = 20  # absolute position of the new token
    q, k, v = inputs(B, 1, L + 1, H, G, D, seed=4)
    valid = torch.ones(B, L + 1, dtype=torch.bool)
    if L:
        valid[1, 0] = False
    sinks = None
    if S:
        g = torch.Generator().manual_seed(5)
        sinks = Sinks(torch.randn(B, S, H, D, dtype=torch.float64, generator=g),
                      torch.randn(B, S, H, D, dtype=torch.float64, generator=g),
                      torch.tensor([[0, t - 2], [3, 4]]), torch.tensor([[True, True], [True, False]]))
    ref_sinks = None if sinks is None else Sinks(sinks.k, sinks.v, sinks.index - (t - L), sinks.valid)
    ref = naive_window_attention(q, k, v, W, 0.3, valid, ref_sinks)
    roll = 2 if L else 0
    ring_k, ring_v, ring_valid = (x[:, :L].roll(roll, 1) for x in (k, v, valid))
    out = window_decode_attention(q, k[:, L:], v[:, L:], valid[:, L], ring_k, ring_v, ring_valid, 0.3, sinks,
                                  torch.tensor(t - W + 1))
    assert_close(out, ref, 1e-13)


def test_first_real_tokens_skips_padding():
    k = torch.arange(12.0).view(2, 6, 1, 1)
    valid = torch.tensor([[True] * 6, [False, False, False, True, True, True]])
    sinks = first_real_tokens(k, k, valid, 4)
    assert sinks.index.tolist() == [[0, 1, 2, 3], [3, 4, 5, 0]]
    assert sinks.valid.tolist() == [[True] * 4, [True, True, True, False]]
    assert sinks.k[1, :3, 0, 0].tolist() == [9.0, 10.0, 11.0]


@pytest.mark.parametrize("Tq,Tk,W,S", [(130, 130, 16, 0), (64, 64, 64, 2), (5, 20, 8, 3), (1, 63, 64, 0),
                                       (40, 47, 7, 2)])
def test_sdpa_blocks_match_dense(Tq, Tk, W, S):
    from liger.models.window import sdpa_window_attention

    q, k, v = inputs(2, Tq, Tk, 2, 3, 8)
    valid = torch.ones(2, Tk, dtype=torch.bool)
    valid[1, :4] = False
    sinks = sinks_for(2, S, 2, 8, [list(range(-3, -3 + S)), list(range(4, 4 + S))]) if S else None
    ref = naive_window_attention(q, k, v, W, 0.3, valid, sinks)
    out = sdpa_window_attention(q, k, v, W, 0.3, valid, sinks, block_size=16)
    real_q = valid[:, Tk - Tq:]
    assert_close(out[real_q], ref[real_q], 1e-12)
    assert torch.isfinite(out).all()


def test_sdpa_blocks_gradients_match_dense():
    from liger.models.window import sdpa_window_attention

    q, k, v = inputs(1, 70, 70, 2, 2, 8)
    grads = []
    for fn in (naive_window_attention, sdpa_window_attention):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        out = fn(*leaves, 16, 0.5)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([x.grad for x in leaves])
    for a, b in zip(*grads):
        assert_close(b, a, 1e-12)


@pytest.mark.parametrize("Tq,prefix,bq", [(70, 0, 16), (33, 5, 33), (64, 7, 64)])
def test_extra_keys_in_every_window_op_match_the_dense_reference(Tq, prefix, bq):
    # the global cache's keys: per block of queries, with a per-KV-head visibility
    from liger.models.global_cache import ExtraKeys
    from liger.models.window import naive_window_attention, sdpa_window_attention, window_attention

    g = torch.Generator().manual_seed(3)
    B, H, G, D, W, E = 2, 2, 3, 8, 6, 5
    Tk = Tq + prefix
    nb = -(-Tq // bq)
    q = torch.randn(B, Tq, H * G, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, Tk, H, D, generator=g, dtype=torch.float64) for _ in range(2))
    ek, ev = (torch.randn(B, nb, E, H, D, generator=g, dtype=torch.float64) for _ in range(2))
    visible = torch.rand(B, nb, H, bq, E, generator=g) < 0.5
    valid = torch.ones(B, Tk, dtype=torch.bool)
    valid[1, :9] = False
    extra = ExtraKeys(ek, ev, visible, bq)
    ref = naive_window_attention(q, k, v, W, 0.3, valid, extra=extra)
    # the same by hand for one query: its window keys and the visible extra keys of its block
    b, t, h = 1, Tq - 2, 1
    p = t + prefix
    keys = [(k[b, j, h], v[b, j, h]) for j in range(max(0, p - W + 1), p + 1) if valid[b, j]]
    keys += [(ek[b, t // bq, e, h], ev[b, t // bq, e, h]) for e in range(E) if visible[b, t // bq, h, t % bq, e]]
    for j in range(h * G, (h + 1) * G):
        scores = torch.stack([q[b, t, j] @ kk for kk, _ in keys]) * 0.3
        expected = scores.softmax(0) @ torch.stack([vv for _, vv in keys])
        assert_close(ref[b, t, j], expected, 1e-12)
    real = valid[:, prefix:]
    for op in (window_attention, sdpa_window_attention):
        out = op(q, k, v, W, 0.3, valid, None, bq, extra)
        assert_close(out[real], ref[real], 1e-10, msg=op.__name__)
