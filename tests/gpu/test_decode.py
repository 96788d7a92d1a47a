"""CUDA-graph decoding: the static decode step captured once per cache and replayed gives the eager path's
tokens and logits, keeps memory constant, and survives beam-search reordering.

The decode step is the same whatever ``linear_backend`` is; these models use the PyTorch ops for the eager
reference (prefill and eager steps), which keeps the tier's compile time down. The full fast path (fla
prefill, FlexAttention, then graph decoding) is checked in test_model_gpu.py."""

import pytest
import torch

import liger
from liger.models import compiling
from liger.models.decoding import CUDAGraphDecoder
from tests.conftest import VARIANTS, assert_close
from tests.gpu.conftest import gpu_teacher, left_padded, positions


def reference_model(family="llama", **options):
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
        with torch.no_grad():
            first = model(x[:, :12], attention_mask=mask[:, :12], position_ids=pos[:, :12], use_cache=True)
            cache, logits = first.past_key_values, []
            for t in range(12, 40):
                step = model(x[:, t : t + 1], attention_mask=mask[:, : t + 1], position_ids=pos[:, t : t + 1],
                             past_key_values=cache)
                logits.append(step.logits)
        out[mode] = (torch.cat(logits, 1), cache)
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
