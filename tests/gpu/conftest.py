"""GPU tier (marker ``gpu``; run with ``pytest -m gpu tests/gpu``): skipped without a CUDA device.

Process-wide settings for this tier, made before anything compiles a kernel:
* ``TRITON_F32_DEFAULT=ieee``: Triton multiplies float32 operands as tf32 by default (about 3e-4 relative
  error), which would hide float32 errors at the 1e-4 level these tests check;
* Triton autotuning reduced to one config per kernel (every config computes the same function; this only
  saves the minutes of first-call tuning, see ``liger/bench/autotune.py``);
* a larger torch.compile recompile limit (the tests compile one decode step per variant and batch size).
"""

import os

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

import pytest  # noqa: E402
import torch  # noqa: E402

from liger.bench.autotune import restrict_triton_autotuning  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))

if torch.cuda.is_available():
    restrict_triton_autotuning("single")
    import torch._dynamo

    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if str(item.fspath).startswith(_HERE):
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(skip)


def gpu_teacher(family="llama", dtype=torch.float32, **overrides):
    """A small random teacher with the head size of the benchmarked models (64), on CUDA."""
    from tests.conftest import tiny_teacher

    options = dict(hidden_size=256, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                   vocab_size=256)
    options.update(overrides)
    return tiny_teacher(family, dtype=dtype, **options).cuda()


def left_padded(B=3, T=40, pads=(0, 7, 19), vocab=256, seed=0, device="cuda"):
    x = torch.randint(3, vocab, (B, T), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(B, T, dtype=torch.long)
    for b, p in enumerate(pads):
        x[b, :p] = 0
        mask[b, :p] = 0
    return x.to(device), mask.to(device)


def positions(mask):
    return (mask.cumsum(1) - 1).clamp(min=0)


def prefill_then_decode(model, x, mask, pos, prefill=12):
    """Prefill the first ``prefill`` tokens of ``x`` with a cache, then decode the rest one token a step (the
    model's current decoding mode); returns the steps' logits ``[B, T - prefill, vocab]`` and the cache."""
    with torch.no_grad():
        first = model(x[:, :prefill], attention_mask=mask[:, :prefill], position_ids=pos[:, :prefill], use_cache=True)
        cache, logits = first.past_key_values, []
        for t in range(prefill, x.shape[1]):
            step = model(x[:, t : t + 1], attention_mask=mask[:, : t + 1], position_ids=pos[:, t : t + 1],
                         past_key_values=cache)
            logits.append(step.logits)
    return torch.cat(logits, 1), cache
