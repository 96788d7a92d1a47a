"""GPU tier: the decoder-layer kernels around the fused decode step (``models/triton_layer.py``) against the
modules they replace, at SmolLM2's sizes: the residual add + RMSNorm, the SiLU product and the fused
projections (q/k/v in one launch, gate/up with the SiLU product), in bfloat16 (which Triton's CPU interpreter
cannot check) and float16/float32. Whole models decoding through them: test_decode.py."""

import pytest
import torch
import torch.nn.functional as F

from liger.models.triton_layer import add_rms_norm, gate_up_silu, linear3, silu_mul
from tests.conftest import assert_close

pytestmark = pytest.mark.gpu

@pytest.mark.parametrize("dtype,wdtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                          (torch.float32, torch.float32), (torch.bfloat16, torch.float32)])
def test_layer_kernels_round_as_the_families_modules(dtype, wdtype):
    """``add_rms_norm`` and ``silu_mul`` (``models/triton_layer.py``) against LlamaRMSNorm, the residual add and
    ``silu(gate) * up`` at SmolLM2's sizes: the same roundings, so (nearly) every element bit-equal."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    g = torch.Generator(device="cuda").manual_seed(0)
    norm = LlamaRMSNorm(576, eps=1e-5).to("cuda", wdtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(576, generator=g, device="cuda"))
    h = (3 * torch.randn(16, 1, 576, generator=g, device="cuda")).to(dtype)
    a = torch.randn(16, 1, 576, generator=g, device="cuda").to(dtype)
    with torch.no_grad():
        ho, x = add_rms_norm(h, a, norm)
        ref_h = h + a
        ref_x = norm(ref_h)
        assert torch.equal(ho, ref_h)
        assert x.dtype == ref_x.dtype
        assert_close(x.float(), ref_x.float(), 1e-2 if dtype != torch.float32 else 1e-6)
        # in 16-bit dtypes the same roundings give the same bits (rsqrt may move a few); float32 sums in another
        # order (77 % bit-equal on an H100, within 1e-6)
        if dtype != torch.float32:
            assert (x == ref_x).float().mean() >= 0.95
        gate = (2 * torch.randn(16, 1, 1536, generator=g, device="cuda")).to(dtype)
        up = torch.randn(16, 1, 1536, generator=g, device="cuda").to(dtype)
        out, ref = silu_mul(gate, up), F.silu(gate) * up
        assert_close(out.float(), ref.float(), 1e-2 if dtype != torch.float32 else 1e-6)
        if dtype != torch.float32:
            assert (out == ref).float().mean() >= 0.95


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 16, 40])
def test_projection_kernels_match_nn_linear(dtype, bias, rows):
    """q/k/v (576 → 576, 192, 192) and gate/up (576 → 1536) of ``rows`` tokens against ``nn.Linear`` (cuBLAS):
    both round a float32 sum once, in another order."""
    torch.manual_seed(0)
    mods = [torch.nn.Linear(576, n, bias=bias).to("cuda", dtype) for n in (576, 192, 192)]
    x = torch.randn(rows, 1, 576, device="cuda").to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    with torch.no_grad():
        for out, m in zip(linear3(x, *mods), mods):
            assert_close(out.float(), m(x).float(), tol)
        gate, up = (torch.nn.Linear(576, 1536, bias=bias).to("cuda", dtype) for _ in range(2))
        assert_close(gate_up_silu(x, gate, up).float(), (F.silu(gate(x)) * up(x)).float(), tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows", [1, 16, 40])
def test_projection_kernels_with_the_norm_inside_match_the_modules(dtype, rows):
    """``residual=(h, a, norm)``: the residual add and LlamaRMSNorm computed inside the q/k/v and gate/up kernels
    (decode_layers' five launches a layer) against ``h + a``, the module and ``nn.Linear`` (cuBLAS)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(576, eps=1e-5).to("cuda", dtype)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(576, device="cuda"))
    mods = [torch.nn.Linear(576, n, bias=False).to("cuda", dtype) for n in (576, 192, 192)]
    gate, up = (torch.nn.Linear(576, 1536, bias=False).to("cuda", dtype) for _ in range(2))
    h = (3 * torch.randn(rows, 1, 576, device="cuda")).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    with torch.no_grad():
        for a in (torch.randn(rows, 1, 576, device="cuda").to(dtype), None):
            ref_h = h + a if a is not None else h
            x = norm(ref_h)
            *outs, h_new = linear3(None, *mods, residual=(h, a, norm))
            assert torch.equal(h_new, ref_h)
            for out, m in zip(outs, mods):
                assert_close(out.float(), m(x).float(), tol)
            out, h_new = gate_up_silu(None, gate, up, residual=(h, a, norm))
            assert torch.equal(h_new, ref_h)
            assert_close(out.float(), (F.silu(gate(x)) * up(x)).float(), tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_through_the_fused_layers_matches_the_layers_own(dtype, monkeypatch):
    """``decode_backend="triton"``: a gradient-free prefill (300 tokens × 4: the modules' GEMMs, the fused norms and
    SiLU product) gives the logits of the layers' own forward, and decoding goes on from its cache."""
    import liger
    import liger.models.modeling_liger as modeling
    from tests.gpu.conftest import gpu_teacher, left_padded, positions

    calls = []
    fused = modeling.decode_layers
    monkeypatch.setattr(modeling, "decode_layers", lambda *a: calls.append(a[-1]) or fused(*a))
    teacher = gpu_teacher("llama", dtype=dtype)
    fast = liger.convert(teacher, window_size=16, num_sink_tokens=2, decode_backend="triton")
    reference = liger.convert(teacher, window_size=16, num_sink_tokens=2, decode_backend="torch")
    x, mask = left_padded(B=4, T=300, pads=(0, 9, 40, 120))
    pos = positions(mask)
    real = mask.bool()
    with torch.no_grad():
        a = fast(x, attention_mask=mask, position_ids=pos).logits
        b = reference(x, attention_mask=mask, position_ids=pos).logits
    assert calls == [None], "the prefill did not run through decode_layers"
    assert_close(a[real], b[real], 1e-4 if dtype == torch.float32 else 1e-2, msg="logits")
