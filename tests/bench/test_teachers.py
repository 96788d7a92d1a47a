"""liger/bench/teachers.py: every teacher's decode session gives the HF model's own logits (CPU, float32: the
static teacher runs HF's StaticCache uncompiled, the GQA teacher its step uncaptured)."""

import pytest
import torch

from liger.bench.teachers import TEACHERS, make_teacher
from tests.conftest import assert_close, tiny_teacher

PROMPT, STEPS = 10, 16


@pytest.mark.parametrize("name", TEACHERS)
def test_teacher_sessions_decode_the_hf_logits(name):
    model = tiny_teacher("qwen3")  # q/k norms: the family with the most to get wrong
    ids = torch.randint(0, model.config.vocab_size, (2, PROMPT + STEPS), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(ids).logits[:, PROMPT:]
        teacher = make_teacher(name, model, torch.device("cpu"))
        session = teacher.start(ids[:, :PROMPT], STEPS)
        logits = torch.cat([session.step(ids[:, t : t + 1]).clone() for t in range(PROMPT, PROMPT + STEPS)], 1)
    assert_close(logits, expected, 1e-5, msg=name)
    assert session.cache_bytes() > 0
    session.close()


def test_gqa_teacher_synthetic_cache_holds_the_context():
    """The serving search's teacher state: ``context`` valid slots per sequence, room for the steps, no prefill."""
    model = tiny_teacher("llama")
    teacher = make_teacher("gqa_graph", model, torch.device("cpu"))
    session = teacher.synthetic(3, 40, 5)
    c = model.config
    slots = 48  # 40 + 5, rounded up to a multiple of 16
    assert session.cache_bytes() == (c.num_hidden_layers * 2 * 3 * c.num_key_value_heads * slots * c.head_dim * 4
                                     + 3 * slots + 8)
    with torch.no_grad():
        out = session.step(torch.zeros(3, 1, dtype=torch.long))
    assert out.shape == (3, 1, c.vocab_size) and torch.isfinite(out).all()
