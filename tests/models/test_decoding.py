"""The static decode step (fixed shapes, ring buffer written in place) against the eager decode path."""

import pytest
import torch

import liger
from liger.models.cache import LigerCache
from tests.conftest import VARIANTS, assert_close, tiny_teacher


def left_padded(B=3, T=24, pads=(0, 5, 15), seed=0, vocab=128):
    x = torch.randint(3, vocab, (B, T), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(B, T, dtype=torch.long)
    for b, p in enumerate(pads):
        x[b, :p] = 0
        mask[b, :p] = 0
    return x, mask


def decode(model, x, mask, prefill, mode):
    """Prefill, then one token at a time in the given decoding mode; returns (logits, cache)."""
    model.set_decoding(mode)
    with torch.no_grad():
        pos = positions(mask)
        out = model(x[:, :prefill], attention_mask=mask[:, :prefill], position_ids=pos[:, :prefill], use_cache=True)
        cache, logits = out.past_key_values, [out.logits]
        for t in range(prefill, x.shape[1]):
            step = model(x[:, t : t + 1], attention_mask=mask[:, : t + 1], position_ids=pos[:, t : t + 1],
                         past_key_values=cache)
            logits.append(step.logits)
    return torch.cat(logits, 1), cache


def positions(mask):
    return (mask.cumsum(1) - 1).clamp(min=0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("sinks", [0, 3])
def test_static_step_equals_eager_step(variant, sinks):
    model = liger.convert(tiny_teacher("llama"), variant=variant, window_size=5, num_sink_tokens=sinks)
    x, mask = left_padded()
    mask[1, 17] = 0  # a padding token in the middle of decoding
    eager, cache_e = decode(model, x, mask, 9, "eager")
    static, cache_s = decode(model, x, mask, 9, "static")
    for b in range(3):
        real = mask[b].bool()
        assert_close(static[b, real], eager[b, real], 1e-5, msg=f"sequence {b}")
    assert cache_s.get_seq_length() == cache_e.get_seq_length() == 24
    for a, b in zip(cache_s.layers, cache_e.layers):
        for name in ("ring_k", "ring_v", "ring_valid", "sink_k", "sink_pos", "sink_valid", "real_seen", "seen_t"):
            ta, tb = getattr(a.buffers, name), getattr(b.buffers, name)
            assert (ta is None) == (tb is None), name
            if ta is not None:
                assert_close(ta.double(), tb.double(), 1e-6, atol=1e-6, msg=name)
        for sa, sb in zip(a.state, b.state):
            assert_close(sa, sb, 1e-5)


def test_static_step_equals_full_forward_with_qwen3_and_grouped_heads():
    model = liger.convert(tiny_teacher("qwen3"), window_size=3, num_sink_tokens=2)
    x, mask = left_padded(T=20, pads=(0, 2, 9))
    with torch.no_grad():
        full = model(x, attention_mask=mask, position_ids=positions(mask)).logits
    static, _ = decode(model, x, mask, 4, "static")
    for b in range(3):
        real = mask[b].bool()
        assert_close(static[b, real], full[b, real], 1e-5)


def test_static_step_with_the_sum_normaliser_equals_full_forward():
    model = liger.convert(tiny_teacher("mistral"), linear_normalizer="sum", window_size=4, num_sink_tokens=1)
    x, mask = left_padded(T=20, pads=(0, 2, 9))
    with torch.no_grad():
        full = model(x, attention_mask=mask, position_ids=positions(mask)).logits
    for mode in ("eager", "static"):
        got, _ = decode(model, x, mask, 6, mode)
        real = mask.bool()
        assert_close(got[real], full[real], 1e-5, msg=mode)


@pytest.mark.parametrize("window", [1, 2, 64])
def test_static_step_for_short_and_long_windows(window):
    model = liger.convert(tiny_teacher("llama"), window_size=window, num_sink_tokens=1)
    x, mask = left_padded(T=16, pads=(0, 3, 6))
    eager, _ = decode(model, x, mask, 5, "eager")
    static, _ = decode(model, x, mask, 5, "static")
    real = mask.bool()
    assert_close(static[real], eager[real], 1e-5)


@pytest.mark.parametrize("variant", ["gla", "gsa", "mlstm"])
def test_generate_static_gives_the_same_tokens_as_eager(variant):
    model = liger.convert(tiny_teacher("qwen2"), variant=variant, window_size=4, num_sink_tokens=2)
    x, mask = left_padded(T=12, pads=(0, 3, 7))
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    eager = model.set_decoding("eager").generate(x, attention_mask=mask, **kwargs)
    static = model.set_decoding("static").generate(x, attention_mask=mask, **kwargs)
    assert torch.equal(static, eager)


def test_beam_search_static_gives_the_same_tokens_as_eager():
    model = liger.convert(tiny_teacher("llama"), window_size=4, num_sink_tokens=1)
    x = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(3))
    kwargs = dict(max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=0)
    eager = model.set_decoding("eager").generate(x, **kwargs)
    static = model.set_decoding("static").generate(x, **kwargs)
    assert torch.equal(static, eager)


def test_cache_buffers_keep_their_addresses_while_decoding():
    model = liger.convert(tiny_teacher("llama"), window_size=4, num_sink_tokens=2)
    x, mask = left_padded(T=14)
    model.set_decoding("static")
    with torch.no_grad():
        cache = model(x[:, :6], attention_mask=mask[:, :6], use_cache=True).past_key_values
        signature = cache.signature()
        for t in range(6, 14):
            model(x[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=cache)
        cache.reorder_cache(torch.tensor([2, 0, 1]))
        # a second prefill-style call (several tokens) writes the same buffers too
        model(x[:, :3], attention_mask=torch.ones(3, 17, dtype=torch.long), past_key_values=cache)
    assert cache.signature() == signature


def test_decoding_modes_are_validated():
    model = liger.convert(tiny_teacher("llama"), window_size=4)
    with pytest.raises(ValueError, match="decoding mode"):
        model.set_decoding("graph")
    with pytest.raises(RuntimeError, match="CUDA"):
        model.set_decoding("cuda_graph")
        decode(model, *left_padded(T=8), 4, "cuda_graph")
    hybrid = liger.convert(tiny_teacher("llama"), full_attention_layers=[0])
    with pytest.raises(ValueError, match="full attention"):
        hybrid.set_decoding("static")


def test_auto_decoding_on_cpu_is_eager_and_static_cache_is_reported():
    model = liger.convert(tiny_teacher("llama"), window_size=4)
    assert model.decoding == "auto"
    x, mask = left_padded(T=8)
    with torch.no_grad():
        cache = model(x, attention_mask=mask, use_cache=True).past_key_values
    assert isinstance(cache, LigerCache) and cache.is_static and cache.decoder is None
    hybrid = liger.convert(tiny_teacher("llama"), full_attention_layers=[1])
    assert not LigerCache(hybrid.config).is_static


def test_a_captured_decoder_matches_its_cache_by_bundle_as_by_signature():
    """CUDAGraphDecoder.matches (each layer's buffer bundle by identity, ~30 checks a token) agrees with the
    signature of every buffer's address, shape and dtype (180 buffers for SmolLM2, 200 us a token on a CPU): both
    hold through decoding and an in-place beam reorder, both fail once buffers are replaced or for another cache."""
    import weakref

    from liger.models.decoding import CUDAGraphDecoder

    model = liger.convert(tiny_teacher("llama"), window_size=4, num_sink_tokens=2, global_cache_size=3)
    x, mask = left_padded(T=14)
    model.set_decoding("static")
    decoder = object.__new__(CUDAGraphDecoder)  # (the capture itself needs CUDA: only what matches compares)

    def both(cache):
        return decoder.matches(cache), decoder.matches_exactly(cache)

    with torch.no_grad():
        cache = model(x[:, :6], attention_mask=mask[:, :6], use_cache=True).past_key_values
        decoder._cache = weakref.ref(cache)
        decoder._remember(cache)
        for t in range(6, 10):
            model(x[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=cache)
        cache.reorder_cache(torch.tensor([2, 0, 1]))
        assert both(cache) == (True, True)
        other = model(x[:, :6], attention_mask=mask[:, :6], use_cache=True).past_key_values
        assert both(other) == (False, False)
        cache.batch_select_indices(torch.tensor([0, 1, 2]))  # a new tensor for every buffer
        assert both(cache) == (False, False)
