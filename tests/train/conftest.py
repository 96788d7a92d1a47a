"""Fixtures for the training tests: a tiny random Llama with a byte-level tokenizer, and small data files."""

from __future__ import annotations

import json

import pytest

from tests.conftest import tiny_teacher


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
