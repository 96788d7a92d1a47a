"""The Triton window kernels (the CUDA default window op) on CPU, through Triton's interpreter: outputs and
gradients against the banded PyTorch op, and a whole model with
``window_backend="triton"`` against the same model on the torch op (training loss and gradients, prefill with a
cache, decoding). Skipped when Triton is not installed; the compiled kernels are checked against the dense
reference by the gpu tier (tests/gpu)."""

import importlib.util
import textwrap

import pytest
import torch

import liger
from tests.conftest import run_in_triton_interpreter, tiny_teacher

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

SCRIPT = textwrap.dedent('''
    import torch
    import liger
    from liger.models.window import window_attention
    from liger.models.triton_window import triton_window_attention
    from tests.conftest import tiny_teacher

    torch.manual_seed(0)
    worst = {}
    # B, Tq, Tk, HQ, H, D, W, padded: grouped heads, a cached prefix (Tk > Tq), head dims that are not powers of
    # two, windows shorter than, equal to and longer than the 64-query block, a single query
    cases = [(2, 100, 100, 6, 2, 32, 16, True), (2, 70, 90, 4, 4, 16, 64, False), (1, 130, 130, 3, 1, 24, 64, True),
             (2, 5, 40, 2, 1, 32, 8, True), (2, 150, 180, 4, 2, 16, 100, True), (2, 1, 9, 4, 2, 16, 10, True)]
    for B, Tq, Tk, HQ, H, D, W, padded in cases:
        q = torch.randn(B, Tq, HQ, D, requires_grad=True)
        k, v = (torch.randn(B, Tk, H, D, requires_grad=True) for _ in range(2))
        valid = None
        if padded:
            valid = torch.ones(B, Tk, dtype=torch.bool)
            valid[0, :7] = False
            valid[-1, Tk // 2] = False
        out = triton_window_attention(q, k, v, W, 0.3, valid)
        ref = window_attention(q, k, v, W, 0.3, valid)
        real = torch.ones(B, Tq, dtype=torch.bool) if valid is None else valid[:, Tk - Tq:]
        assert out.shape == ref.shape and out.is_contiguous()
        worst["output"] = max(worst.get("output", 0), rel(out[real], ref[real]))
        w = torch.randn_like(out) * real[..., None, None]
        for name, a, b in zip("qkv", torch.autograd.grad(out, (q, k, v), w), torch.autograd.grad(ref, (q, k, v), w)):
            worst["d" + name] = max(worst.get("d" + name, 0), rel(a, b))

    # a whole model: training loss and gradients, then prefill with a cache and decoding
    teacher = tiny_teacher("llama")
    models = {b: liger.convert(teacher, window_size=8, window_backend=b, linear_backend="torch")
              for b in ("triton", "torch")}
    x = torch.randint(0, 128, (2, 40))
    mask = torch.ones_like(x)
    mask[1, :9] = 0
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    # only predictions made from real positions: a padding query's window output is arbitrary (the kernels
    # return its own value, the torch op zeros) and predicts the first real token of its sequence
    after_padding = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], 1) == 0
    labels = x.masked_fill((mask == 0) | after_padding, -100)
    out = {}
    for b, m in models.items():
        o = m(x, attention_mask=mask, position_ids=pos, labels=labels)
        o.loss.backward()
        out[b] = (o.logits, [p.grad for p in m.parameters() if p.grad is not None])
    real = mask.bool()
    worst["model logits"] = rel(out["triton"][0][real], out["torch"][0][real])
    worst["model grads"] = max(rel(a, b) for a, b in zip(out["triton"][1], out["torch"][1]))
    with torch.no_grad():
        full = models["torch"](x, attention_mask=mask, position_ids=pos).logits
        m = models["triton"]
        o = m(x[:, :30], attention_mask=mask[:, :30], position_ids=pos[:, :30], use_cache=True)
        cache, steps = o.past_key_values, [o.logits]
        for t in range(30, 34):  # single tokens (eager step), then a 6-token chunk through the kernels
            steps.append(m(x[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=pos[:, t:t + 1],
                           past_key_values=cache).logits)
        steps.append(m(x[:, 34:], attention_mask=mask, position_ids=pos[:, 34:], past_key_values=cache).logits)
    worst["cached"] = rel(torch.cat(steps, 1)[real], full[real])
    print("WORST", worst)
''')


@needs_triton
def test_triton_window_kernels_match_torch_in_the_interpreter():
    worst = run_in_triton_interpreter(SCRIPT)
    assert set(worst) == {"output", "dq", "dk", "dv", "model logits", "model grads", "cached"}
    for name, err in worst.items():
        assert err < 1e-5, (name, err)

OUTSIDE_KEYS = textwrap.dedent('''
    import torch
    import liger
    from liger.models.global_cache import ExtraKeys
    from liger.models.window import Sinks, window_attention
    from liger.models.triton_window import triton_window_attention
    from tests.conftest import tiny_teacher

    torch.manual_seed(0)
    worst = {}
    # B, Tq, Tk, HQ, H, D, W, S sinks, E extra keys per block (0 = none), block size of the extra keys
    cases = [(2, 100, 100, 6, 2, 32, 16, 3, 0, 64), (2, 70, 90, 4, 4, 16, 8, 0, 5, 16),
             (1, 130, 130, 3, 1, 24, 64, 2, 7, 64), (2, 5, 40, 2, 1, 32, 8, 4, 3, 5)]
    for B, Tq, Tk, HQ, H, D, W, S, E, bq in cases:
        q = torch.randn(B, Tq, HQ, D, requires_grad=True)
        k, v = (torch.randn(B, Tk, H, D, requires_grad=True) for _ in range(2))
        valid = torch.ones(B, Tk, dtype=torch.bool)
        valid[0, :7] = False
        sinks = extra = None
        leaves = []
        if S:
            sk, sv = (torch.randn(B, S, H, D, requires_grad=True) for _ in range(2))
            index = torch.arange(S).repeat(B, 1) - (Tk - Tq) + torch.tensor([[7], [0]][:B])
            sinks = Sinks(sk, sv, index, torch.rand(B, S) > 0.2)
            leaves += [sk, sv]
        if E:
            nb = -(-Tq // bq)
            ek, ev = (torch.randn(B, nb, E, H, D, requires_grad=True) for _ in range(2))
            visible = torch.rand(B, nb, H, bq, E) > 0.4
            extra = ExtraKeys(ek, ev, visible, bq)
            leaves += [ek, ev]
        out = triton_window_attention(q, k, v, W, 0.3, valid, sinks, extra)
        ref = window_attention(q, k, v, W, 0.3, valid, sinks, bq if E else 64, extra)
        real = valid[:, Tk - Tq:]
        assert out.shape == ref.shape and out.is_contiguous()
        worst["output"] = max(worst.get("output", 0), rel(out[real], ref[real]))
        w = torch.randn_like(out) * real[..., None, None]
        inputs = (q, k, v, *leaves)
        for i, (a, b) in enumerate(zip(torch.autograd.grad(out, inputs, w), torch.autograd.grad(ref, inputs, w))):
            name = "d" + ("qkv"[i] if i < 3 else "outside")
            worst[name] = max(worst.get(name, 0), rel(a, b))

    # a whole model with sinks and a global cache: training loss and gradients, prefill with a cache, decoding
    teacher = tiny_teacher("llama")
    models = {b: liger.convert(teacher, window_size=8, num_sink_tokens=2, global_cache_size=4, window_backend=b,
                               linear_backend="torch") for b in ("triton", "torch")}
    x = torch.randint(0, 128, (2, 40))
    mask = torch.ones_like(x)
    mask[1, :9] = 0
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    after_padding = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], 1) == 0
    labels = x.masked_fill((mask == 0) | after_padding, -100)
    out = {}
    for b, m in models.items():
        o = m(x, attention_mask=mask, position_ids=pos, labels=labels)
        o.loss.backward()
        out[b] = (o.logits, [p.grad for p in m.parameters() if p.grad is not None])
    real = mask.bool()
    worst["model logits"] = rel(out["triton"][0][real], out["torch"][0][real])
    worst["model grads"] = max(rel(a, b) for a, b in zip(out["triton"][1], out["torch"][1]))
    with torch.no_grad():
        full = models["torch"](x, attention_mask=mask, position_ids=pos).logits
        m = models["triton"]
        o = m(x[:, :30], attention_mask=mask[:, :30], position_ids=pos[:, :30], use_cache=True)
        cache, steps = o.past_key_values, [o.logits]
        for t in range(30, 34):
            steps.append(m(x[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=pos[:, t:t + 1],
                           past_key_values=cache).logits)
        steps.append(m(x[:, 34:], attention_mask=mask, position_ids=pos[:, 34:], past_key_values=cache).logits)
    worst["cached"] = rel(torch.cat(steps, 1)[real], full[real])
    print("WORST", worst)
''')


@needs_triton
def test_triton_window_with_sinks_and_extra_keys_matches_torch_in_the_interpreter():
    """Sinks and the global cache's keys merged with the kernels' window through the log-sum-exp: outputs and
    gradients (the kernels' lse gradient included) equal the banded torch op, in an op and in a model."""
    worst = run_in_triton_interpreter(OUTSIDE_KEYS)
    assert set(worst) == {"output", "dq", "dk", "dv", "doutside", "model logits", "model grads", "cached"}
    for name, err in worst.items():
        assert err < 1e-5, (name, err)


def test_triton_window_backend_takes_sinks():
    model = liger.convert(tiny_teacher("llama"), window_backend="triton", num_sink_tokens=4, global_cache_size=8)
    assert model.config.window_backend == "triton"


def test_window_backend_auto_picks_sdpa_blocks_on_cpu_and_the_torch_op_for_the_reference(monkeypatch):
    """"auto": fused SDPA blocks off CUDA (faster than the banded op on a CPU), the banded torch op for single
    tokens and with linear_backend "torch" (the reference ops); on CUDA the Triton kernels, SDPA blocks with
    sinks or a global cache."""
    from liger.models import attention

    monkeypatch.setattr(attention, "triton_window_available", lambda: True)
    model = liger.convert(tiny_teacher("llama"), window_size=8)
    attn = model.model.layers[0].self_attn
    assert attn.window_backend == "auto"
    assert attn._window_backend(cuda=False, single_token=False) == "sdpa"
    assert attn._window_backend(cuda=True, single_token=False) == "triton"
    assert attn._window_backend(cuda=False, single_token=True) == "torch"
    assert attn._window_backend(cuda=True, single_token=True) == "torch"
    reference = liger.convert(tiny_teacher("llama"), window_size=8, linear_backend="torch").model.layers[0].self_attn
    assert reference._window_backend(cuda=False, single_token=False) == "torch"
    assert reference._window_backend(cuda=True, single_token=False) == "torch"
    with_sinks = liger.convert(tiny_teacher("llama"), window_size=8, num_sink_tokens=2)
    assert with_sinks.model.layers[0].self_attn._window_backend(cuda=True, single_token=False) == "sdpa"


def test_cpu_prefill_on_sdpa_blocks_matches_the_torch_op_with_a_cache_and_padding(monkeypatch):
    """A converted model on the CPU ("auto": SDPA blocks) against the same weights on the banded torch op
    (window_backend "torch"): logits of the real tokens and the caches after a padded prefill, and the
    LoRA-style gradients of a padded forward, within float32 rounding."""
    from liger.models import window
    from liger.models.cache import LigerCache
    from tests.conftest import assert_close

    calls = []
    sdpa = window.sdpa_window_attention
    monkeypatch.setattr(window, "sdpa_window_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    torch.manual_seed(0)
    teacher = tiny_teacher("llama")
    x = torch.randint(3, 128, (2, 24))
    mask = torch.ones_like(x)
    mask[1, :5] = 0
    real = mask.bool()
    for options in (dict(window_size=6), dict(window_size=6, num_sink_tokens=2, global_cache_size=4)):
        out = {}
        for backend in ("auto", "torch"):
            calls.clear()
            model = liger.convert(teacher, window_backend=backend, **options)
            cache = LigerCache(model.config)
            with torch.no_grad():
                logits = model(x, attention_mask=mask, past_key_values=cache, use_cache=True).logits
            model.zero_grad()
            model(x, attention_mask=mask).logits[real].square().mean().backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            out[backend] = (logits[real], list(cache.buffers()), grads)
            # (every layer's prefill and forward on the SDPA blocks with "auto", none with "torch")
            assert len(calls) == (2 * teacher.config.num_hidden_layers if backend == "auto" else 0), (backend, calls)
        assert_close(out["auto"][0], out["torch"][0], 1e-5, msg=f"{options} logits")
        for a, b in zip(out["auto"][1], out["torch"][1]):
            if b.dtype in (torch.bool, torch.long):
                assert torch.equal(a, b), options
            else:
                finite = b.isfinite()
                assert torch.equal(finite, a.isfinite()), options
                assert_close(a[finite], b[finite], 1e-5, msg=f"{options} cache")
        assert_close(out["auto"][2], out["torch"][2], 1e-5, msg=f"{options} gradients")


def test_tensors_too_large_for_32_bit_indexing_take_the_fallback_ops(monkeypatch):
    from liger.models import attention, triton_common, variants
    from liger.models.window import sliding_window_attention, window_attention

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 40, 4, 8), torch.randn(2, 40, 2, 8), torch.randn(2, 40, 2, 8)
    assert not triton_common.supports(q)  # CPU tensors reach the kernels only under Triton's interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # (read by supports() at each call; no kernel runs below)
    assert triton_common.supports(q, k, v)
    monkeypatch.setattr(triton_common, "MAX_ELEMENTS", q.numel() - 1)
    assert not triton_common.supports(q, k, v) and triton_common.supports(k, v)
    # the window: the SDPA blocks instead of the kernels (which cannot run here: no CUDA, no interpreter)
    out = sliding_window_attention(q, k, v, 8, 0.3, None, None, backend="triton")
    assert torch.allclose(out, window_attention(q, k, v, 8, 0.3), atol=1e-5)
    # RoPE and the GLA inputs: the compiled functions
    monkeypatch.setattr(attention, "triton_window_available", lambda: True)
    assert attention._rope_op(True, q) is attention._compiled_rope
    monkeypatch.setattr(variants, "triton_available", lambda: True)
    gla = liger.convert(tiny_teacher("llama")).model.layers[0].self_attn.recurrence
    assert not gla.triton_inputs(q, k)
    monkeypatch.setattr(triton_common, "MAX_ELEMENTS", 2**31 - 1)
    assert gla.triton_inputs(q, k) and attention._rope_op(True, q) is attention.triton_rope_pair
