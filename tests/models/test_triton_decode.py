"""The fused Triton decode step (``decode_backend="triton"``) on CPU, through Triton's interpreter: one layer's
step against the PyTorch step (output and every cache buffer after it) over shapes, window fills, sinks, padding,
the covered variants (the gated delta rule included) and the global cache (with and without
``global_cache_pool``); whole models decoding with ``decode_backend="triton"`` against the same models on the
PyTorch step; and the cases it leaves to the PyTorch step. Skipped when Triton is not installed; the compiled
kernels are checked on the GPU tier (tests/gpu/test_decode.py)."""

import importlib.util
import textwrap
from types import SimpleNamespace

import pytest
import torch

import liger
from liger.models import triton_decode
from liger.models.attention import uses_fused_step
from tests.conftest import run_in_triton_interpreter, tiny_teacher

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")

# builds a layer cache the way the model does (a prefill of T tokens, some padded, through window_inputs/commit)
HELPERS = textwrap.dedent('''
    import torch
    from types import SimpleNamespace
    from liger.models.attention import decode_spec, decode_step_core
    from liger.models.cache import LigerLayerCache
    from liger.models.variants import VARIANT_CLASSES

    def recurrence(**kw):
        options = dict(variant="gla", feature_map="softmax", gate_normalizer=16.0, linear_scale=1.0,
                       gate_pool_size=None, hgrn2_lower_bound=0.0, gsa_num_slots=None, linear_normalizer="none",
                       global_cache_size=0, delta_write_strength=None)
        options.update(kw)
        return VARIANT_CLASSES[options["variant"]](SimpleNamespace(**options))

    def layer_cache(B, H, D, W, S, T, pads, columns, seed, NG=0, P=0):
        g = torch.Generator().manual_seed(seed)
        cache = LigerLayerCache(W, S, NG, P)
        k, v = torch.randn(B, T, H, D, generator=g), torch.randn(B, T, H, D, generator=g)
        valid = torch.ones(B, T, dtype=torch.bool)
        for i, p in enumerate(pads):
            valid[i, :p] = False
        keys, values, key_valid, sinks = cache.window_inputs(k, v, valid)
        state = (torch.randn(B, H, D, columns, generator=g).abs() * 0.2,)
        klin = members = None
        if NG:
            # pre-RoPE keys of the ring, and members with scores about the size of the recall errors (|v| ~ √D):
            # empty slots, two members tied at the lowest score (the later one is replaced first)
            klin = torch.cat([cache.ring_k_lin(), torch.randn(B, T, H, D, generator=g)], 1)
            score = D ** 0.5 * (0.7 + 0.6 * torch.rand(B, NG, H, generator=g))
            score[:, 0] = score[:, 1] = 0.5 * D ** 0.5
            index = torch.stack([torch.randperm(100, generator=g)[:NG] for _ in range(B * H)]).view(B, H, NG)
            index = index.transpose(1, 2).contiguous()
            score[0, -1] = float("-inf")  # an empty slot
            index[0, -1] = -1
            members = (torch.randn(B, NG, H, D, generator=g), torch.randn(B, NG, H, D, generator=g), score, index)
            for x in members[:2]:
                x[0, -1] = 0
            if P:
                # global_cache_pool: P pending tokens and the errors of the last 2P leavers, some -inf (padding,
                # sinks), the first pending token of (0, 0) among them (it does not compete)
                recent = D ** 0.5 * (0.5 + 0.8 * torch.rand(B, 2 * P, H, generator=g))
                recent[torch.rand(B, 2 * P, H, generator=g) < 0.25] = float("-inf")
                recent[0, P, 0] = float("-inf")
                members += (torch.randn(B, P, H, D, generator=g), torch.randn(B, P, H, D, generator=g), recent)
        cache.commit(keys, values, key_valid, sinks, state, klin, members)
        return cache
''')

STEP = HELPERS + textwrap.dedent('''
    import liger.models.attention as attention
    calls = []
    fused = attention.fused_decode_step
    attention.fused_decode_step = lambda *a: calls.append(1) or fused(*a)

    def not_compiled(*args):
        raise AssertionError("the fused step went through torch.compile")

    attention._compiled_core = not_compiled  # the compiled mode calls the fused step as it is

    worst = {}
    replaced = rejected = pool_replaced = pool_rejected = 0
    # B, HQ, H, D, W, S sinks, T prefill tokens, padded prefix per sequence, variant options, weights, steps, global
    # cache size: grouped heads and not, head dims 16/24/32/64 (24: not a power of two), rings not yet full
    # (T < W - 1) and wrapped (T > W - 1), a window of 1 (no ring), sequences all padding, sinks still filling while
    # decoding; the gated delta rule (β from the key, a constant β); the global cache with and without the recurrent
    # branch's output, with sinks (one leaves the window and must not compete), a ring not yet full (invalid
    # leavers), a window of 1 (the new token leaves at once; in the second sequence it becomes a sink first);
    # global_cache_pool P = 1, 2, 3 (the pending tokens shift through within the steps; with a window of 1 and sinks);
    # rings and global caches of several blocks of keys
    cases = [
        (2, 4, 2, 16, 8, 0, 20, (0, 3), {}, 0.5, 0.5, 3, 0),
        (3, 6, 2, 24, 64, 2, 10, (0, 4, 10), {}, 0.5, 0.5, 3, 0),
        (1, 4, 4, 32, 5, 3, 2, (0,), dict(linear_normalizer="sum"), 0.5, 0.5, 4, 0),
        (2, 3, 1, 64, 16, 1, 40, (5, 0), dict(variant="hgrn2", hgrn2_lower_bound=0.2), 0.3, 0.7, 2, 0),
        (2, 4, 2, 16, 1, 2, 3, (0, 2), dict(variant="hgrn2"), 0.5, 0.5, 3, 0),
        (2, 4, 2, 16, 6, 2, 9, (1, 0), dict(variant="rwkv6", feature_map="relu"), 0.5, 0.5, 2, 0),
        (2, 4, 2, 16, 6, 0, 9, (0, 3), dict(variant="mamba2", feature_map="elu_plus_one"), 0.5, 0.5, 2, 0),
        (2, 4, 2, 16, 6, 2, 9, (0, 3), dict(variant="gated_retention", feature_map="identity"), 0.5, 0.5, 2, 0),
        (2, 4, 2, 16, 6, 2, 9, (0, 3), dict(variant="mlstm", feature_map="identity"), 0.5, 0.5, 2, 0),
        (2, 4, 2, 16, 6, 2, 9, (0, 3), {}, 0.0, 1.0, 2, 0),  # recurrent branch off: the state is not stepped
        (2, 4, 2, 16, 6, 2, 9, (0, 3), dict(linear_scale=0.5, gate_normalizer=4.0), 1.0, 0.0, 2, 0),  # window off
        (2, 4, 2, 16, 6, 2, 9, (0, 3), dict(variant="gated_deltanet"), 0.5, 0.5, 3, 0),
        (2, 6, 2, 24, 8, 0, 20, (0, 5), dict(variant="gated_deltanet", delta_write_strength=0.6, linear_scale=0.5),
         0.3, 0.7, 3, 0),
        (3, 4, 2, 16, 6, 2, 20, (0, 4, 20), dict(global_cache_size=1), 0.5, 0.5, 4, 4),
        (2, 4, 2, 16, 4, 2, 9, (0, 8), dict(global_cache_size=1, feature_map="relu"), 0.0, 1.0, 4, 3),
        (1, 4, 4, 32, 5, 0, 2, (0,), dict(global_cache_size=1, linear_normalizer="sum"), 0.5, 0.5, 4, 3),
        (2, 4, 2, 16, 1, 2, 3, (0, 3), dict(global_cache_size=1, variant="mlstm"), 0.5, 0.5, 3, 2),
        (2, 4, 2, 16, 6, 2, 12, (0, 2), dict(global_cache_size=1, variant="gated_deltanet"), 0.5, 0.5, 4, 4),
        (2, 6, 2, 24, 5, 1, 12, (3, 0), dict(global_cache_size=1, variant="gated_deltanet", delta_write_strength=1.0),
         0.0, 1.0, 4, 3),
        (3, 4, 2, 16, 6, 2, 20, (0, 4, 20), dict(global_cache_size=1, global_cache_pool=1), 0.5, 0.5, 4, 4),
        (2, 4, 2, 16, 4, 2, 9, (0, 8), dict(global_cache_size=1, global_cache_pool=3, feature_map="relu"), 0.0, 1.0,
         5, 3),
        (2, 4, 2, 16, 1, 2, 3, (0, 3), dict(global_cache_size=1, global_cache_pool=2, variant="gated_deltanet"), 0.5,
         0.5, 4, 2),
        # rings and caches of several key blocks (16 keys a block on odd cases): the memory recipe's shape, small
        (2, 4, 2, 16, 40, 2, 60, (0, 7), dict(global_cache_size=1, global_cache_pool=2), 0.0, 1.0, 3, 40),
        (2, 6, 2, 16, 40, 0, 60, (0, 7), dict(global_cache_size=1), 0.5, 0.5, 3, 20),
    ]
    expected_calls = 0
    from liger.models import triton_decode
    for i, (B, HQ, H, D, W, S, T, pads, opts, lw, ww, steps, NG) in enumerate(cases):
        triton_decode.KEY_BLOCK = 256 if i % 2 else 4096  # the window's online softmax over one block or several
        triton_decode.SPLIT = (1, 2, 4)[i % 3]  # one program per (sequence, KV head), or parts combined by the last
        # window programs other than the state's (2 or 4 against 1 or 2) on every other case
        triton_decode.WINDOW_SPLIT = (None, 2 if triton_decode.SPLIT < 2 else 4)[i // 3 % 2]
        opts = dict(opts)
        P = opts.pop("global_cache_pool", 0)
        rec = recurrence(**opts)
        columns = D if opts.get("variant") == "gated_deltanet" else D + int(rec.normaliser_column)
        caches = {name: layer_cache(B, H, D, W, S, T, pads, columns, seed=i, NG=NG, P=P)
                  for name in ("torch", "triton")}
        g = torch.Generator().manual_seed(100 + i)
        for step in range(steps):
            q, q_lin = torch.randn(B, 1, HQ, D, generator=g), torch.randn(B, 1, HQ, D, generator=g)
            k, v, k_lin = (torch.randn(B, 1, H, D, generator=g) for _ in range(3))
            angle = torch.randn(B, 1, D // 2, generator=g) * 3
            cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
            valid = torch.rand(B, generator=g) > 0.3
            if step == 0:
                valid[0] = False  # a padding token while decoding
            before = caches["torch"].buffers.global_index.clone() if NG else None
            out = {}
            for name, cache in caches.items():
                spec = decode_spec(rec, D ** -0.5, lw, ww, lw != 0 or NG > 0, name)
                if name == "torch":
                    out[name] = decode_step_core(spec, q, k, v, q_lin, k_lin, cos, sin, valid, cache.buffers)
                else:  # (the eager and the compiled decode modes in turn)
                    out[name] = attention.run_decode_step_core(step % 2 == 1, spec, q, k, v, q_lin, k_lin, cos, sin,
                                                               valid, cache.buffers)
            expected_calls += 1
            if NG:  # leavers that took a place, and leavers (competing or not) that did not
                changed = (caches["torch"].buffers.global_index != before).any(1)
                replaced += int(changed.sum())
                rejected += int((~changed).sum())
                if P:
                    pool_replaced += int(changed.sum())
                    pool_rejected += int((~changed).sum())
            assert out["triton"].dtype == q.dtype and out["triton"].shape == (B, 1, HQ, D)
            worst["output"] = max(worst.get("output", 0), rel(out["triton"], out["torch"]))
            a, b = caches["triton"].buffers, caches["torch"].buffers
            for field in b._fields:
                x, y = getattr(a, field), getattr(b, field)
                assert (x is None) == (y is None), field
                if y is None:
                    continue
                if field == "state":
                    x, y = x[0], y[0]
                if y.dtype in (torch.bool, torch.long):
                    assert torch.equal(x, y), (i, step, field, x, y)
                elif field in ("global_score", "global_recent"):  # (-inf: empty slots, no error)
                    assert torch.equal(x.isinf(), y.isinf()), (i, step, field, x, y)
                    finite = y.isfinite()
                    worst[field] = max(worst.get(field, 0), rel(x[finite], y[finite]))
                else:
                    worst[field] = max(worst.get(field, 0), rel(x, y))
    assert replaced >= 10 and rejected >= 10, (replaced, rejected)  # the merge was exercised both ways
    assert pool_replaced >= 5 and pool_rejected >= 5, (pool_replaced, pool_rejected)  # (with a pool too)
    assert len(calls) == expected_calls, (len(calls), expected_calls)
    print("WORST", worst)
''')

MODEL = textwrap.dedent('''
    import torch
    import liger
    import liger.models.attention as attention
    from liger.models.cache import LigerCache
    from tests.conftest import tiny_teacher

    import liger.models.modeling_liger as modeling
    calls, layer_calls = [], []
    fused = attention.fused_decode_step
    attention.fused_decode_step = lambda *a: calls.append(1) or fused(*a)
    fused_layers = modeling.decode_layers
    modeling.decode_layers = lambda *a: layer_calls.append(1) or fused_layers(*a)

    worst = {}
    x = torch.randint(3, 128, (3, 18), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(x)
    mask[1, :4] = 0
    mask[2, :7] = 0
    mask[2, 14] = 0  # a padding token while decoding
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    prefill = 10
    configs = {
        "llama": ("llama", dict(window_size=8, num_sink_tokens=2)),
        "qwen3 sum": ("qwen3", dict(window_size=5, linear_normalizer="sum")),
        "llama deltanet": ("llama", dict(window_size=6, num_sink_tokens=1, variant="gated_deltanet")),
        "qwen3 deltanet global": ("qwen3", dict(window_size=4, variant="gated_deltanet", delta_write_strength=0.5,
                                                global_cache_size=3)),
        "llama global": ("llama", dict(window_size=4, num_sink_tokens=2, global_cache_size=4)),
        "llama window-global": ("llama", dict(window_size=5, global_cache_size=3, linear_weight=0.0,
                                              window_weight=1.0, feature_map="relu")),
        "llama pool": ("llama", dict(window_size=4, num_sink_tokens=2, global_cache_size=4, global_cache_pool=2)),
        "llama window-pool": ("llama", dict(window_size=3, global_cache_size=3, global_cache_pool=3, linear_weight=0.0,
                                            window_weight=1.0)),
    }
    from liger.models import triton_decode, triton_layer
    norm_inside = []  # projection calls with the residual add and the norm inside (decode_fuse_norms)
    linear3 = triton_layer.linear3
    triton_layer.linear3 = lambda *a, residual=None, pdl=False: (norm_inside.append(1) if residual else None) or (
        linear3(*a, residual=residual, pdl=pdl))
    for n, (label, (family, options)) in enumerate(configs.items()):
        triton_decode.SPLIT = (1, 2)[n % 2]  # (two programs per KV head, their parts combined, on every other)
        teacher = tiny_teacher(family)
        logits, caches = {}, {}
        for backend in ("torch", "triton"):
            # (every other triton model with the norms inside the projection kernels, the others in their own)
            fuse = dict(decode_fuse_norms=n % 2 == 1) if backend == "triton" else {}
            model = liger.convert(teacher, decode_backend=backend, linear_backend="torch", **options, **fuse)
            model.set_decoding("static")
            with torch.no_grad():
                cache = LigerCache(model.config)
                out = model(x[:, :prefill], attention_mask=mask[:, :prefill], position_ids=pos[:, :prefill],
                            past_key_values=cache, use_cache=True)
                steps = [out.logits]
                for t in range(prefill, x.shape[1]):
                    steps.append(model(x[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=pos[:, t:t + 1],
                                       past_key_values=cache).logits)
            logits[backend], caches[backend] = torch.cat(steps, 1), cache
        real = mask.bool()
        worst[label + " logits"] = rel(logits["triton"][real], logits["torch"][real])
        for a, b in zip(caches["triton"].buffers(), caches["torch"].buffers()):
            if b.dtype in (torch.bool, torch.long):
                assert torch.equal(a, b), label
            else:
                finite = b.isfinite()  # (the global cache's empty slots score -inf)
                assert torch.equal(finite, a.isfinite()), label
                worst[label + " buffers"] = max(worst.get(label + " buffers", 0), rel(a[finite], b[finite]))
    # every decode step of every layer of every model took the fused kernel
    assert len(calls) == len(configs) * 2 * (x.shape[1] - prefill), len(calls)
    # and every decode step of every triton model, and its gradient-free prefill, ran its decoder layers through
    # decode_layers
    assert len(layer_calls) == len(configs) * (x.shape[1] - prefill + 1), len(layer_calls)
    # the models with decode_fuse_norms took the norm inside q/k/v in each layer of each such call, the others never
    # (+ 2: the kernels' one trial run per dtype and device, triton_layer._kernels_fail)
    fused_calls = (len(configs) // 2) * (x.shape[1] - prefill + 1) * teacher.config.num_hidden_layers + 2
    assert len(norm_inside) == fused_calls, (len(norm_inside), fused_calls)
    print("WORST", worst)
''')


@needs_triton
def test_fused_decode_step_matches_the_pytorch_step_in_the_interpreter():
    worst = run_in_triton_interpreter(STEP)
    assert set(worst) == {"output", "state", "ring_k", "ring_v", "sink_k", "sink_v", "ring_k_lin", "global_k",
                          "global_v", "global_score", "global_pend_k", "global_pend_v", "global_recent"}
    for name, err in worst.items():
        assert err <= 1e-5, (name, err)


@needs_triton
def test_model_decoding_with_decode_backend_triton_matches_torch_in_the_interpreter():
    worst = run_in_triton_interpreter(MODEL)
    assert len(worst) == 16
    for name, err in worst.items():
        assert err <= 1e-5, (name, err)


@needs_triton
def test_float16_model_decoding_with_decode_backend_triton_matches_torch_in_the_interpreter():
    """The 16-bit paths — the window's products on 16-bit operands, the norms inside the projection kernels, the
    roundings of a float16 residual stream — on three of MODEL's models in float16 (Triton's interpreter rounds
    float16 as a GPU does; its bfloat16 it cannot: the GPU tier checks that): logits and buffers within 2e-3 of
    the PyTorch step's, the global cache's members and every flag and count equal."""
    import re

    script = MODEL.replace("teacher = tiny_teacher(family)", "teacher = tiny_teacher(family).to(torch.float16)")
    for label in ("qwen3 sum", "llama deltanet", "qwen3 deltanet global", "llama window-global", "llama pool"):
        script, n = re.subn(r'\n\s*"' + re.escape(label) + r'".*?\)\),', "", script, flags=re.S)
        assert n == 1, label
    worst = run_in_triton_interpreter(script)
    assert set(worst) == {f"{m} {w}" for m in ("llama", "llama global", "llama window-pool")
                          for w in ("logits", "buffers")}, worst
    for name, err in worst.items():
        assert err <= 2e-3, (name, err)


def _model_cache(model, T=6):
    x = torch.randint(3, 128, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, model(x, use_cache=True).past_key_values


@pytest.mark.parametrize("options,reason", [
    (dict(variant="gsa"), "GSA"),
    (dict(variant="gsa", global_cache_size=4), "GSA"),
    (dict(gate_pool_size=4), "gate pooling"),
])
def test_cases_outside_the_kernel_take_the_pytorch_step(monkeypatch, options, reason):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # as if the kernel could run here: the reason is the case itself
    model = liger.convert(tiny_teacher("llama"), window_size=4, decode_backend="triton", **options)
    attn = model.model.layers[0].self_attn
    _, cache = _model_cache(model)
    q = torch.zeros(2, 1, 4, 16)
    buffers = cache.layers[0].buffers
    if importlib.util.find_spec("triton") is not None:
        assert reason in triton_decode.unsupported_reason(attn.decode_spec, q, q[:, :, :2], buffers)
    assert not uses_fused_step(attn.decode_spec, q, q[:, :, :2], buffers)


def test_decode_backend_triton_off_cuda_decodes_as_torch(monkeypatch):
    """Without CUDA (and without the interpreter) 'triton' runs the PyTorch step: same tokens and logits."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    teacher = tiny_teacher("llama")
    out = {}
    for backend in ("torch", "triton"):
        model = liger.convert(teacher, window_size=4, num_sink_tokens=1, decode_backend=backend).set_decoding("static")
        assert model.config.decode_backend == backend
        x, cache = _model_cache(model)
        with torch.no_grad():
            out[backend] = torch.cat([model(x[:, t:t + 1], past_key_values=cache).logits for t in range(3)], 1)
        spec = model.model.layers[0].self_attn.decode_spec
        q = torch.zeros(2, 1, 4, 16)
        assert spec.backend == backend and not uses_fused_step(spec, q, q[:, :, :2], cache.layers[0].buffers)
    assert torch.equal(out["triton"], out["torch"])


@needs_triton
def test_a_kernel_that_does_not_compile_falls_back_to_the_pytorch_step(monkeypatch, caplog):
    """A compile failure (raised before the launch) is remembered for that case, logged once, and the step runs on
    PyTorch: the same logits as the "torch" backend; a failure at run time is not swallowed."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # (the kernel is replaced below: nothing runs in the interpreter)
    launches = []

    def failing(message):
        class Launcher:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    launches.append(grid)
                    raise RuntimeError(message)
                return launch
        return lambda: SimpleNamespace(decode_step=Launcher())

    from liger.models import triton_layer

    teacher = tiny_teacher("llama")
    monkeypatch.setattr(triton_decode, "_compile_failures", {})
    monkeypatch.setattr(triton_layer, "_kernel_checks", {})  # (the layer kernels' check fails in-process: kept here)
    monkeypatch.setattr(triton_decode, "_kernels", failing("PassManager::run failed"))
    out = {}
    for backend in ("torch", "triton"):
        model = liger.convert(teacher, window_size=4, num_sink_tokens=1, decode_backend=backend)
        model.set_decoding("static")
        x, cache = _model_cache(model)
        with torch.no_grad(), caplog.at_level("WARNING", logger="liger"):
            out[backend] = torch.cat([model(x[:, t:t + 1], past_key_values=cache).logits for t in range(3)], 1)
    assert torch.equal(out["triton"], out["torch"])
    assert len(launches) == 1  # tried once, then remembered (the model's layers share the case)
    assert "does not compile here" in caplog.text
    monkeypatch.setattr(triton_decode, "_kernels", failing("an illegal memory access was encountered"))
    monkeypatch.setattr(triton_decode, "_compile_failures", {})
    model = liger.convert(teacher, window_size=4, num_sink_tokens=1, decode_backend="triton").set_decoding("static")
    x, cache = _model_cache(model)
    with pytest.raises(RuntimeError, match="illegal memory access"), torch.no_grad():
        model(x[:, :1], past_key_values=cache)


def test_decode_backend_auto_takes_the_pytorch_step_off_cuda(monkeypatch):
    model = liger.convert(tiny_teacher("llama"))
    assert model.config.decode_backend == "auto"
    spec = model.model.layers[0].self_attn.decode_spec
    assert spec.backend == "auto"
    # "auto" takes the kernels on Ampere-or-newer GPUs only: never on CPU tensors, not even under the interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _, cache = _model_cache(model.set_decoding("static"))
    q = torch.zeros(2, 1, 4, 16)
    assert not uses_fused_step(spec, None, None, None)
    assert not uses_fused_step(spec, q, q[:, :, :2], cache.layers[0].buffers)
    assert not model.model._fused_layers(torch.zeros(2, 1, model.config.hidden_size))


def test_split_fills_the_gpu_within_its_bounds(monkeypatch):
    """Programs per (sequence, KV head): about two per SM, a power of two, at most 8 and head_dim / 16; 1 off CUDA;
    the tests' override is clamped to head_dim / 4 columns a program."""
    monkeypatch.setattr(triton_decode, "SPLIT", None)
    monkeypatch.setattr(triton_decode, "_sm_counts", {"gpu": 132})
    gpu = SimpleNamespace(is_cuda=True, device="gpu")
    assert triton_decode._split(gpu, 16 * 3, 64) == 4  # SmolLM2 at batch 16: 48 heads, 264 wanted -> 4 (D/16)
    assert triton_decode._split(gpu, 1 * 3, 128) == 8  # batch 1, head dim 128: capped at 8
    assert triton_decode._split(gpu, 64 * 3, 64) == 2  # 192 heads: 264 programs want 2 each
    assert triton_decode._split(gpu, 256 * 8, 64) == 1
    assert triton_decode._split(gpu, 3, 16) == 1  # head dim 16: one column block of 16
    assert triton_decode._split(SimpleNamespace(is_cuda=False, device="cpu"), 3, 64) == 1
    monkeypatch.setattr(triton_decode, "SPLIT", 8)
    assert triton_decode._split(gpu, 3, 16) == 4  # (at least 4 state columns a program)


def test_window_programs_double_for_many_key_blocks_while_the_launch_fills_the_gpu(monkeypatch):
    """On CUDA the decode step gives the window more programs than the state while each would walk more than two
    key blocks and the launch stays within about two programs per SM: at batch 16 (48 KV heads of SmolLM2, 132
    SMs) the memory recipe (512 ring + 512 cached keys, 16 blocks of 64) keeps the state's 4 (8 would be 576
    programs: run R measured 4 faster), at batch 1 it gets 16; window512 (8 blocks) and Liger-GLA (4 blocks of 16)
    keep 4; SPLIT or WINDOW_SPLIT set, or off CUDA, the window takes what it is given."""
    from types import SimpleNamespace

    from liger.models import triton_decode

    monkeypatch.setattr(triton_decode, "SPLIT", None)
    monkeypatch.setattr(triton_decode, "WINDOW_SPLIT", None)
    monkeypatch.setattr(triton_decode, "_sm_counts", {"gpu": 132})
    gpu, cpu = SimpleNamespace(is_cuda=True, device="gpu"), SimpleNamespace(is_cuda=False, device="cpu")
    assert [triton_decode._window_split(gpu, 4, n, 3, 4) for n in (4, 8, 9, 16, 17, 100)] == [4, 4, 8, 8, 16, 16]
    assert triton_decode._window_split(gpu, 4, 16, 48, 4) == 4  # batch 16: 48 x (8 + 4) > 264
    assert triton_decode._window_split(gpu, 4, 16, 16, 4) == 8  # 16 x (8 + 4) <= 264; then two blocks each
    assert triton_decode._window_split(gpu, 4, 16, 48, 0) == 4  # no state programs: 48 x 8 > 264 still
    assert triton_decode._window_split(gpu, 2, 16, 24, 0) == 8  # 24 x 4, 24 x 8 <= 264; two blocks each
    assert triton_decode._window_split(cpu, 4, 16, 3, 4) == 4
    monkeypatch.setattr(triton_decode, "SPLIT", 2)
    assert triton_decode._window_split(gpu, 2, 16, 3, 2) == 2
    monkeypatch.setattr(triton_decode, "WINDOW_SPLIT", 8)
    assert triton_decode._window_split(cpu, 2, 1, 3, 2) == 8
