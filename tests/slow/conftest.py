import pytest
import torch


@pytest.fixture(scope="session")
def smollm2_path():
    from liger.assets import smollm2_dir

    return smollm2_dir()


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    return model, tokenizer
