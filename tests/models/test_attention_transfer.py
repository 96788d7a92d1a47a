"""Attention transfer (``LigerForCausalLM.attention_transfer``, LoLCATs' stage 1): every Liger layer passes the
teacher attention's output on, records its own MSE to it, the target ignores the LoRA deltas and each layer's
error reaches only its own adapters."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

import liger
from liger.models.attention import LigerAttention
from tests.conftest import tiny_teacher


def converted(family="llama", **options):
    teacher = tiny_teacher(family)
    return teacher, liger.convert(teacher, window_size=4, linear_backend="torch", **options)


def padded_batch():
    torch.manual_seed(1)
    x = torch.randint(0, 128, (2, 24))
    mask = torch.ones_like(x)
    mask[1, :5] = 0
    return x, mask


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_the_residual_stream_is_the_teachers_and_each_layer_records_its_error(family):
    teacher, model = converted(family)
    x, mask = padded_batch()
    with model.attention_transfer() as losses:
        logits = model(input_ids=x, attention_mask=mask, use_cache=False).logits
    expected = teacher(input_ids=x, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(logits[real], expected[real], rtol=1e-5, atol=1e-5)
    layers = [m for m in model.modules() if isinstance(m, LigerAttention)]
    assert len(losses) == len(layers)

    # layer 0's error by hand: its input is the embedding; Liger output vs the teacher attention's, real tokens
    attn = layers[0]
    hidden = model.model.layers[0].input_layernorm(model.model.embed_tokens(x))
    pe = model.model.rotary_emb(hidden, torch.arange(24)[None])
    with model.teacher_mode():
        target = attn(hidden, pe, token_mask=real)[0]
    pred = attn(hidden, pe, token_mask=real)[0]
    by_hand = (pred - target).pow(2).mean(-1)[real].mean()
    torch.testing.assert_close(losses[0], by_hand, rtol=1e-5, atol=0)
    assert losses[0] > 0
    # outside the context the layers are Liger layers again
    assert all(m.transfer_losses is None for m in layers)
    torch.testing.assert_close(model(input_ids=x, use_cache=False).logits, converted(family)[1](input_ids=x).logits)


def test_the_target_ignores_lora_deltas_and_each_error_reaches_only_its_own_layer():
    _, model = converted()
    x, mask = padded_batch()
    with model.attention_transfer() as before:
        model(input_ids=x, attention_mask=mask, use_cache=False)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # non-zero deltas: the Liger outputs move, the targets must not
    base = peft_model.get_base_model()
    with base.attention_transfer() as after:
        logits = peft_model(input_ids=x, attention_mask=mask, use_cache=False).logits
    with torch.no_grad(), peft_model.disable_adapter(), base.teacher_mode():
        teacher_logits = peft_model(input_ids=x, attention_mask=mask, use_cache=False).logits
    real = mask.bool()
    torch.testing.assert_close(logits[real], teacher_logits[real], rtol=1e-5, atol=1e-5)
    assert all(abs(a.item() - b.item()) > 1e-7 for a, b in zip(before, after))

    after[-1].backward()  # the last layer's error alone
    grads = {n: p.grad for n, p in peft_model.named_parameters() if "lora_A" in n}
    last = len(after) - 1
    for name, grad in grads.items():
        layer = int(name.split(".layers.")[1].split(".")[0])
        if layer == last:
            assert grad is not None and grad.abs().sum() > 0, name
        else:
            assert grad is None or grad.abs().sum() == 0, name


def test_attention_transfer_refuses_a_cache():
    _, model = converted()
    x, _ = padded_batch()
    with model.attention_transfer(), pytest.raises(RuntimeError, match="use_cache=False"):
        model(input_ids=x, use_cache=True)
