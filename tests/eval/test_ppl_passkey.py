"""Perplexity with a fixed context and stride; passkey prompts and scoring."""

import math
import re

import pytest
import torch

from liger.eval import passkey, perplexity
from liger.eval.models import build_student
from liger.eval.passkey import FILLER, passkey_prompt
from liger.eval.ppl import token_nll
from tests.conftest import tiny_teacher

TEXT = "The quick brown fox jumps over the lazy dog. " * 8


def test_one_window_equals_the_models_loss(tokenizer, tmp_path):
    model = tiny_teacher("llama")
    ids = torch.tensor(tokenizer(TEXT).input_ids)
    nll, n = token_nll(model, ids, context=len(ids), stride=len(ids))
    with torch.no_grad():
        loss = model(ids[None], labels=ids[None]).loss.item()
    assert n == len(ids) - 1
    assert nll / n == pytest.approx(loss, rel=1e-5)
    (tmp_path / "a.txt").write_text(TEXT)
    result = perplexity(model, tokenizer, [tmp_path / "a.txt"], context=1024, stride=512)
    assert result["ppl"] == pytest.approx(math.exp(loss), rel=1e-5) and result["tokens"] == len(ids) - 1


@pytest.mark.parametrize("context,stride", [(64, 64), (64, 16), (40, 33)])
def test_strided_windows_score_every_token_once_with_enough_context(tokenizer, context, stride):
    # a model that sees only its last W keys gives the same predictions in any window holding W tokens
    # before the predicted one, so the strided perplexity must equal its full-sequence loss
    window = context - stride + 1
    model = build_student(f"swa:{window}:0", tiny_teacher("llama")).eval()
    ids = torch.tensor(tokenizer(TEXT).input_ids)
    nll, n = token_nll(model, ids, context=context, stride=stride)
    with torch.no_grad():
        loss = model(ids[None], labels=ids[None]).loss.item()
    assert n == len(ids) - 1
    assert nll / n == pytest.approx(loss, rel=1e-4)


def test_perplexity_input_errors(tokenizer, tmp_path):
    model = tiny_teacher("llama")
    with pytest.raises(FileNotFoundError, match="no text file"):
        perplexity(model, tokenizer, [tmp_path / "missing.txt"])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        perplexity(model, tokenizer, [tmp_path / "empty.txt"])
    with pytest.raises(ValueError, match="stride"):
        token_nll(model, torch.arange(10), context=8, stride=9)


def test_passkey_prompt_length_depth_and_key(tokenizer):
    for length, depth in [(400, 0.0), (700, 0.5), (1000, 1.0)]:
        prompt = passkey_prompt(tokenizer, length, 12345, depth)
        n = len(tokenizer(prompt).input_ids)
        assert length - 2 * len(FILLER) <= n <= length
        assert prompt.count("12345") == 2 and prompt.endswith("The pass key is")
        before = prompt.index("The pass key is 12345").__index__()
        fillers_before = prompt[:before].count(FILLER)
        total = prompt.count(FILLER)
        assert fillers_before == round(total * depth)
    with pytest.raises(ValueError, match="too short"):
        passkey_prompt(tokenizer, 50, 12345, 0.5)


class Oracle:
    """Stands in for ``model.generate``: answers with the key in the prompt (or a wrong one)."""

    def __init__(self, tokenizer, wrong: bool):
        self.tokenizer, self.wrong = tokenizer, wrong

    def __call__(self, input_ids, max_new_tokens, **kwargs):
        key = re.search(r"The pass key is (\d+)", self.tokenizer.decode(input_ids[0])).group(1)
        answer = str(int(key) + 1) if self.wrong else key
        new = torch.tensor([self.tokenizer(" " + answer + ".").input_ids[:max_new_tokens]])
        return torch.cat([input_ids, new], 1)


@pytest.mark.parametrize("wrong", [False, True])
def test_passkey_scores_the_generated_number(tokenizer, wrong):
    model = tiny_teacher("llama")
    model.generate = Oracle(tokenizer, wrong)
    result = passkey(model, tokenizer, [400, 600], trials=3, seed=1)
    assert {k: v["accuracy"] for k, v in result["lengths"].items()} == ({400: 0.0, 600: 0.0} if wrong else
                                                                        {400: 1.0, 600: 1.0})


def test_passkey_runs_the_cached_generate_path_deterministically(tokenizer):
    from liger.eval.models import build_student

    model = build_student("convert:gla", tiny_teacher("llama"))
    first = passkey(model, tokenizer, [400], trials=2, seed=3)
    assert first == passkey(model, tokenizer, [400], trials=2, seed=3)
    assert first["lengths"][400]["trials"] == 2 and 300 < first["lengths"][400]["tokens"] <= 400
