"""Shared fixtures: tiny random teachers of every supported family, one assert_close, a tiny base checkpoint
with a byte-level tokenizer and small data files (training, linearize and benchmark-script tests)."""

from __future__ import annotations

import json

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


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The relative RMS error of ``actual`` against ``expected`` (float64), :func:`assert_close`'s measure."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-300)).item()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float = 0.0, msg: str = ""):
    """Relative RMS error below ``rtol`` (or max abs error below ``atol``); NaN/inf always fails."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, f"{msg} shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{msg} non-finite values in the result"
    err = relative_error(actual, expected)
    max_abs = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert err <= rtol or max_abs <= atol, f"{msg} relative error {err:.3e} > {rtol:.1e} (max abs {max_abs:.3e})"


def patch_lang_once() -> None:
    """Make Triton's CPU interpreter patch ``triton.language`` for a device function (a ``@triton.jit`` helper
    called from a kernel) on its first call only, not on every call. Its ``InterpretedFunction.__call__`` runs
    ``_patch_lang`` each time, which walks the language modules with ``inspect.getmembers`` and wraps every
    builtin again (about a third of the fused decode step's interpreter test time went there); a device call's
    patches are never undone (the scope it returns is dropped) and the kernel's own patches are redone at every
    launch, so the repeats change nothing. Does nothing where the interpreter lacks these internals (another
    Triton): the tests then run as before, slower."""
    try:
        import triton.runtime.interpreter as interpreter
    except ImportError:
        return
    function = getattr(interpreter, "InterpretedFunction", None)
    patch_lang = getattr(interpreter, "_patch_lang", None)
    if function is None or patch_lang is None or getattr(function.__call__, "patched_once", False):
        return
    device_call = function.__call__
    done = set()

    def patch_once(fn):
        if fn not in done:
            done.add(fn)
            return patch_lang(fn)

    def call(self, *args, **kwargs):
        interpreter._patch_lang = patch_once
        try:
            return device_call(self, *args, **kwargs)
        finally:
            interpreter._patch_lang = patch_lang

    call.patched_once = True
    function.__call__ = call


INTERPRETER_PREAMBLE = """
import torch
from tests.conftest import patch_lang_once, relative_error as rel
patch_lang_once()

worst = {}

def note(name, err):
    worst[name] = max(worst.get(name, 0.0), err)
"""
"""What every interpreter script starts with: :func:`patch_lang_once`, ``rel(a, b)`` (relative error in float64)
and ``note(name, err)``, which keeps the worst error of each name in ``worst`` (printed after "WORST" at the end of
a script)."""


def run_in_triton_interpreter(script: str):
    """Run :data:`INTERPRETER_PREAMBLE` + ``script`` in a fresh interpreter with Triton's CPU interpreter on (it
    must be on before Triton is imported) and return what it printed after "WORST" (a Python literal: its worst
    errors)."""
    import ast
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # this checkout first, then the caller's path (e.g. a folder holding fla when it is not installed)
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    out = subprocess.run([sys.executable, "-c", INTERPRETER_PREAMBLE + script], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return ast.literal_eval(out.stdout.split("WORST")[1].strip())


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + <bos> + <eos>) built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab.update({"<bos>": len(vocab), "<eos>": len(vocab) + 1})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>")


def alpaca_records(n: int) -> list[dict]:
    return [{"instruction": f"Repeat the number {i}.", "input": "" if i % 3 else f"n={i}",
             "output": f"{i} {i} {i}."} for i in range(n)]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A saved tiny Llama base checkpoint (vocab 260) with the byte tokenizer."""
    path = tmp_path_factory.mktemp("tiny_base")
    tiny_teacher("llama", vocab_size=260).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def alpaca_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "alpaca.json"
    path.write_text(json.dumps(alpaca_records(120)))
    return path


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory):
    """Two plain-text files of numbered paragraphs."""
    path = tmp_path_factory.mktemp("text")
    for name in ("a.txt", "b.md"):
        paragraphs = [f"Paragraph {i} of {name}: the quick brown fox jumps over the lazy dog." for i in range(40)]
        (path / name).write_text("\n\n".join(paragraphs) + "\n")
    return path


def tiny_args(base, data, output, *extra) -> list[str]:
    """``liger finetune`` arguments for a run of a few seconds."""
    return ["--model", str(base), "--data", str(data), "--output", str(output), "--max-length", "32",
            "--batch-size", "4", "data.val_records=8", "model.liger.window_size=8", "train.eval_every=2",
            "train.device=cpu", *extra]


def load_benchmark(name: str):
    """``benchmarks/NAME.py`` imported as a module (the scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def cache_tensors(cache) -> list[torch.Tensor]:
    """Every tensor of a ``LigerCache``'s Liger layers, as ``cache.buffers()``, with each global cache's slots
    sorted by token index: a prefill writes the members in rank order and a decode step replaces the worst one in
    place, so two caches holding the same members may hold them in different slots."""
    out = []
    for layer in cache.liger_layers:
        fields = layer.buffers._asdict()
        if fields.get("global_index") is not None:
            order = fields["global_index"].argsort(dim=1, stable=True)  # [B, G, H]
            for name in ("global_k", "global_v", "global_score", "global_index"):
                t = fields[name]
                fields[name] = t.gather(1, order if t.dim() == 3 else order[..., None].expand_as(t))
        out += [t for name, t in fields.items() if name != "state" and t is not None] + list(fields["state"] or ())
    return out
