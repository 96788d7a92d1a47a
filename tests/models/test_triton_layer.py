"""The decoder layers around the fused decode step (``decode_backend="triton"``, ``models/triton_layer.py``) on
CPU, through Triton's interpreter: the residual-add + RMSNorm and SiLU-product kernels against the families'
own modules, and the cases that keep the decoder layers' own forward. Whole models decoding through
:func:`decode_layers` against the PyTorch step: ``tests/models/test_triton_decode.py`` (MODEL)."""

import importlib.util
import textwrap

import pytest
import torch

import liger
from liger.models import triton_layer
from tests.conftest import run_in_triton_interpreter, tiny_teacher

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

KERNELS = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm
    from liger.models.triton_layer import add_rms_norm, silu_mul

    g = torch.Generator().manual_seed(0)
    worst = {}
    exact = {}
    # hidden sizes: a power of two, and not (72, 576: SmolLM2's); residual dtypes; norm weights in the model's
    # dtype or float32 (the output then promotes to float32, as the module's does)
    for N, dtype, wdtype, cls in [(64, torch.float32, torch.float32, LlamaRMSNorm),
                                  (72, torch.float32, torch.float32, Qwen3RMSNorm),
                                  (576, torch.bfloat16, torch.bfloat16, LlamaRMSNorm),
                                  (72, torch.bfloat16, torch.float32, LlamaRMSNorm),
                                  (48, torch.float16, torch.float16, LlamaRMSNorm)]:
        norm = cls(N, eps=1e-5).to(wdtype)
        with torch.no_grad():
            norm.weight.copy_(1 + 0.3 * torch.randn(N, generator=g))
        h = (3 * torch.randn(3, 1, N, generator=g)).to(dtype)
        a = torch.randn(3, 1, N, generator=g).to(dtype)
        for with_add in (True, False):
            ho, x = add_rms_norm(h, a if with_add else None, norm)
            ref_h = h + a if with_add else h
            ref_x = norm(ref_h)
            assert ho.dtype == ref_h.dtype and x.dtype == ref_x.dtype, (ho.dtype, x.dtype, ref_x.dtype)
            assert ho.shape == ref_h.shape and x.shape == ref_x.shape
            key = f"{dtype} {wdtype} {N}"
            worst[key + " h"] = max(worst.get(key + " h", 0), rel(ho, ref_h))
            worst[key + " x"] = max(worst.get(key + " x", 0), rel(x, ref_x))
            exact[key] = min(exact.get(key, 1.0), (x == ref_x).float().mean().item())
        if not with_add:
            assert ho is h  # no add: the residual stream is passed through
    for shape, dtype in [((16, 1, 1536), torch.bfloat16), ((3, 1, 100), torch.float32), ((2, 1, 1000), torch.float16)]:
        gate = (2 * torch.randn(shape, generator=g)).to(dtype)
        up = torch.randn(shape, generator=g).to(dtype)
        out, ref = silu_mul(gate, up), F.silu(gate) * up
        assert out.dtype == ref.dtype and out.shape == ref.shape
        worst[f"silu {dtype} {shape[-1]}"] = rel(out, ref)
        exact[f"silu {dtype} {shape[-1]}"] = (out == ref).float().mean().item()
    print("WORST", (worst, exact))
''')

PROJECTIONS = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from liger.models.triton_layer import gate_up_silu, linear, linear3

    g = torch.Generator().manual_seed(0)
    worst = {}
    # token rows below one tile (3), across two (20); output widths not a multiple of the tile (40, 24, 72);
    # q/k/v biases (Qwen2) and none (no bfloat16: the interpreter's tl.dot takes its bits for integers; the GPU
    # tier checks it)
    for M, K, N, bias, dtype in [(3, 64, (64, 40, 24), False, torch.float32), (20, 72, (48, 16, 16), True,
                                 torch.float32), (16, 128, (128, 32, 32), False, torch.float16),
                                 (5, 64, (72, 24, 24), True, torch.float16)]:
        mods = [torch.nn.Linear(K, n, bias=bias).to(dtype) for n in N]
        x = torch.randn(M, 1, K, generator=g).to(dtype)
        outs = linear3(x, *mods)
        key = f"linear3 {M} {dtype} {bias}"
        for o, m in zip(outs, mods):
            ref = m(x)
            assert o.shape == ref.shape and o.dtype == ref.dtype, (o.shape, ref.shape)
            worst[key] = max(worst.get(key, 0), rel(o, ref))
        # one linear on the same kernel (o_proj and down_proj under decode_pdl): the first module's
        o, ref = linear(x, mods[0]), mods[0](x)
        assert o.shape == ref.shape and o.dtype == ref.dtype, (o.shape, ref.shape)
        worst[f"linear {M} {dtype} {bias}"] = rel(o, ref)
        gate, up = (torch.nn.Linear(K, N[0], bias=bias).to(dtype) for _ in range(2))
        out, ref = gate_up_silu(x, gate, up), F.silu(gate(x)) * up(x)
        assert out.shape == ref.shape and out.dtype == ref.dtype
        worst[f"gate_up {M} {dtype} {bias}"] = rel(out, ref)
        # the residual add and the RMSNorm inside the same launch (residual=(h, a, norm); a None: the norm of h)
        norm = LlamaRMSNorm(K, eps=1e-5).to(dtype)
        with torch.no_grad():
            norm.weight.copy_(1 + 0.3 * torch.randn(K, generator=g))
        h = (3 * torch.randn(M, 1, K, generator=g)).to(dtype)
        for a in (torch.randn(M, 1, K, generator=g).to(dtype), None):
            ref_h = h + a if a is not None else h
            xn = norm(ref_h)
            key = f"{M} {dtype} {bias} add={a is not None}"
            *outs, h_new = linear3(None, *mods, residual=(h, a, norm))
            assert torch.equal(h_new, ref_h) and h_new.dtype == ref_h.dtype
            for o, m in zip(outs, mods):
                ref = m(xn)
                assert o.shape == ref.shape and o.dtype == ref.dtype
                worst["norm linear3 " + key] = max(worst.get("norm linear3 " + key, 0), rel(o, ref))
            out, h_new = gate_up_silu(None, gate, up, residual=(h, a, norm))
            ref = F.silu(gate(xn)) * up(xn)
            assert torch.equal(h_new, ref_h) and out.shape == ref.shape and out.dtype == ref.dtype
            worst["norm gate_up " + key] = rel(out, ref)
    print("WORST", worst)
''')


@needs_triton
def test_projection_kernels_match_nn_linear_in_the_interpreter():
    worst = run_in_triton_interpreter(PROJECTIONS)
    assert len(worst) == 28, worst
    for name, err in worst.items():
        assert err <= (1e-6 if "float32" in name else 1e-2), (name, err)


def test_only_plain_linears_on_few_tokens_take_the_projection_kernels():
    from peft import LoraConfig, get_peft_model

    x = torch.zeros(4, 1, 8)
    a, b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)
    assert triton_layer.fusable_linears(x, a, b)
    assert not triton_layer.fusable_linears(x, a, torch.nn.Linear(8, 4, bias=False))  # biases on some only
    assert not triton_layer.fusable_linears(x.double(), a, b)  # another dtype than the weights'
    assert not triton_layer.fusable_linears(torch.zeros(65, 1, 8), a, b)  # a batch for cuBLAS
    wrapped = get_peft_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
                             LoraConfig(r=2, target_modules=["0"])).base_model.model[0]
    assert not triton_layer.fusable_linears(x, wrapped, b)  # a LoRA adapter's delta is not in the kernels


@needs_triton
def test_layer_kernels_match_the_families_modules_in_the_interpreter():
    worst, exact = run_in_triton_interpreter(KERNELS)
    assert len(worst) == 13 and len(exact) == 8, (worst, exact)
    for name, err in worst.items():
        tol = 1e-6 if "float32 torch.float32" in name or name.startswith("silu torch.float32") else 1e-2
        assert err <= tol, (name, err)
    # float16: the same roundings as the modules, bit for bit (the interpreter rounds bfloat16 its own way, and
    # float32 sums in another order: the GPU tier checks those)
    for name, share in exact.items():
        if "float16" in name and "bfloat16" not in name:
            assert share == 1.0, (name, share)


def test_layers_the_fused_step_does_not_cover_keep_their_own_forward(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # as if the kernels could run here: the reason is the model
    monkeypatch.setattr(triton_layer, "_kernels_fail", lambda dtype, device, pdl=False: None)  # (as if they ran here)
    x = torch.zeros(2, 1, 64)
    model = liger.convert(tiny_teacher("llama"), window_size=4, decode_backend="triton")
    if importlib.util.find_spec("triton") is not None:
        assert triton_layer.unsupported_reason(model.model, x) is None
        assert "dtype" in triton_layer.unsupported_reason(model.model, x.double())
        model.model.layers[1].mlp.act_fn = torch.nn.GELU()
        assert "silu" in triton_layer.unsupported_reason(model.model, x)
        model.model.layers[1].mlp.act_fn = torch.nn.SiLU()
        model.model.layers[0].post_attention_layernorm = torch.nn.LayerNorm(64)
        assert "RMSNorm" in triton_layer.unsupported_reason(model.model, x)
        assert not model.model._fused_layers(x)
    # the hybrid keeps softmax layers with their own cache: never through decode_layers
    hybrid = liger.convert(tiny_teacher("llama"), window_size=4, decode_backend="triton", full_attention_layers=[0])
    assert not hybrid.model._fused_layers(x)
    # decode_backend other than "triton": the decoder layers' own forward
    plain = liger.convert(tiny_teacher("llama"), window_size=4, decode_backend="torch")
    assert not plain.model._fused_layers(x)


def test_decode_layers_off_cuda_take_the_layers_own_forward(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = liger.convert(tiny_teacher("llama"), window_size=4, decode_backend="triton")
    assert not model.model._fused_layers(torch.zeros(2, 1, 64))


@needs_triton
def test_layers_split_or_hooked_by_accelerate_keep_their_own_forward(monkeypatch):
    """decode_layers calls the layers' parts directly, so a model whose layers carry accelerate's hooks (a device
    map, offloading) or whose weights sit on several devices keeps the layers' own forward."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # (past the CUDA check: the structural checks come first)
    monkeypatch.setattr(triton_layer, "_kernels_fail", lambda dtype, device, pdl=False: None)
    model = liger.convert(tiny_teacher("llama"), window_size=4, decode_backend="triton")
    x = torch.zeros(2, 1, model.config.hidden_size)
    assert triton_layer.unsupported_reason(model.model, x) is None
    model.model.layers[1].mlp._hf_hook = object()
    assert "accelerate hooks" in triton_layer.unsupported_reason(model.model, x)
    del model.model.layers[1].mlp._hf_hook
    model.model.layers[0].post_attention_layernorm.to("meta")
    assert "not all on the input's device" in triton_layer.unsupported_reason(model.model, x)


@needs_triton
def test_kernels_that_fail_here_leave_the_layers_own_forward(monkeypatch):
    """A layer kernel that does not compile or launch on this machine is found by a trial run before any cache is
    written: the decode step then keeps the decoder layers' own forward, with the reason."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_layer, "_kernel_checks", {})

    def broken(*args, **kwargs):
        raise RuntimeError("PTX assembly failed")

    monkeypatch.setattr(triton_layer, "add_rms_norm", lambda *args: None)  # (runs)
    monkeypatch.setattr(triton_layer, "linear3", broken)
    model = liger.convert(tiny_teacher("llama"), window_size=4, decode_backend="triton")
    reason = triton_layer.unsupported_reason(model.model, torch.zeros(2, 1, 64))
    assert "failed here" in reason and "PTX assembly failed" in reason
    assert not model.model._fused_layers(torch.zeros(2, 1, 64))


def test_prefill_takes_the_fused_layers_only_without_gradients_and_when_asked(monkeypatch):
    """Gradient-free multi-token calls run through decode_layers with decode_backend="triton" asked for (the
    logits against the PyTorch layers: test_triton_decode.py's MODEL, prefill included); never with gradients,
    never under "auto" (not yet measured on a GPU), never beyond the kernels' 32-bit offsets."""
    x = torch.zeros(2, 5, 32)
    for backend, grad, expected in [("triton", False, True), ("triton", True, False), ("auto", False, False),
                                    ("torch", False, False)]:
        model = liger.convert(tiny_teacher("llama"), decode_backend=backend)
        monkeypatch.setattr(model.model, "_fused_layers", lambda hidden: True)
        with torch.set_grad_enabled(grad):
            assert model.model._fused_prefill(x) is expected, (backend, grad)
    import liger.models.modeling_liger as modeling

    model = liger.convert(tiny_teacher("llama"), decode_backend="triton")
    monkeypatch.setattr(model.model, "_fused_layers", lambda hidden: True)
    need = 2 * 5 * max(32, model.config.intermediate_size)  # rows × the widest of hidden and intermediate
    with torch.no_grad():
        for limit, expected in [(need, True), (need - 1, False)]:
            monkeypatch.setattr(modeling, "MAX_ELEMENTS", limit)
            assert model.model._fused_prefill(x) is expected, limit
