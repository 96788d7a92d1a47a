"""Shared fixtures: tiny random teachers of every supported family, and one assert_close."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
VARIANTS = ("gla", "hgrn2", "gsa", "mamba2", "mlstm", "gated_retention", "rwkv6", "gated_deltanet")

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
)


def tiny_config(family: str, **overrides):
    kwargs = dict(TINY, **overrides)
    if family == "mistral":
        kwargs.setdefault("sliding_window", None)
    return AutoConfig.for_model(family, **kwargs)


def tiny_teacher(family: str = "llama", seed: int = 0, dtype=torch.float32, **overrides):
    """A small randomly initialised causal LM of ``family`` (eval mode). Biases and q/k norms get random
    values too, so that dropping one of them would show in parity tests."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides)).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
    return model


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float = 0.0, msg: str = ""):
    """Relative RMS error below ``rtol`` (or max abs error below ``atol``); NaN/inf always fails."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, f"{msg} shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{msg} non-finite values in the result"
    err = (actual - expected).norm() / expected.norm().clamp_min(1e-300)
    max_abs = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert err <= rtol or max_abs <= atol, f"{msg} relative error {err:.3e} > {rtol:.1e} (max abs {max_abs:.3e})"


def run_in_triton_interpreter(script: str):
    """Run ``script`` in a fresh interpreter with Triton's CPU interpreter on (it must be on before Triton is
    imported) and return what it printed after "WORST" (a Python literal: its worst errors)."""
    import ast
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # this checkout first, then the caller's path (e.g. a folder holding fla when it is not installed)
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return ast.literal_eval(out.stdout.split("WORST")[1].strip())


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests need CUDA: skip them (with the reason) on machines without it."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param
