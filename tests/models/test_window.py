import pytest
import torch
import torch.nn.functional as F

from liger.models.window import Sinks, naive_window_attention, window_attention
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
