import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import liger
from liger.models.attention import LigerAttention
from liger.models.cache import LigerCache
from tests.conftest import VARIANTS, assert_close, tiny_teacher


def ids(B=2, T=20, seed=0, vocab=128):
    return torch.randint(3, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def left_padded(B=3, T=20, pads=(0, 5, 11), seed=0):
    x = ids(B, T, seed)
    mask = torch.ones(B, T, dtype=torch.long)
    for b, p in enumerate(pads):
        x[b, :p] = 0
        mask[b, :p] = 0
    return x, mask


def test_window_only_reproduces_teacher(family):
    teacher = tiny_teacher(family)
    model = liger.convert(teacher, linear_weight=0.0, window_weight=1.0, window_size=512)
    x = ids(T=40)
    with torch.no_grad():
        assert_close(model(x).logits, teacher(x).logits, 1e-5)


def test_window_only_reproduces_teacher_on_left_padded_batch(family):
    teacher = tiny_teacher(family)
    model = liger.convert(teacher, linear_weight=0.0, window_weight=1.0, window_size=512)
    x, mask = left_padded()
    with torch.no_grad():
        ours, theirs = model(x, attention_mask=mask).logits, teacher(x, attention_mask=mask).logits
    for b in range(3):
        real = mask[b].bool()
        assert_close(ours[b, real], theirs[b, real], 1e-5)


def test_conversion_reuses_every_teacher_weight_and_adds_none(family):
    teacher = tiny_teacher(family)
    x = ids()
    with torch.no_grad():
        before = teacher(x).logits
    model = liger.convert(teacher)
    t_params = dict(teacher.named_parameters())
    s_params = dict(model.named_parameters())
    assert t_params.keys() == s_params.keys()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in teacher.parameters())
    for name, p in t_params.items():
        assert torch.equal(p, s_params[name]), name
        assert p.data_ptr() != s_params[name].data_ptr(), f"{name} shares storage with the teacher"
    assert all(isinstance(layer.self_attn, LigerAttention) for layer in model.model.layers)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        after = teacher(x).logits
    assert torch.equal(before, after), "the teacher changed"


def test_family_quirks_are_kept():
    qwen3 = liger.convert(tiny_teacher("qwen3"))
    attn = qwen3.model.layers[0].self_attn
    assert attn.q_norm is not None and attn.k_norm is not None
    assert attn.q_proj.bias is None and attn.k_proj.bias is None
    qwen2 = liger.convert(tiny_teacher("qwen2")).model.layers[0].self_attn
    assert qwen2.q_proj.bias is not None and qwen2.v_proj.bias is not None and qwen2.q_norm is None


def test_default_liger_differs_from_teacher_and_is_finite():
    teacher = tiny_teacher("llama")
    model = liger.convert(teacher)
    x = ids(T=30)
    with torch.no_grad():
        out, ref = model(x).logits, teacher(x).logits
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() > 1e-3


def test_convert_from_path_equals_convert_from_model(tmp_path):
    teacher = tiny_teacher("qwen2")
    teacher.save_pretrained(tmp_path / "teacher")
    a = liger.convert(teacher, variant="hgrn2")
    b = liger.convert(tmp_path / "teacher", variant="hgrn2")
    x = ids()
    with torch.no_grad():
        assert torch.equal(a(x).logits, b(x).logits)


def test_unsupported_architecture_is_refused():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'.*llama.*mistral.*qwen2.*qwen3"):
        liger.convert(gpt2)


@pytest.mark.parametrize(
    "options,field",
    [
        (dict(window_size=0), "window_size"),
        (dict(variant="lstm"), "variant"),
        (dict(feature_map="tanh"), "feature_map"),
        (dict(gate_normalizer=-1.0), "gate_normalizer"),
        (dict(num_sink_tokens=-2), "num_sink_tokens"),
        (dict(gate_pool_size=5), "gate_pool_size"),
        (dict(full_attention_layers=[7]), "full_attention_layers"),
        (dict(linear_weight=0.0, window_weight=0.0), "linear_weight"),
        (dict(linear_backend="cuda"), "linear_backend"),
        (dict(decode_backend="cuda"), "LigerConfig.decode_backend must be one of auto, torch, triton"),
        (dict(windowsize=8), "windowsize"),
    ],
)
def test_invalid_options_name_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        liger.convert(tiny_teacher("llama"), **options)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model directory"):
        liger.convert(tmp_path / "nope")


@pytest.mark.parametrize("variant,options",
                         [("gla", {}), ("gsa", {}), ("gated_deltanet", {"delta_write_strength": 0.5})])
def test_save_and_load_round_trip_is_exact(tmp_path, variant, options):
    model = liger.convert(tiny_teacher("qwen3"), variant=variant, window_size=8, num_sink_tokens=2,
                          full_attention_layers=[1], **options)
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files), files
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(loaded) is liger.LigerForCausalLM
    assert loaded.config.variant == variant and loaded.config.full_attention_layers == [1]
    for name, value in options.items():
        assert getattr(loaded.config, name) == value, name
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    x = ids()
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


def _decode_stepwise(model, x, mask, prefill):
    """Prefill ``prefill`` tokens, then feed the rest one at a time through the cache."""
    with torch.no_grad():
        out = model(x[:, :prefill], attention_mask=mask[:, :prefill], use_cache=True)
        cache, logits = out.past_key_values, [out.logits]
        for t in range(prefill, x.shape[1]):
            step = model(x[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=cache, use_cache=True)
            logits.append(step.logits)
    return torch.cat(logits, 1), cache


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("sinks", [0, 3])
def test_cached_decoding_equals_full_forward(variant, sinks):
    model = liger.convert(tiny_teacher("llama"), variant=variant, window_size=4, num_sink_tokens=sinks)
    x, mask = left_padded(T=24, pads=(0, 5, 15))
    with torch.no_grad():
        full = model(x, attention_mask=mask).logits
    stepped, cache = _decode_stepwise(model, x, mask, prefill=9)
    assert isinstance(cache, LigerCache) and cache.get_seq_length() == 24
    for b in range(3):
        real = mask[b].bool()
        assert_close(stepped[b, real], full[b, real], 1e-5, msg=f"sequence {b}")


def test_cached_decoding_with_full_attention_layers():
    model = liger.convert(tiny_teacher("mistral"), window_size=4, full_attention_layers=[0])
    x, mask = left_padded(T=20)
    with torch.no_grad():
        full = model(x, attention_mask=mask).logits
    stepped, _ = _decode_stepwise(model, x, mask, prefill=7)
    for b in range(3):
        real = mask[b].bool()
        assert_close(stepped[b, real], full[b, real], 1e-5)


def test_full_attention_layers_keep_the_teachers_sliding_window():
    teacher = tiny_teacher("mistral", sliding_window=6)
    model = liger.convert(teacher, full_attention_layers=[0, 1])
    assert not any(isinstance(layer.self_attn, LigerAttention) for layer in model.model.layers)
    x = ids(T=20)
    with torch.no_grad():
        assert_close(model(x).logits, teacher(x).logits, 1e-6)


@pytest.mark.parametrize("variant", ["gla", "gsa", "mlstm"])
def test_generate_left_padded_batch_equals_each_prompt_alone(variant):
    model = liger.convert(tiny_teacher("qwen2"), variant=variant, window_size=4, num_sink_tokens=2)
    x, mask = left_padded(T=12, pads=(0, 3, 7))
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    batch = model.generate(x, attention_mask=mask, **kwargs)
    for b in range(3):
        real = mask[b].bool()
        alone = model.generate(x[b : b + 1, real], attention_mask=mask[b : b + 1, real], **kwargs)
        assert torch.equal(batch[b, 12:], alone[0, real.sum() :]), f"prompt {b}"


def test_generate_matches_greedy_decoding_without_cache():
    model = liger.convert(tiny_teacher("llama"), window_size=4)
    x = ids(B=1, T=6)
    out = model.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0)
    seq = x
    with torch.no_grad():
        for _ in range(8):
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


def test_decoding_memory_does_not_grow_beyond_the_window():
    model = liger.convert(tiny_teacher("llama"), window_size=8, num_sink_tokens=2)
    x = ids(B=2, T=200)
    mask = torch.ones_like(x)
    _, cache_short = _decode_stepwise(model, x[:, :30], mask[:, :30], prefill=20)
    _, cache_long = _decode_stepwise(model, x, mask, prefill=20)
    assert cache_long.get_seq_length() == 200
    assert cache_short.nbytes() == cache_long.nbytes() > 0


def test_beam_search_runs_and_reorders_the_cache():
    model = liger.convert(tiny_teacher("llama"), window_size=4)
    x = ids(B=2, T=6)
    out = model.generate(x, max_new_tokens=5, num_beams=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 11)


def test_gradient_checkpointing_gives_the_same_gradients():
    teacher = tiny_teacher("llama")
    x = ids(T=30)
    grads = []
    for checkpointing in (False, True):
        model = liger.convert(teacher).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        loss = model(x, labels=x).loss
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        assert_close(b, a, 1e-5)


def test_bfloat16_model_keeps_its_dtype():
    model = liger.convert(tiny_teacher("llama", dtype=torch.bfloat16))
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(ids()).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_teacher_mode_reproduces_the_teacher_from_the_same_weights(family):
    teacher = tiny_teacher(family, **({"sliding_window": 7} if family == "mistral" else {}))
    model = liger.convert(teacher)
    x, mask = left_padded(T=24)
    with torch.no_grad():
        theirs = teacher(x, attention_mask=mask).logits
        with model.teacher_mode():
            ours = model(x, attention_mask=mask, use_cache=False).logits
        after = model(x, attention_mask=mask).logits
    for b in range(3):
        real = mask[b].bool()
        assert_close(ours[b, real], theirs[b, real], 1e-5)
    assert (after - ours).abs().max() > 1e-3, "teacher_mode did not switch back"
