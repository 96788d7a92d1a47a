"""The offline suite and perplexity on the real SmolLM2-135M-Instruct (values measured in docs/evaluation.md)."""

import os

import pytest

from liger.eval import evaluate, perplexity
from liger.eval.models import build_student

pytestmark = pytest.mark.slow


def test_smollm2_is_above_chance_on_the_offline_suite(smollm2):
    model, tokenizer = smollm2
    result = evaluate(model, "bb_hyperbaton,bb_context_qa", limit=30, tokenizer=tokenizer, batch_size=16)
    # measured on 100 documents: hyperbaton 0.77, context_qa 0.95 (chance 0.5 for both)
    assert result["tasks"]["bb_hyperbaton"]["value"] > 0.6, result
    assert result["tasks"]["bb_context_qa"]["value"] > 0.75, result


def test_window_only_student_of_smollm2_has_a_higher_perplexity(smollm2, tmp_path):
    model, tokenizer = smollm2
    text = "/usr/share/common-licenses/GPL-3"  # plain English prose present on Debian/Ubuntu
    if not os.path.exists(text):
        pytest.skip(f"no {text} on this machine")
    teacher = perplexity(model, tokenizer, [text], context=256, stride=128, max_tokens=1024)
    student = perplexity(build_student("swa:16:0", model), tokenizer, [text], context=256, stride=128, max_tokens=1024)
    assert 1 < teacher["ppl"] < 100, teacher
    assert student["ppl"] > teacher["ppl"], (teacher, student)
