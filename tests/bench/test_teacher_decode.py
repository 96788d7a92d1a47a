"""liger/bench/teacher_decode.py: the hand-written GQA decode step of the teacher against the HF model's own forward
(float32, tiny random models of every family, left padding), its plain reference, and its fixed cache addresses."""

import pytest
import torch

from liger.bench.teacher_decode import GQADecodeTeacher, decode_attention
from tests.conftest import FAMILIES, assert_close, tiny_teacher

PROMPT, STEPS = 12, 16


def _inputs(vocab: int, pad: int = 3):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, PROMPT + STEPS), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0  # left padding in the second sequence
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


@pytest.mark.parametrize("family,attention", [(f, "fold") for f in FAMILIES] + [("llama", "enable_gqa")])
def test_gqa_step_equals_the_hf_forward(family, attention):
    model = tiny_teacher(family)
    ids, mask, pos = _inputs(model.config.vocab_size)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, position_ids=pos).logits  # HF's own forward over every token
    teacher = GQADecodeTeacher(model, attention=attention)
    cache = teacher.new_cache(2, PROMPT + STEPS + 4)
    reference = teacher.new_cache(2, PROMPT + STEPS + 4)
    prefill = teacher.prefill(cache, ids[:, :PROMPT], mask[:, :PROMPT], pos[:, :PROMPT])
    teacher.prefill(reference, ids[:, :PROMPT], mask[:, :PROMPT], pos[:, :PROMPT])
    real = mask[:, :PROMPT].bool()
    assert_close(prefill[real], full[:, :PROMPT][real], 1e-5, msg="prefill")
    addresses = [t.data_ptr() for t in cache.buffers()]
    steps, ref_steps = [], []
    for t in range(PROMPT, PROMPT + STEPS):
        args = ids[:, t : t + 1], pos[:, t : t + 1], mask[:, t : t + 1]
        steps.append(teacher.step(cache, *args))
        cache.length += 1
        ref_steps.append(teacher.reference_step(reference, *args))
        reference.length += 1
    steps, ref_steps = torch.cat(steps, 1), torch.cat(ref_steps, 1)
    assert_close(steps, full[:, PROMPT:], 1e-5, msg="decode steps vs HF forward")
    assert_close(ref_steps, full[:, PROMPT:], 1e-5, msg="reference steps vs HF forward")
    assert [t.data_ptr() for t in cache.buffers()] == addresses  # written in place: capturable
    assert int(cache.slot) == PROMPT + STEPS == cache.length
    assert cache.valid[:, : PROMPT + STEPS].eq(mask.bool()).all() and not cache.valid[:, PROMPT + STEPS :].any()


def test_gqa_step_equals_hf_generate():
    """Greedy decoding through the step gives HF generate's tokens (unpadded batch of 2)."""
    model = tiny_teacher("llama")
    ids = torch.randint(0, model.config.vocab_size, (2, PROMPT), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=STEPS, do_sample=False, pad_token_id=0)[:, PROMPT:]
    teacher = GQADecodeTeacher(model)
    cache = teacher.new_cache(2, PROMPT + STEPS)
    token = teacher.prefill(cache, ids, logits_to_keep=1).argmax(-1)
    out = [token]
    for t in range(PROMPT, PROMPT + STEPS - 1):
        pos = torch.full((2, 1), t)
        token = teacher.step(cache, token, pos, torch.ones(2, 1, dtype=torch.long)).argmax(-1)
        cache.length += 1
        out.append(token)
    assert torch.equal(torch.cat(out, 1), expected)


def test_fold_and_enable_gqa_read_the_same_keys():
    """The two attention forms against a dense float64 computation, with invalid keys holding NaN-free garbage."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(3, 6, 1, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(3, 2, 20, 8, generator=g, dtype=torch.float64) for _ in range(2))
    valid = torch.rand(3, 20, generator=g) > 0.4
    valid[:, 0] = True
    scores = (q.view(3, 2, 3, 8) @ k.transpose(2, 3)) / 8**0.5
    expected = (scores.masked_fill(~valid[:, None, None], float("-inf")).softmax(-1) @ v).reshape(3, 6, 1, 8)
    for form in ("fold", "enable_gqa"):
        assert_close(decode_attention(q, k, v, valid, 8**-0.5, form), expected, 1e-12, msg=form)


def test_unsupported_models_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="sliding window"):
        GQADecodeTeacher(tiny_teacher("mistral", sliding_window=8))
    with pytest.raises(ValueError, match="attention must be one of fold, enable_gqa"):
        GQADecodeTeacher(tiny_teacher("llama"), attention="flash")
