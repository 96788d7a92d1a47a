"""liger/loading.py: the one loader of train, eval and bench, and its dtype names."""

import logging

import pytest
import torch

import liger
from liger.loading import is_liger_checkpoint, load_model, load_pretrained, to_dtype


def test_dtype_names():
    assert to_dtype("bfloat16") is torch.bfloat16 and to_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'float64' \\(choose from float32, bfloat16, float16\\)"):
        to_dtype("float64")


def test_random_models_are_seeded():
    a, b = load_pretrained("random:tiny"), load_pretrained("random:tiny", "bfloat16", attn_implementation="sdpa")
    assert b.dtype == torch.bfloat16 and b.config._attn_implementation == "sdpa"
    assert torch.equal(a.model.embed_tokens.weight.bfloat16(), b.model.embed_tokens.weight)
    assert not is_liger_checkpoint("random:tiny")
    with pytest.raises(ValueError, match="unknown random model 'huge'"):
        load_pretrained("random:huge")


def test_load_model_converts_a_base_and_keeps_a_liger_checkpoint(tiny_base, tmp_path, caplog):
    model, tokenizer = load_model(tiny_base, {"window_size": 8}, "bfloat16")
    assert isinstance(model, liger.LigerForCausalLM) and model.dtype == torch.bfloat16
    assert model.config.window_size == 8 and tokenizer.eos_token == "<eos>"
    model.save_pretrained(tmp_path / "liger")
    tokenizer.save_pretrained(tmp_path / "liger")
    assert is_liger_checkpoint(tmp_path / "liger") and not is_liger_checkpoint(tiny_base)
    with caplog.at_level(logging.INFO, logger="liger"):
        again, _ = load_model(tmp_path / "liger", {"window_size": 4}, "float32")
    assert again.config.window_size == 8 and again.dtype == torch.float32  # options are for conversions
    assert "already a Liger checkpoint; model.liger options are ignored" in caplog.text


def test_the_bench_refuses_liger_options_for_a_liger_checkpoint(tiny_base, tmp_path):
    from liger.bench.config import BenchConfig
    from liger.bench.measure import load_models

    liger.convert(load_pretrained(tiny_base)).save_pretrained(tmp_path / "liger")
    with pytest.raises(ValueError, match="Liger options apply when converting a base model"):
        load_models(BenchConfig(model=str(tmp_path / "liger"), liger_options={"window_size": 4}), torch.float32)
    teacher, model = load_models(BenchConfig(model=str(tiny_base), liger_options={"window_size": 4}), torch.float32)
    assert teacher.config.model_type == "llama" and model.config.window_size == 4
