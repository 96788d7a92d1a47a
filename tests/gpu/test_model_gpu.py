"""The CUDA path (fla kernels through liger's adapters, the Triton window kernels, SDPA blocks, compiled
FlexAttention, compiled helpers) against the
pure-PyTorch reference ops, at the variant, window and model level; relative RMS error below 1e-4 in float32
and 1e-2 in bfloat16, on real (non-padding) positions, outputs, states and gradients."""

from types import SimpleNamespace

import pytest
import torch

import liger
from liger.models import compiling
from liger.models.variants import get_recurrence
from liger.models.window import Sinks, naive_window_attention, sliding_window_attention
from tests.conftest import VARIANTS, assert_close
from tests.gpu.conftest import gpu_teacher, left_padded, positions

TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


def options(variant, **overrides):
    values = dict(variant=variant, feature_map="softmax", linear_scale=1.0, gate_pool_size=None,
                  gate_normalizer=1.0 if variant == "hgrn2" else 16.0, hgrn2_lower_bound=0.0, gsa_num_slots=None,
                  linear_normalizer="none", global_cache_size=0, delta_write_strength=None)
    values.update(overrides)
    return SimpleNamespace(**values)


def assert_no_fallback():
    failed = [name for name, f in compiling.fallbacks().items() if f]
    assert not failed, f"compiled paths fell back to eager: {failed}"


@pytest.mark.parametrize("variant,dtype", [(v, torch.bfloat16) for v in VARIANTS]
                         + [("gla", torch.float32), ("gated_deltanet", torch.float32)])
def test_variant_on_fla_matches_torch_reference(variant, dtype):
    from tests.gpu.test_kernels import DELTA_CHUNK_TOL

    tol = DELTA_CHUNK_TOL[dtype] if variant == "gated_deltanet" else TOL[dtype]  # fla's tf32 solve (test_kernels)
    torch.manual_seed(0)
    B, T, H, G, D = 2, 100, 2, 3, 64
    rec = get_recurrence(options(variant))
    # inputs rounded to the tested dtype once; the reference sees the same numbers in float64
    q, k, v = (torch.randn(B, T, h, D, device="cuda").to(dtype) for h in (H * G, H, H))
    valid = torch.ones(B, T, dtype=torch.bool, device="cuda")
    valid[1, :17] = False
    _, prefix_state = rec(q.double()[:, :20], k.double()[:, :20], v.double()[:, :20], None, None, "chunk", "torch")
    state = tuple(s.float() for s in prefix_state)

    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    o, s = rec(*leaves, valid, state, "chunk", "fla")
    ref_leaves = [x.double().requires_grad_() for x in (q, k, v)]
    o_ref, s_ref = rec(*ref_leaves, valid, tuple(x.double() for x in state), "chunk", "torch")
    real = valid
    assert_close(o[real], o_ref[real], tol, msg="output")
    for a, b in zip(s, s_ref):
        assert a.dtype == torch.float32 and a.shape == b.shape
        assert_close(a, b, tol, msg="final state")
    w = torch.randn_like(o_ref) * real[..., None, None]
    (o.float() * w.float()).sum().backward()
    (o_ref * w).sum().backward()
    for name, a, b in zip("qkv", leaves, ref_leaves):
        assert_close(a.grad, b.grad, tol, msg=f"d{name}")

    # inference prefill (no gradients): fla's chunk kernels, also for a variant that trains through another path
    # where fla refuses a backward (gated_deltanet, see fla_backend.gated_delta_rule_backward_refused)
    with torch.no_grad():
        o_inf, s_inf = rec(q, k, v, valid, state, "chunk", "fla")
    assert_close(o_inf[real], o_ref[real], tol, msg="inference output")
    for a, b in zip(s_inf, s_ref):
        assert_close(a, b, tol, msg="inference final state")
    assert_no_fallback()

    # one decode token from the final state (fla's recurrent kernels)
    with torch.no_grad():
        o1, s1 = rec(q[:, :1], k[:, :1], v[:, :1], None, s, "recurrent", "fla")
        o1_ref, s1_ref = rec(q[:, :1].double(), k[:, :1].double(), v[:, :1].double(), None,
                             tuple(x.double() for x in s), "recurrent", "torch")
    assert_close(o1, o1_ref, tol, msg="decode output")
    for a, b in zip(s1, s1_ref):
        assert_close(a, b, tol, msg="decode state")


@pytest.mark.parametrize("dtype,sinks,prefix,grad", [(torch.bfloat16, 4, 0, True), (torch.float32, 0, 0, True),
                                                     (torch.float32, 4, 63, False)])
def test_flex_window_matches_dense_reference(dtype, sinks, prefix, grad):
    # (compiling FlexAttention takes a while per configuration: the training case in both dtypes, and the
    # cached-prefix case of prefill with a cache)
    torch.manual_seed(1)
    B, Tq, H, G, D, W = 2, 300, 3, 3, 64, 64
    Tk = Tq + prefix
    q = torch.randn(B, Tq, H * G, D, device="cuda").to(dtype)
    k, v = (torch.randn(B, Tk, H, D, device="cuda").to(dtype) for _ in range(2))
    valid = torch.ones(B, Tk, dtype=torch.bool, device="cuda")
    valid[1, : prefix + 30] = False
    sk = None
    if sinks:
        sink_k, sink_v = (torch.randn(B, sinks, H, D, device="cuda").to(dtype) for _ in range(2))
        sk = Sinks(sink_k, sink_v, torch.stack([torch.arange(sinks) - 5, torch.arange(sinks) + prefix + 30]).cuda(),
                   torch.ones(B, sinks, dtype=torch.bool, device="cuda"))
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    out = sliding_window_attention(*leaves, W, 0.125, valid, sk, backend="flex")
    ref_leaves = [x.double().requires_grad_() for x in (q, k, v)]
    ref_sinks = None if sk is None else Sinks(sk.k.double(), sk.v.double(), sk.index, sk.valid)
    ref = naive_window_attention(*ref_leaves, W, 0.125, valid, ref_sinks)
    assert_no_fallback()
    real = valid[:, prefix:]
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert_close(out[real], ref[real], TOL[dtype])
    if not grad:
        return
    w = torch.randn_like(ref) * real[..., None, None]
    (out.float() * w.float()).sum().backward()
    (ref * w).sum().backward()
    for name, a, b in zip("qkv", leaves, ref_leaves):
        assert_close(a.grad, b.grad, TOL[dtype], msg=f"d{name}")


@pytest.mark.parametrize("sinks", [0, 2, 4])
def test_sdpa_window_gradients_with_sinks_and_padding_match_dense_reference(sinks):
    """The CUDA default window op (SDPA blocks), float32, left padding, sinks read from each sequence's start:
    outputs and q/k/v gradients (through the sinks too) against the dense float64 reference."""
    from liger.models.window import first_real_tokens

    torch.manual_seed(2)
    B, T, H, G, D, W = 3, 150, 3, 3, 64, 16
    q = torch.randn(B, T, H * G, D, device="cuda")
    k, v = (torch.randn(B, T, H, D, device="cuda") for _ in range(2))
    _, mask = left_padded(B=B, T=T)
    valid = mask.bool()
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    ref_leaves = [x.double().requires_grad_() for x in (q, k, v)]
    out = sliding_window_attention(*leaves, W, 0.125, valid, first_real_tokens(*leaves[1:], valid, sinks) if sinks
                                   else None, backend="sdpa")
    ref = naive_window_attention(*ref_leaves, W, 0.125, valid, first_real_tokens(*ref_leaves[1:], valid, sinks)
                                 if sinks else None)
    assert_close(out[valid], ref[valid], 1e-4, msg="output")
    w = torch.randn_like(ref) * valid[..., None, None]
    (out * w.float()).sum().backward()
    (ref * w).sum().backward()
    for name, a, b in zip("qkv", leaves, ref_leaves):
        assert_close(a.grad, b.grad, 1e-4, msg=f"d{name}")


@pytest.mark.parametrize("dtype,prefix,D,W,G", [(torch.bfloat16, 0, 64, 64, 3), (torch.float32, 0, 64, 64, 3),
                                                 (torch.float32, 63, 64, 64, 3), (torch.float32, 0, 128, 16, 1),
                                                 (torch.bfloat16, 7, 96, 100, 4), (torch.float16, 0, 64, 64, 3)])
def test_triton_window_matches_dense_reference(dtype, prefix, D, W, G):
    """The CUDA default window op (Liger's Triton kernels): outputs and q/k/v gradients against the dense
    float64 reference, left padding, grouped heads, a cached prefix (Tk > Tq), head dims that are not powers
    of two, windows longer than a block."""
    torch.manual_seed(3)
    B, Tq, H = 3, 300, 2
    Tk = Tq + prefix
    q = torch.randn(B, Tq, H * G, D, device="cuda").to(dtype)
    k, v = (torch.randn(B, Tk, H, D, device="cuda").to(dtype) for _ in range(2))
    valid = torch.ones(B, Tk, dtype=torch.bool, device="cuda")
    valid[1, : prefix + 30] = False
    valid[2, prefix + 100] = False  # a padding token mid-sequence too
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    ref_leaves = [x.double().requires_grad_() for x in (q, k, v)]
    out = sliding_window_attention(*leaves, W, D**-0.5, valid, None, backend="triton")
    ref = naive_window_attention(*ref_leaves, W, D**-0.5, valid, None)
    real = valid[:, prefix:]
    assert out.dtype == dtype and out.shape == q.shape and torch.isfinite(out).all()
    assert_close(out[real], ref[real], TOL.get(dtype, 1e-2), msg="output")
    w = torch.randn_like(ref) * real[..., None, None]
    (out.double() * w).sum().backward()
    (ref * w).sum().backward()
    for name, a, b in zip("qkv", leaves, ref_leaves):
        assert_close(a.grad, b.grad, TOL.get(dtype, 1e-2), msg=f"d{name}")


@pytest.mark.parametrize("variant,sinks", [("gla", 2), ("gla", 0)])
def test_model_on_gpu_matches_cpu_reference_in_float32(variant, sinks):
    # sinks 2: the window runs on the SDPA blocks; 0: on the Triton kernels
    teacher = gpu_teacher("qwen2")
    gpu = liger.convert(teacher, variant=variant, window_size=16, num_sink_tokens=sinks)
    cpu = liger.convert(teacher.cpu(), variant=variant, window_size=16, num_sink_tokens=sinks, linear_backend="torch")
    x, mask = left_padded(T=150)
    # Score only predictions made from real positions: the label of a sequence's first real token is predicted
    # from a padding position, whose output is arbitrary (and differs between the two paths).
    after_padding = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], 1) == 0
    labels = x.masked_fill((mask == 0) | after_padding, -100)
    gpu_loss = gpu(x, attention_mask=mask, position_ids=positions(mask), labels=labels)
    cpu_loss = cpu(x.cpu(), attention_mask=mask.cpu(), position_ids=positions(mask).cpu(), labels=labels.cpu())
    real = mask.bool()
    assert_close(gpu_loss.logits[real].cpu(), cpu_loss.logits[real.cpu()], 1e-4, msg="logits")
    gpu_loss.loss.backward()
    cpu_loss.loss.backward()
    for (name, p), q in zip(gpu.named_parameters(), cpu.parameters()):
        if p.grad is not None and "embed" not in name:
            assert_close(p.grad.cpu(), q.grad, 1e-4, msg=name)
    assert_no_fallback()


@pytest.mark.parametrize("variant,sinks", [("gla", 4), ("hgrn2", 4), ("gsa", 4), ("mlstm", 4), ("gla", 0)])
def test_bfloat16_model_fast_path_matches_torch_path(variant, sinks):
    teacher = gpu_teacher("llama", dtype=torch.bfloat16)
    fast = liger.convert(teacher, variant=variant, window_size=64, num_sink_tokens=sinks)
    reference = liger.convert(teacher, variant=variant, window_size=64, num_sink_tokens=sinks, linear_backend="torch")
    x, mask = left_padded(T=200)
    with torch.no_grad():
        a = fast(x, attention_mask=mask, position_ids=positions(mask)).logits
        b = reference(x, attention_mask=mask, position_ids=positions(mask)).logits
    real = mask.bool()
    assert_close(a[real], b[real], 1e-2)
    assert_no_fallback()


@pytest.mark.parametrize("sinks", [2, 0])
def test_prefill_on_kernels_then_graph_decoding_equals_full_forward(sinks):
    model = liger.convert(gpu_teacher("llama"), window_size=8, num_sink_tokens=sinks)
    x, mask = left_padded(T=60)
    pos = positions(mask)
    with torch.no_grad():
        full = model(x, attention_mask=mask, position_ids=pos).logits
        out = model(x[:, :40], attention_mask=mask[:, :40], position_ids=pos[:, :40], use_cache=True)
        cache, logits = out.past_key_values, [out.logits]
        for t in range(40, 60):
            step = model(x[:, t : t + 1], attention_mask=mask[:, : t + 1], position_ids=pos[:, t : t + 1],
                         past_key_values=cache)
            logits.append(step.logits)
    assert type(cache.decoder).__name__ == "CUDAGraphDecoder"
    stepped = torch.cat(logits, 1)
    real = mask.bool()
    assert_close(stepped[real], full[real], 1e-4)
