"""The memory mechanisms on the CUDA path: the sum-normalised readout and the self-recall reads on fla's kernels,
the window op with the global cache's keys on the SDPA blocks, and whole models with a global cache (fast path
against the PyTorch reference, CUDA-graph decoding against eager decoding, flat decode memory)."""

import pytest
import torch

import liger
from liger.models import compiling
from liger.models.global_cache import ExtraKeys
from liger.models.variants import get_recurrence
from liger.models.window import Sinks, naive_window_attention, sliding_window_attention
from tests.conftest import assert_close
from tests.gpu.conftest import gpu_teacher, left_padded, positions, prefill_then_decode
from tests.gpu.test_model_gpu import TOL, assert_no_fallback, options


@pytest.mark.parametrize("variant,dtype", [("gla", torch.bfloat16), ("gla", torch.float32), ("hgrn2", torch.bfloat16),
                                           ("mamba2", torch.bfloat16)])
def test_sum_normaliser_and_recall_on_fla_match_torch(variant, dtype):
    torch.manual_seed(0)
    B, T, H, G, D = 2, 100, 2, 3, 64
    rec = get_recurrence(options(variant, linear_normalizer="sum", global_cache_size=8))
    q, k, v = (torch.randn(B, T, h, D, device="cuda").to(dtype) for h in (H * G, H, H))
    valid = torch.ones(B, T, dtype=torch.bool, device="cuda")
    valid[1, :17] = False
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    o, s = rec(*leaves, valid, None, "chunk", "fla")
    ref_leaves = [x.double().requires_grad_() for x in (q, k, v)]
    o_ref, s_ref = rec(*ref_leaves, valid, None, "chunk", "torch")
    assert_close(o[valid], o_ref[valid], TOL[dtype], msg="output")
    assert_close(s[0], s_ref[0], TOL[dtype], msg="state")
    w = torch.randn_like(o_ref) * valid[..., None, None]
    (o.float() * w.float()).sum().backward()
    (o_ref * w).sum().backward()
    for name, a, b in zip("qkv", leaves, ref_leaves):
        assert_close(a.grad, b.grad, TOL[dtype], msg=f"d{name}")
    with torch.no_grad():
        r, _ = rec.recall(k, k, v, valid, None, "chunk", "fla")
        r_ref, _ = rec.recall(k.double(), k.double(), v.double(), valid, None, "chunk", "torch")
    assert_close(r[valid], r_ref[valid], TOL[dtype], msg="recall")
    assert_no_fallback()


@pytest.mark.parametrize("backend", ["triton", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_window_with_sinks_and_global_keys_matches_dense_reference(dtype, backend):
    torch.manual_seed(4)
    B, T, H, G, D, W, E, bq = 2, 200, 3, 3, 64, 16, 24, 64
    nb = -(-T // bq)
    q = torch.randn(B, T, H * G, D, device="cuda").to(dtype)
    k, v = (torch.randn(B, T, H, D, device="cuda").to(dtype) for _ in range(2))
    ek, ev = (torch.randn(B, nb, E, H, D, device="cuda").to(dtype) for _ in range(2))
    visible = torch.rand(B, nb, H, bq, E, device="cuda") < 0.5
    valid = torch.ones(B, T, dtype=torch.bool, device="cuda")
    valid[1, :30] = False
    sk, sv = (torch.randn(B, 4, H, D, device="cuda").to(dtype) for _ in range(2))
    index = torch.tensor([[0, 1, 2, 3], [30, 31, 32, 33]], device="cuda")
    leaves = [x.clone().requires_grad_() for x in (q, k, v, ek, ev, sk, sv)]
    ref_leaves = [x.double().requires_grad_() for x in (q, k, v, ek, ev, sk, sv)]
    sink_valid = torch.ones(B, 4, dtype=torch.bool, device="cuda")
    out = sliding_window_attention(*leaves[:3], W, 0.125, valid, Sinks(leaves[5], leaves[6], index, sink_valid),
                                   backend=backend, extra=ExtraKeys(leaves[3], leaves[4], visible, bq))
    ref = naive_window_attention(*ref_leaves[:3], W, 0.125, valid,
                                 Sinks(ref_leaves[5], ref_leaves[6], index, sink_valid),
                                 extra=ExtraKeys(ref_leaves[3], ref_leaves[4], visible, bq))
    assert_close(out[valid], ref[valid], TOL[dtype], msg="output")
    w = torch.randn_like(ref) * valid[..., None, None]
    (out.double() * w).sum().backward()
    (ref * w).sum().backward()
    for name, a, b in zip(("q", "k", "v", "global k", "global v", "sink k", "sink v"), leaves, ref_leaves):
        assert_close(a.grad, b.grad, TOL[dtype], msg=f"d{name}")


@pytest.mark.parametrize("options", [dict(global_cache_size=8, num_sink_tokens=2),
                                     dict(global_cache_size=8, num_sink_tokens=2, window_backend="triton"),
                                     dict(global_cache_size=8, linear_normalizer="sum"),
                                     dict(global_cache_size=4, linear_weight=0.0, window_weight=1.0),
                                     dict(global_cache_size=8, global_cache_pool=3, num_sink_tokens=2)])
def test_model_with_global_cache_on_gpu_matches_cpu_reference_in_float32(options):
    teacher = gpu_teacher("qwen2")
    gpu = liger.convert(teacher, window_size=16, **options)
    cpu = liger.convert(teacher.cpu().double(), window_size=16, linear_backend="torch", **options)
    x, mask = left_padded(T=150)
    after_padding = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], 1) == 0
    labels = x.masked_fill((mask == 0) | after_padding, -100)
    out = gpu(x, attention_mask=mask, position_ids=positions(mask), labels=labels)
    ref = cpu(x.cpu(), attention_mask=mask.cpu(), position_ids=positions(mask).cpu(), labels=labels.cpu())
    real = mask.bool()
    assert_close(out.logits[real].cpu(), ref.logits[real.cpu()], 1e-4, msg="logits")
    out.loss.backward()
    ref.loss.backward()
    for (name, p), q in zip(gpu.named_parameters(), cpu.parameters()):
        if p.grad is not None and "embed" not in name:
            assert_close(p.grad.cpu(), q.grad, 1e-4, msg=name)
    assert_no_fallback()


def test_bfloat16_model_with_memory_runs_finite_and_close_to_float32():
    # bf16 scores may order near-equal tokens differently from float32, so the check is on the whole loss
    teacher = gpu_teacher("llama", dtype=torch.float32)
    options = dict(window_size=32, global_cache_size=16, linear_normalizer="sum", num_sink_tokens=4)
    a = liger.convert(teacher, **options)
    b = liger.convert(teacher.to(torch.bfloat16), **options)
    x, mask = left_padded(T=300)
    with torch.no_grad():
        la = a(x, attention_mask=mask, labels=x).loss
        lb = b(x, attention_mask=mask, labels=x).loss
    assert torch.isfinite(lb) and abs(la.item() - lb.item()) < 0.05 * la.item()


@pytest.mark.parametrize("compile,pool", [(False, 0), (True, 0), (False, 2), (True, 2)])
def test_cuda_graph_decoding_with_global_cache_gives_the_eager_logits(compile, pool):
    model = liger.convert(gpu_teacher("llama"), linear_backend="torch", window_size=5, num_sink_tokens=2,
                          global_cache_size=4, global_cache_pool=pool, linear_normalizer="sum")
    x, mask = left_padded(T=50)
    mask[2, 35] = 0
    pos = positions(mask)
    out = {}
    for mode in ("eager", "cuda_graph"):
        model.set_decoding(mode, compile=compile)
        out[mode] = prefill_then_decode(model, x, mask, pos)
    real = mask[:, 12:].bool()
    assert_close(out["cuda_graph"][0][real], out["eager"][0][real], 1e-4)
    if compile:
        assert not compiling.fallbacks().get("decode_step"), "the decode step fell back to eager"


def test_graph_decoding_memory_with_global_cache_is_constant():
    model = liger.convert(gpu_teacher("llama"), window_size=8, global_cache_size=16)
    x, mask = left_padded(T=64)
    token = x[:, :1]
    with torch.no_grad():
        cache = model(x, attention_mask=mask, use_cache=True).past_key_values
        model(token, past_key_values=cache)  # captures
        torch.cuda.synchronize()
        before, size = torch.cuda.memory_allocated(), cache.nbytes()
        for _ in range(300):
            model(token, past_key_values=cache)
        torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before and cache.nbytes() == size
