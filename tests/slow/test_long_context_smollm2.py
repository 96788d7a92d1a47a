"""Repeated-span recall on the real SmolLM2-135M-Instruct: the teacher recalls a paragraph 256 tokens back, the
teacher limited to a 64-key sliding window does not."""

import os

import pytest

from liger.eval.models import build_student
from liger.eval.recall import repeat_recall

pytestmark = pytest.mark.slow

TEXT = "/usr/share/common-licenses/GPL-3"  # plain English prose present on Debian/Ubuntu


def test_teacher_recalls_a_repeated_paragraph_and_a_window_student_does_not(smollm2):
    if not os.path.exists(TEXT):
        pytest.skip(f"no {TEXT} on this machine")
    model, tokenizer = smollm2
    teacher = repeat_recall(model, tokenizer, [TEXT], gaps=[256], trials=3)["gaps"][256]
    window = repeat_recall(build_student("swa:64:0", model), tokenizer, [TEXT], gaps=[256], trials=3)["gaps"][256]
    # measured during development: teacher 2.88 -> 0.20 nats (drop 2.68 +- 0.04), swa:64:0 4.09 -> 3.90 (0.20 +- 0.13)
    assert teacher["drop"] > 1.5 and teacher["second"] < 1.0, teacher
    assert abs(window["drop"]) < 0.6, window
    assert window["first"] == pytest.approx(window["second"], abs=0.6)
