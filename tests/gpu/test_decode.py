"""CUDA-graph decoding: the static decode step captured once per cache and replayed gives the eager path's
tokens and logits, keeps memory constant, and survives beam-search reordering.

The decode step is the same whatever ``linear_backend`` is; these models use the PyTorch ops for the eager
reference (prefill and eager steps), which keeps the tier's compile time down, and the PyTorch static step
(``decode_backend="torch"``) unless a test names the fused one. The full fast path (fla
prefill, FlexAttention, then graph decoding) is checked in test_model_gpu.py."""

import pytest
import torch

import liger
from liger.models import compiling
from liger.models.decoding import CUDAGraphDecoder
from tests.conftest import VARIANTS, assert_close, cache_tensors
from tests.gpu.conftest import gpu_teacher, left_padded, positions, prefill_then_decode


def reference_model(family="llama", **options):
    # the PyTorch static step unless a test asks for the fused one ("auto" takes the fused step on these GPUs)
    options.setdefault("decode_backend", "torch")
    return liger.convert(gpu_teacher(family), linear_backend="torch", **options)


def generate(model, mode, compile=True, **kwargs):
    model.set_decoding(mode, compile=compile)
    return model.generate(**kwargs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_graph_generate_gives_the_eager_tokens(variant):
    model = reference_model("qwen2", variant=variant, window_size=6, num_sink_tokens=2)
    x, mask = left_padded(T=24, pads=(0, 5, 11))
    kwargs = dict(input_ids=x, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0)
    eager = generate(model, "eager", **kwargs)
    graph = generate(model, "cuda_graph", compile=False, **kwargs)
    assert torch.equal(graph, eager)


@pytest.mark.parametrize("variant", ["gla", "gsa"])
def test_compiled_cuda_graph_generate_gives_the_eager_tokens(variant):
    model = reference_model(variant=variant, window_size=6, num_sink_tokens=2)
    x, mask = left_padded(T=24, pads=(0, 5, 11))
    kwargs = dict(input_ids=x, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0)
    eager = generate(model, "eager", **kwargs)
    graph = generate(model, "auto", **kwargs)  # auto = CUDA graph with the compiled step on CUDA
    assert torch.equal(graph, eager)
    assert not compiling.fallbacks().get("decode_step"), "the decode step fell back to eager"


@pytest.mark.parametrize("compile", [False, True])
def test_graph_logits_match_eager_logits_step_by_step(compile):
    model = reference_model(window_size=5, num_sink_tokens=3)
    x, mask = left_padded(T=40)
    mask[2, 30] = 0  # a padding token while decoding
    pos = positions(mask)
    out = {}
    for mode in ("eager", "cuda_graph"):
        model.set_decoding(mode, compile=compile)
        out[mode] = prefill_then_decode(model, x, mask, pos)
    assert isinstance(out["cuda_graph"][1].decoder, CUDAGraphDecoder)
    real = mask[:, 12:].bool()
    assert_close(out["cuda_graph"][0][real], out["eager"][0][real], 1e-4)
    for a, b in zip(out["cuda_graph"][1].buffers(), out["eager"][1].buffers()):
        assert_close(a.double(), b.double(), 1e-4, atol=1e-6)


def test_beam_search_with_cuda_graph_gives_the_eager_tokens():
    model = reference_model(window_size=4, num_sink_tokens=1)
    x = torch.randint(3, 256, (2, 10), generator=torch.Generator().manual_seed(5)).cuda()
    kwargs = dict(input_ids=x, max_new_tokens=8, num_beams=3, do_sample=False, pad_token_id=0)
    assert torch.equal(generate(model, "cuda_graph", compile=False, **kwargs), generate(model, "eager", **kwargs))


def test_graph_decoding_memory_is_constant():
    model = reference_model(window_size=8)
    x, mask = left_padded(T=16)
    token = x[:, :1]
    with torch.no_grad():
        cache = model(x, attention_mask=mask, use_cache=True).past_key_values
        model(token, past_key_values=cache)  # captures
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        for _ in range(200):
            model(token, past_key_values=cache)
        torch.cuda.synchronize()
        after = torch.cuda.memory_allocated()
    assert cache.get_seq_length() == 16 + 201
    assert after == before, f"memory grew by {after - before} bytes over 200 tokens"


def test_decoding_many_caches_in_turn_does_not_grow_memory():
    """A new CUDA stream per captured decoder left a cuBLAS workspace behind each time (32 MiB on Hopper):
    a process that decoded N caches one after another held N workspaces (the bench's 'decode memory drift')."""
    model = reference_model(window_size=8)

    def decode_one(seed):
        x = torch.randint(3, 256, (4, 16), generator=torch.Generator().manual_seed(seed)).cuda()
        with torch.no_grad():
            cache = model(x, use_cache=True).past_key_values
            for _ in range(3):
                model(x[:, :1], past_key_values=cache)
        assert isinstance(cache.decoder, CUDAGraphDecoder)
        cache.drop_decoder()

    decode_one(0)  # the first capture creates the warm-up and capture streams (and their workspaces)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for seed in range(1, 5):
        decode_one(seed)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


def test_each_cache_gets_its_own_graph_and_a_new_batch_size_recaptures():
    model = reference_model(window_size=8)
    with torch.no_grad():
        results = []
        for B in (2, 2, 3):
            x = torch.randint(3, 256, (B, 12), generator=torch.Generator().manual_seed(B)).cuda()
            cache = model(x, use_cache=True).past_key_values
            model(x[:, :1], past_key_values=cache)
            results.append(cache.decoder)
    assert all(isinstance(d, CUDAGraphDecoder) for d in results)
    assert results[0] is not results[1] and results[2].input_ids.shape[0] == 3


def _layer_cache(B, H, D, W, S, T, pads, columns, dtype, seed, NG=0):
    """A layer cache prefilled as the model does it (window_inputs, then commit), on CUDA; with ``NG`` global-cache
    places, members with scores about the size of the recall errors (two tied at the lowest, an empty slot)."""
    from liger.models.cache import LigerLayerCache

    g = torch.Generator().manual_seed(seed)
    cache = LigerLayerCache(W, S, NG)
    k, v = (torch.randn(B, T, H, D, generator=g).to("cuda", dtype) for _ in range(2))
    valid = torch.ones(B, T, dtype=torch.bool)
    for i, p in enumerate(pads):
        valid[i, :p] = False
    keys, values, key_valid, sinks = cache.window_inputs(k, v, valid.cuda())
    state = ((torch.randn(B, H, D, columns, generator=g).abs() * 0.2).cuda(),)
    klin = members = None
    if NG:
        klin = torch.cat([cache.ring_k_lin(), torch.randn(B, T, H, D, generator=g).to("cuda", dtype)], 1)
        score = D ** 0.5 * (0.7 + 0.6 * torch.rand(B, NG, H, generator=g))
        score[:, 0] = score[:, 1] = 0.5 * D ** 0.5
        index = torch.stack([torch.randperm(max(100, 2 * NG), generator=g)[:NG] for _ in range(B * H)])
        index = index.view(B, H, NG)
        index = index.transpose(1, 2).contiguous()
        score[0, -1], index[0, -1] = float("-inf"), -1
        mk, mv = (torch.randn(B, NG, H, D, generator=g) for _ in range(2))
        mk[0, -1] = mv[0, -1] = 0
        members = (mk.to("cuda", dtype), mv.to("cuda", dtype), score.cuda(), index.cuda())
    cache.commit(keys, values, key_valid, sinks, state, klin, members)
    return cache


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("case", [
    # B, HQ, H, D, W, S sinks, T prefill, padded prefixes, variant options, linear/window weights, global cache size:
    # a wrapped ring with sinks and grouped heads (the benchmarked shape), a ring not yet full with a head dim of 128,
    # a head dim that is not a power of two; the gated delta rule (β from the key, a constant β); the global cache
    # with sinks and grouped heads, without the recurrent branch's output, with the delta rule, with a window of 1
    (4, 8, 2, 64, 64, 4, 100, (0, 5, 30, 100), {}, 0.5, 0.5, 0),
    (2, 4, 4, 128, 16, 0, 9, (0, 3), dict(linear_normalizer="sum"), 0.5, 0.5, 0),
    (3, 6, 2, 24, 8, 2, 20, (0, 4, 20), dict(variant="mlstm", feature_map="identity"), 0.5, 0.5, 0),
    (4, 8, 2, 64, 16, 2, 40, (0, 5, 30, 40), dict(variant="gated_deltanet"), 0.5, 0.5, 0),
    (2, 4, 4, 128, 8, 0, 20, (0, 3), dict(variant="gated_deltanet", delta_write_strength=0.7), 0.3, 0.7, 0),
    (4, 8, 2, 64, 8, 2, 30, (0, 5, 22, 30), dict(global_cache_size=1), 0.5, 0.5, 8),
    (2, 4, 2, 64, 6, 2, 20, (0, 16), dict(global_cache_size=1, feature_map="relu"), 0.0, 1.0, 4),
    (3, 6, 2, 128, 8, 1, 20, (0, 4, 20), dict(global_cache_size=1, variant="gated_deltanet"), 0.5, 0.5, 4),
    (2, 4, 2, 64, 1, 2, 5, (0, 5), dict(global_cache_size=1, linear_normalizer="sum"), 0.5, 0.5, 3),
    # the memory recipe's shape: a 512-key window, 4 sinks and 512 global members, window-only
    (2, 6, 2, 64, 512, 4, 700, (0, 30), dict(global_cache_size=1), 0.0, 1.0, 512),
])
# programs per KV head: as many as fill the GPU, one, and (the memory recipe's shape only) the 4 state + 4 window
# programs it takes at batch 16, four key blocks a window program (at this test's batch 2 the launcher takes 8)
@pytest.mark.parametrize("split", [None, 1, (4, 4)])
def test_fused_decode_step_matches_the_pytorch_step(dtype, tol, case, split, monkeypatch):
    from types import SimpleNamespace

    from liger.models import triton_decode
    from liger.models.attention import decode_spec, decode_step_core, uses_fused_step
    from liger.models.variants import VARIANT_CLASSES

    B, HQ, H, D, W, S, T, pads, opts, lw, ww, NG = case
    if isinstance(split, tuple):
        if NG < 512:
            pytest.skip("the batch-16 split is checked on the memory recipe's shape")
        split, window_split = split
        monkeypatch.setattr(triton_decode, "WINDOW_SPLIT", window_split)
    monkeypatch.setattr(triton_decode, "SPLIT", split)
    options = dict(variant="gla", feature_map="softmax", gate_normalizer=16.0, linear_scale=1.0, gate_pool_size=None,
                   hgrn2_lower_bound=0.0, gsa_num_slots=None, linear_normalizer="none", global_cache_size=0,
                   delta_write_strength=None)
    options.update(opts)
    rec = VARIANT_CLASSES[options["variant"]](SimpleNamespace(**options))
    columns = D if options["variant"] == "gated_deltanet" else D + int(rec.normaliser_column)
    caches = {name: _layer_cache(B, H, D, W, S, T, pads, columns, dtype, seed=1, NG=NG) for name in ("torch", "triton")}
    g = torch.Generator().manual_seed(2)
    for step in range(5):
        q, q_lin = (torch.randn(B, 1, HQ, D, generator=g).to("cuda", dtype) for _ in range(2))
        k, v, k_lin = (torch.randn(B, 1, H, D, generator=g).to("cuda", dtype) for _ in range(3))
        angle = torch.randn(B, 1, D // 2, generator=g) * 3
        cos, sin = (torch.cat([f(angle)] * 2, -1).to("cuda", dtype) for f in (torch.cos, torch.sin))
        valid = (torch.rand(B, generator=g) > 0.3).cuda()
        out = {}
        for name, cache in caches.items():
            spec = decode_spec(rec, D ** -0.5, lw, ww, lw != 0 or NG > 0, name)
            assert uses_fused_step(spec, q, v, cache.buffers) == (name == "triton")
            out[name] = decode_step_core(spec, q, k, v, q_lin, k_lin, cos, sin, valid, cache.buffers)
        assert out["triton"].dtype == dtype
        assert_close(out["triton"].float(), out["torch"].float(), tol, msg=f"step {step} output")
        a, b = caches["triton"].buffers, caches["torch"].buffers
        for field in b._fields:
            x, y = getattr(a, field), getattr(b, field)
            if y is None:
                continue
            if field == "state":
                x, y = x[0], y[0]
            if field in ("global_k", "global_v", "global_score", "global_index") and dtype != torch.float32:
                # in bf16 a leaver whose score is within rounding of the worst member's may be merged by one step
                # and not the other: compare the members both hold (same position in the same slot)
                same = a.global_index == b.global_index
                assert same.float().mean() >= 0.9, (step, field)
                x, y = x[same], y[same]
            if field == "global_score":
                assert torch.equal(x.isinf(), y.isinf()), (step, field)
                x, y = x[y.isfinite()], y[y.isfinite()]
            if y.dtype in (torch.bool, torch.long):
                assert torch.equal(x, y), (step, field)
            else:
                assert_close(x.float(), y.float(), tol, msg=f"step {step} {field}")


@pytest.mark.parametrize("options", [
    {},
    dict(variant="gated_deltanet", global_cache_size=4),
    dict(global_cache_size=4, linear_weight=0.0, window_weight=1.0),
    dict(global_cache_size=4, global_cache_pool=2, linear_weight=0.0, window_weight=1.0),
])
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_graph_decoding_with_the_fused_step_matches_eager(compile, options, monkeypatch):
    from liger.models import attention

    calls = []
    fused = attention.fused_decode_step
    monkeypatch.setattr(attention, "fused_decode_step", lambda *a: calls.append(1) or fused(*a))
    from liger.models import modeling_liger

    layer_calls = []
    fused_layers = modeling_liger.decode_layers
    monkeypatch.setattr(modeling_liger, "decode_layers", lambda *a: layer_calls.append(1) or fused_layers(*a))
    model = reference_model(window_size=5, num_sink_tokens=3, decode_backend="triton", **options)
    x, mask = left_padded(T=40)
    mask[2, 30] = 0  # a padding token while decoding
    pos = positions(mask)
    out = {}
    for mode in ("eager", "cuda_graph"):
        model.set_decoding(mode, compile=compile)
        out[mode] = prefill_then_decode(model, x, mask, pos)
    assert isinstance(out["cuda_graph"][1].decoder, CUDAGraphDecoder)
    assert calls, "the captured step did not take the fused kernel"
    assert layer_calls, "the captured step did not run its layers through triton_layer.decode_layers"
    real = mask[:, 12:].bool()
    assert_close(out["cuda_graph"][0][real], out["eager"][0][real], 1e-4)
    # (the eager prefill writes the global cache's members in rank order and the step replaces in place: compared
    # in token order)
    for a, b in zip(cache_tensors(out["cuda_graph"][1]), cache_tensors(out["eager"][1])):
        finite = b.isfinite()  # (the global cache's empty slots score -inf)
        assert torch.equal(a.isfinite(), finite)
        assert_close(a[finite].double(), b[finite].double(), 1e-4, atol=1e-6)


def test_generate_with_the_fused_step_in_bf16():
    """A bf16 model generating through CUDA graphs with decode_backend="triton": the logits of the first decoded
    token close to the PyTorch step's (the kernel rounds once where the PyTorch step rounds each op to bf16; later
    tokens may part on near-ties)."""
    teacher = gpu_teacher(dtype=torch.bfloat16)
    x, mask = left_padded(T=24, pads=(0, 5, 11))
    kwargs = dict(input_ids=x, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0,
                  output_logits=True, return_dict_in_generate=True)
    out = {}
    for backend in ("torch", "triton"):
        model = liger.convert(teacher, linear_backend="torch", window_size=6, num_sink_tokens=2,
                              decode_backend=backend)
        out[backend] = generate(model, "cuda_graph", compile=False, **kwargs)
    assert torch.equal(out["triton"].sequences[:, :25], out["torch"].sequences[:, :25])  # (from the prefill)
    assert_close(out["triton"].logits[1].float(), out["torch"].logits[1].float(), 2e-2)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="programmatic dependent launch needs a Hopper-or-newer GPU")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("options", [
    {},
    dict(global_cache_size=4, global_cache_pool=2, linear_weight=0.0, window_weight=1.0),
])
def test_dependent_launches_decode_as_the_stream_ordered_kernels(options, dtype, tol, monkeypatch):
    """decode_pdl: the captured decode step with every kernel of the layers launched with programmatic dependent
    launch (and o_proj/down_proj on the Triton projection kernel) gives the logits and cache of the same step
    without it, step by step, left padding and a padding token while decoding included."""
    from liger.models import attention, triton_layer

    launches = []
    for module in (attention, triton_layer):
        real = module.linear
        monkeypatch.setattr(module, "linear",
                            lambda x, m, pdl=False, real=real: launches.append(pdl) or real(x, m, pdl))
    teacher = gpu_teacher(dtype=dtype)
    x, mask = left_padded(T=40)
    mask[2, 30] = 0
    pos = positions(mask)
    out = {}
    for pdl in (False, True):
        model = liger.convert(teacher, linear_backend="torch", window_size=5, num_sink_tokens=3,
                              decode_backend="triton", decode_pdl=pdl, **options)
        model.set_decoding("cuda_graph", compile=False)
        out[pdl] = prefill_then_decode(model, x, mask, pos)
    assert isinstance(out[True][1].decoder, CUDAGraphDecoder)
    assert launches and all(launches), "o_proj/down_proj did not take the dependent-launch kernel"
    real = mask[:, 12:].bool()
    assert_close(out[True][0][real].float(), out[False][0][real].float(), tol)
    for a, b in zip(cache_tensors(out[True][1]), cache_tensors(out[False][1])):
        finite = b.isfinite()
        assert torch.equal(a.isfinite(), finite)
        assert_close(a[finite].double(), b[finite].double(), tol, atol=1e-6)
