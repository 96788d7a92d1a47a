"""The global cache (global_cache.py): block selection against the per-query reference, the decode merge, and
the model with the cache against a token-by-token transcription, cached decoding and save/load."""

import pytest
import torch
import torch.nn.functional as F

import liger
from liger.models.attention import apply_rope
from liger.models.gla_ops import naive_recurrent_gla
from liger.models.global_cache import block_visibility, merge_leaver_, naive_visibility, recall_error
from tests.conftest import assert_close, cache_tensors, tiny_teacher
from tests.models.test_decoding import decode, left_padded, positions


def random_candidates(B, H, P, T, seed, ties=True, dead=0.2):
    g = torch.Generator().manual_seed(seed)
    N = P + T
    score = torch.randn(B, H, N, generator=g, dtype=torch.float64)
    if ties:  # repeated scores exercise the tie-break (earlier token wins)
        score = (score * 2).round() / 2
    score[torch.rand(B, H, N, generator=g) < dead] = float("-inf")
    # earlier members have distinct indices below the positional candidates', in any order
    prev_index = torch.stack([torch.randperm(P, generator=g) for _ in range(B * H)]).view(B, H, P) - P
    index = torch.cat([prev_index, torch.arange(T).expand(B, H, T)], -1)
    entry = torch.cat([torch.zeros(P, dtype=torch.long), torch.arange(1, T + 1)])
    return score, index, entry


def dense_from_blocks(sel, P, T, bq):
    """The block selection as a dense ``[B, H, T, N]`` visibility."""
    B, H, nb, G = sel.base.shape
    N = P + nb * bq
    visible = torch.zeros(B, H, nb * bq, N + 1, dtype=torch.bool)  # column N: empty slots
    for n in range(nb):
        for i in range(bq):
            t = n * bq + i
            visible[:, :, t].scatter_(-1, sel.base[:, :, n], sel.visible_base[:, :, n, i])
            visible[:, :, t, P + n * bq:P + (n + 1) * bq] |= sel.visible_entrants[:, :, n, i]
    return visible[:, :, :T, :N]


@pytest.mark.parametrize("P,T,G,bq", [(0, 37, 4, 8), (5, 40, 5, 16), (3, 9, 6, 4), (4, 64, 1, 64), (0, 20, 30, 5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_block_selection_equals_the_per_query_reference(P, T, G, bq, seed):
    nb = -(-T // bq)
    score, index, entry = random_candidates(2, 3, P, nb * bq, seed)
    score[..., P + T:] = float("-inf")  # positions past the last query
    sel = block_visibility(score, index, P, G, bq)
    ref = naive_visibility(score, index, entry, G, T)
    got = dense_from_blocks(sel, P, T, bq)
    assert torch.equal(got, ref)
    # the members after the last candidate: the top G of everything
    final = naive_visibility(score, index, entry, G, P + nb * bq + 1)[:, :, -1]
    kept = torch.zeros(*final.shape[:2], final.shape[-1] + 1, dtype=torch.bool)  # last column: empty places
    kept.scatter_(-1, sel.final, sel.final_valid)
    assert torch.equal(kept[..., :-1], final)


def test_block_selection_in_groups_of_blocks_equals_one_group():
    score, index, _ = random_candidates(1, 2, 4, 96, seed=3)
    whole = block_visibility(score, index, 4, 5, 8)
    grouped = block_visibility(score, index, 4, 5, 8, max_elements=300)
    for name in ("base", "visible_base", "visible_entrants", "final", "final_valid"):
        assert torch.equal(getattr(whole, name), getattr(grouped, name)), name


def test_decode_merge_keeps_the_top_members():
    B, H, G, D, T = 2, 3, 4, 2, 30
    score, index, entry = random_candidates(B, H, 0, T, seed=4)
    k_buf, v_buf = torch.zeros(B, G, H, D), torch.zeros(B, G, H, D)
    score_buf = torch.full((B, G, H), float("-inf"))
    index_buf = torch.full((B, G, H), -1, dtype=torch.long)
    ref = naive_visibility(score, index, entry, G, T + 1)
    for t in range(T):
        k = torch.full((B, H, D), float(t))
        merge_leaver_(k_buf, v_buf, score_buf, index_buf, k, -k, score[..., t].float(), torch.full((B,), t))
        members = torch.zeros(B, H, T + 1, dtype=torch.bool)  # last column: empty places (index -1)
        ok = score_buf > float("-inf")
        members.scatter_(-1, index_buf.transpose(1, 2) % (T + 1), ok.transpose(1, 2))
        assert torch.equal(members[..., :T], ref[:, :, t + 1]), f"after token {t}"
        assert torch.equal(k_buf[..., 0][ok], index_buf[ok].float())  # keys moved with their tokens
        assert torch.equal(v_buf[..., 0][ok], -index_buf[ok].float())


def reference_layer(attn, x, cos, sin, G, P=0):
    """Token-by-token transcription of a Liger-GLA layer with a global cache (linear branch + window + global
    members, softmax over window ∪ global), float64, one sequence without padding. With a pool of ``P``, the
    token that left the window P queries ago joins the competition, scored by the largest error of the 2P + 1
    tokens that left around it."""
    T = x.shape[1]
    H, D, W = attn.num_key_value_heads, attn.head_dim, attn.window_size
    HQ = attn.num_heads
    q = attn.q_proj(x).view(1, T, HQ, D)
    k = attn.k_proj(x).view(1, T, H, D)
    v = attn.v_proj(x).view(1, T, H, D)
    q_rot, k_rot = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    gate = F.logsigmoid(k) / 16
    ones = torch.ones_like(v[..., :1])
    o_rec, _ = naive_recurrent_gla(q.softmax(-1), k.softmax(-1), v, gk=gate)
    # self-recall read of token i against S_{i+W-1}: the recurrence queried with φ(k_i) at position i + W - 1
    shifted = F.pad(k, (0, 0, 0, 0, W - 1, 0))[:, :T]
    o_read, _ = naive_recurrent_gla(shifted.softmax(-1), k.softmax(-1), torch.cat([v, ones], -1), gk=gate)
    read = o_read[..., :-1] / o_read[..., -1:]
    err = recall_error(F.pad(v, (0, 0, 0, 0, W - 1, 0))[:, :T], read)[0]  # [T, H]: token t - W + 1
    out = torch.zeros(T, HQ, D, dtype=x.dtype)
    for h in range(H):
        members = []
        for t in range(T):
            window = list(range(max(0, t - W + 1), t + 1))
            keys = window + [i for _, i in members]
            for j in range(h * (HQ // H), (h + 1) * (HQ // H)):
                s = torch.stack([q_rot[0, t, j] @ k_rot[0, i, h] for i in keys]) * attn.scaling
                out[t, j] = s.softmax(0) @ v[0, keys, h]
            leaver = t - W + 1 - P  # leaves the window after query t - P, decided after query t
            if leaver >= 0:
                around = [float(err[u, h]) for u in range(t - 2 * P, t + 1) if u - W + 1 >= 0]
                members.append((-max(around), leaver))
                members = sorted(members)[:G]
    o = 0.5 * o_rec[0] + 0.5 * out
    return attn.o_proj(o.reshape(1, T, HQ * D).to(x.dtype))


@pytest.mark.parametrize("pool", [0, 1, 3])
def test_layer_equals_token_by_token_transcription(pool):
    teacher = tiny_teacher("llama", dtype=torch.float64)
    model = liger.convert(teacher, window_size=4, global_cache_size=3, global_cache_pool=pool,
                          linear_backend="torch")
    attn = model.model.layers[0].self_attn
    x = torch.randn(1, 29, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cos, sin = model.model.rotary_emb(x, torch.arange(29)[None])
    with torch.no_grad():
        got, _ = attn(x, (cos, sin))
        ref = reference_layer(attn, x, cos, sin, 3, pool)
        plain = reference_layer(attn, x, cos, sin, 3) if pool else ref
    assert_close(got, ref, 1e-10)
    if pool:  # the pool changes which tokens are kept
        assert (plain - ref).abs().max() > 1e-6


@pytest.mark.parametrize("variant,pool", [("gla", 0), ("gsa", 0), ("mlstm", 0), ("hgrn2", 0), ("mamba2", 0),
                                          ("gated_deltanet", 0), ("gla", 2), ("gated_deltanet", 1)])
@pytest.mark.parametrize("sinks", [0, 2])
def test_cached_decoding_equals_full_forward(variant, pool, sinks):
    model = liger.convert(tiny_teacher("llama", dtype=torch.float64), variant=variant, window_size=4,
                          num_sink_tokens=sinks, global_cache_size=3, global_cache_pool=pool)
    x, mask = left_padded(T=26, pads=(0, 4, 11))
    with torch.no_grad():
        full = model(x, attention_mask=mask, position_ids=positions(mask)).logits
    caches = {}
    for mode in ("eager", "static"):
        got, caches[mode] = decode(model, x, mask, 9, mode)
        for b in range(3):
            real = mask[b].bool()
            assert_close(got[b, real], full[b, real], 1e-9, msg=f"{mode}, sequence {b}")
    # the same members (in their token order: the slots they sit in may differ), states, rings and sinks
    for a, b in zip(cache_tensors(caches["static"]), cache_tensors(caches["eager"])):
        finite = b.isfinite()  # (empty slots score -inf)
        assert torch.equal(a.isfinite(), finite)
        assert_close(a[finite].double(), b[finite].double(), 1e-9, atol=1e-12)


@pytest.mark.parametrize("pool", [0, 2])
def test_window_of_one_with_sinks_decodes_as_the_full_forward(pool):
    # a window of 1: the decoded token leaves the window at once, and a token that becomes a sink on this step
    # never competes (sequence 2 has no real token in the prefill, so its first decoded tokens become sinks)
    model = liger.convert(tiny_teacher("llama", dtype=torch.float64), window_size=1, num_sink_tokens=2,
                          global_cache_size=2, global_cache_pool=pool)
    x, mask = left_padded(T=18, pads=(0, 4, 11))
    with torch.no_grad():
        full = model(x, attention_mask=mask, position_ids=positions(mask)).logits
    for mode in ("eager", "static"):
        got, cache = decode(model, x, mask, 9, mode)
        real = mask.bool()
        assert_close(got[real], full[real], 1e-9, msg=mode)
        sinks = cache.layers[0].buffers
        is_sink = (sinks.sink_valid[:, :, None, None] & (sinks.sink_pos[:, :, None, None]
                                                         == sinks.global_index[:, None])).any(1)
        assert not is_sink.any(), mode


@pytest.mark.parametrize("pool", [0, 2])
def test_prefill_in_two_calls_equals_one_and_the_cache_matches(pool):
    model = liger.convert(tiny_teacher("qwen3", dtype=torch.float64), window_size=5, global_cache_size=4,
                          global_cache_pool=pool)
    x, mask = left_padded(T=40, pads=(0, 3, 8))
    pos = positions(mask)
    with torch.no_grad():
        full = model(x, attention_mask=mask, position_ids=pos, use_cache=True)
        first = model(x[:, :17], attention_mask=mask[:, :17], position_ids=pos[:, :17], use_cache=True)
        second = model(x[:, 17:], attention_mask=mask, position_ids=pos[:, 17:], past_key_values=first.past_key_values)
    real = mask.bool()
    assert_close(torch.cat([first.logits, second.logits], 1)[real], full.logits[real], 1e-9)
    for a, b in zip(second.past_key_values.layers, full.past_key_values.layers):
        score_a, score_b = a.buffers.global_score, b.buffers.global_score
        assert torch.equal(score_a > float("-inf"), score_b > float("-inf"))
        kept = score_a > float("-inf")
        assert torch.equal(a.buffers.global_index[kept], b.buffers.global_index[kept])
        assert_close(score_a[kept], score_b[kept], 1e-9)
        if pool:  # the pending tokens and the recent errors too
            pending_a, pending_b = a.global_pending(), b.global_pending()
            assert torch.equal(pending_a[2].isfinite(), pending_b[2].isfinite())
            for x, y in zip(pending_a, pending_b):
                assert_close(x[x.isfinite()], y[y.isfinite()], 1e-9)


def test_linear_branch_off_keeps_scoring_with_the_state():
    # window + global cache without the recurrent branch's output: the state is still stepped for the scores
    model = liger.convert(tiny_teacher("llama", dtype=torch.float64), linear_weight=0.0, window_weight=1.0,
                          window_size=3, global_cache_size=2)
    x, mask = left_padded(T=20, pads=(0, 2, 5))
    with torch.no_grad():
        full = model(x, attention_mask=mask, position_ids=positions(mask)).logits
    got, cache = decode(model, x, mask, 6, "static")
    real = mask.bool()
    assert_close(got[real], full[real], 1e-9)
    assert all(layer.state is not None for layer in cache.liger_layers)


def test_global_cache_with_window_larger_than_the_sequence_is_the_teacher():
    # nothing ever leaves a window longer than the sequence: the global cache changes nothing
    teacher = tiny_teacher("llama", dtype=torch.float64)
    model = liger.convert(teacher, linear_weight=0.0, window_weight=1.0, window_size=64, global_cache_size=4)
    x = torch.randint(3, 128, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(model(x).logits, teacher(x).logits, 1e-10)


def test_decode_memory_does_not_grow_and_save_load_round_trips(tmp_path):
    model = liger.convert(tiny_teacher("llama"), window_size=4, global_cache_size=3, linear_normalizer="sum",
                          global_cache_pool=2)
    x, mask = left_padded(T=60, pads=(0, 4, 10))
    _, cache_30 = decode(model, x[:, :30], mask[:, :30], 8, "static")
    _, cache_60 = decode(model, x, mask, 8, "static")
    assert cache_30.nbytes() == cache_60.nbytes()
    model.save_pretrained(tmp_path)
    loaded = liger.LigerForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.global_cache_size == 3 and loaded.config.linear_normalizer == "sum"
    assert loaded.config.global_cache_pool == 2
    with torch.no_grad():
        assert torch.equal(loaded(x, attention_mask=mask).logits, model(x, attention_mask=mask).logits)


def test_training_gradients_reach_the_cached_keys():
    model = liger.convert(tiny_teacher("llama"), window_size=3, global_cache_size=2)
    model.train()
    x = torch.randint(3, 128, (2, 24), generator=torch.Generator().manual_seed(2))
    model(x, labels=x).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "k_proj" in n]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_config_checks():
    teacher = tiny_teacher("llama")
    with pytest.raises(ValueError, match="global_cache_size"):
        liger.convert(teacher, global_cache_size=-1)
    with pytest.raises(ValueError, match="global_cache_size"):
        liger.convert(teacher, global_cache_size=4, linear_weight=1.0, window_weight=0.0)
    with pytest.raises(ValueError, match="global_cache_pool"):
        liger.convert(teacher, global_cache_pool=2)  # no global cache to pool for
    with pytest.raises(ValueError, match="global_cache_pool"):
        liger.convert(teacher, global_cache_size=4, global_cache_pool=-1)
    # the Triton window takes the global cache's keys (tests/models/test_triton_window.py checks the values)
    assert liger.convert(teacher, global_cache_size=4, window_backend="triton").config.window_backend == "triton"


def test_triton_backends_on_a_float64_cpu_model_take_the_fallback_ops():
    # (the GPU tier's float32-vs-CPU test converted its float64 CPU reference with window_backend="triton" and
    # Triton compiled a CUDA kernel for float64 tensors; without the interpreter only CUDA tensors of a kernel
    # dtype reach the kernels)
    from liger.models.triton_common import supports

    teacher = tiny_teacher("qwen2", dtype=torch.float64)
    options = dict(window_size=5, num_sink_tokens=2, global_cache_size=4)
    fast = liger.convert(teacher, window_backend="triton", decode_backend="triton", **options)
    plain = liger.convert(teacher, **options)
    x, mask = left_padded(T=30)
    with torch.no_grad():
        a = fast(x, attention_mask=mask, position_ids=positions(mask)).logits
        b = plain(x, attention_mask=mask, position_ids=positions(mask)).logits
    real = mask.bool()
    assert_close(a[real], b[real], 1e-12)
    assert not supports(torch.zeros(2, 64, dtype=torch.float64))
