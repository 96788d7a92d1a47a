"""The zero-training students: swa:W:S is exactly sliding-window + sink attention; swa:W:S:G adds a global cache
(with G past every token it is the teacher again); convert:VARIANT; spec errors."""

import pytest
import torch

from liger.eval.models import build_student, load_checkpoint, parse_swa
from tests.conftest import assert_close, tiny_teacher


def window_mask(T: int, window: int, sinks: int) -> torch.Tensor:
    """[1, 1, T, T] boolean mask: query i sees key j <= i when i - j < window or j < sinks."""
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    return ((j <= i) & ((i - j < window) | (j < sinks)))[None, None]


@pytest.mark.parametrize("window,sinks", [(4, 0), (4, 2), (7, 3), (1, 1)])
def test_swa_student_equals_the_teacher_under_a_window_and_sink_mask(family, window, sinks):
    teacher = tiny_teacher(family)
    student = build_student(f"swa:{window}:{sinks}", teacher).eval()
    ids = torch.randint(0, 128, (2, 23), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = teacher(ids, attention_mask=window_mask(23, window, sinks).expand(2, 1, 23, 23)).logits
        assert_close(student(ids).logits, expected, 1e-5)
        # the mask matters: plain causal attention differs
        assert (teacher(ids).logits - expected).abs().max() > 1e-3


def test_swa_student_with_a_global_cache():
    teacher = tiny_teacher("llama")
    ids = torch.randint(0, 128, (2, 23), generator=torch.Generator().manual_seed(0))
    assert parse_swa("swa:4:2") == (4, 2, 0, 0) and parse_swa("swa:4:2:16") == (4, 2, 16, 0)
    assert parse_swa("swa:4:2:16:3") == (4, 2, 16, 3)
    with torch.no_grad():
        full = teacher(ids).logits
        windowed = build_student("swa:4:2", teacher).eval()(ids).logits
        assert_close(build_student("swa:4:2:0", teacher).eval()(ids).logits, windowed, 0)
        # a cache with room for every token that leaves the window keeps them all: the teacher's attention
        student = build_student("swa:4:0:64", teacher).eval()
        assert student.config.global_cache_size == 64 and student.config.linear_weight == 0
        assert_close(student(ids).logits, full, 1e-5)
        # a small one keeps some: between the two
        some = build_student("swa:4:2:3", teacher).eval()(ids).logits
        assert (some - windowed).abs().max() > 1e-4 and (some - full).abs().max() > 1e-4
        # ranked by the pooled error of their neighbourhoods: other members
        pooled = build_student("swa:4:2:3:2", teacher).eval()
        assert pooled.config.global_cache_pool == 2
        assert (pooled(ids).logits - some).abs().max() > 1e-6


def test_convert_student_is_the_untrained_liger_model():
    teacher = tiny_teacher("llama")
    student = build_student("convert:hgrn2", teacher)
    assert student.config.variant == "hgrn2" and student.config.window_size == 64
    assert student.config.linear_weight == 0.5
    for (name, p), (_, q) in zip(student.named_parameters(), teacher.named_parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("spec,message", [("swa:0:4", "not a valid sliding-window"), ("swa:64", "not a valid"),
                                          ("swa:64:4:-1", "not a valid"), ("swa:64:4:8:1:2", "not a valid"),
                                          ("swa:64:4:0:2", "not a valid"), ("swa:64:4:8:-1", "not a valid"),
                                          ("swa:a:b", "not a valid"), ("convert:lstm", "unknown Liger variant")])
def test_bad_student_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        build_student(spec, tiny_teacher("llama"))
    if spec.startswith("swa:"):
        with pytest.raises(ValueError, match=message):
            parse_swa(spec)


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model directory"):
        load_checkpoint(tmp_path / "missing")
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                       image_size=8, patch_size=4)).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="not a causal language model.*vit"):
        load_checkpoint(tmp_path / "vit")
