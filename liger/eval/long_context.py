"""The long-context measures in one call: passkey and multi-key retrieval through cached ``generate``, loss
by position and repeated-span recall from single forward passes. They need torch and transformers only
(never lm-eval), so a training script can call :func:`long_context` on a GPU machine without the ``eval``
extra.

    from liger.eval.long_context import long_context
    result = long_context(model, tokenizer, ["heldout.txt"], passkey_lengths=[1024, 4096],
                          multikey_lengths=[1024, 4096], position_length=4096, repeat_gaps=[256, 1024, 4096])
"""

from __future__ import annotations

import time

from .longtext import LongText, as_long_text
from .multikey import WORDS, min_length, multikey
from .passkey import passkey, passkey_prompt
from .position import position_buckets, position_loss
from .recall import repeat_recall, usable_paragraphs

MEASURES = ("passkey", "multikey", "position_loss", "repeat_recall")


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def check_long_context(tokenizer, texts=None, passkey_lengths=(), passkey_trials: int = 20, multikey_lengths=(),
                       multikey_trials: int = 20, multikey_pairs: int = 4, position_length: int | None = None,
                       position_sequences: int = 20, position_edges=None, repeat_gaps=(), repeat_trials: int = 20,
                       repeat_lead: int = 128, repeat_paragraph_tokens=(64, 128)) -> LongText | None:
    """Check the settings, and the text against the asked lengths, with the tokenizer only (no model).

    Returns:
        The tokenized text (a :class:`LongText`, to pass on to :func:`long_context`), or None when no
        measure needs text.

    Raises:
        ValueError: a bad setting, no text for a measure that needs it, an empty text file or one too short
            for the asked lengths; FileNotFoundError: a missing text file.
    """
    for name, value in (("passkey trials", passkey_trials), ("multikey trials", multikey_trials),
                        ("position sequences", position_sequences), ("repeat trials", repeat_trials)):
        _positive(name, value)
    if not 1 <= multikey_pairs <= len(WORDS):
        raise ValueError(f"multikey pairs must be in [1, {len(WORDS)}], got {multikey_pairs}")
    for name, values in (("passkey", passkey_lengths), ("multikey", multikey_lengths),
                         ("repeat-recall", repeat_gaps)):
        if any(v < 1 for v in values):
            raise ValueError(f"{name} lengths must be positive token counts, got {list(values)}")
    for length in passkey_lengths:
        passkey_prompt(tokenizer, length, 12345, 0.5)  # raises if too short for the template
    if position_length is not None:
        position_buckets(position_length, position_edges)
    if not (multikey_lengths or position_length is not None or repeat_gaps):
        return None
    if not texts:
        raise ValueError("multi-key retrieval, loss by position and repeated-span recall need text files "
                         "(--long-text FILE...)")
    corpus = as_long_text(texts, tokenizer)
    if multikey_lengths:
        shortest = min_length(tokenizer, multikey_pairs)
        if min(multikey_lengths) <= shortest:
            raise ValueError(f"multikey length {min(multikey_lengths)} is too short for {multikey_pairs} pairs "
                             f"({shortest} tokens without filler)")
        filler = sum(p.tokens for p in corpus.paragraphs)
        if filler < max(multikey_lengths):
            raise ValueError(f"multikey length {max(multikey_lengths)} needs as many tokens of filler text, but "
                             f"the text files hold {filler}")
    if position_length is not None:
        corpus.sequences(position_length, position_sequences)
    if repeat_gaps:
        usable_paragraphs(corpus, list(repeat_gaps), repeat_trials, repeat_lead, tuple(repeat_paragraph_tokens))
    return corpus


def long_context(model, tokenizer, texts=None, *, passkey_lengths=(), passkey_trials: int = 20,
                 multikey_lengths=(), multikey_trials: int = 20, multikey_pairs: int = 4,
                 position_length: int | None = None, position_sequences: int = 20, position_edges=None,
                 repeat_gaps=(), repeat_trials: int = 20, seed: int = 0) -> dict:
    """The long-context measures asked for, on one model (any transformers causal LM; CPU or CUDA; its
    device and dtype as they are; eval mode during the measures, its mode restored).

    Args:
        texts: text files (plain text, or ``.jsonl`` with one ``{"text": ...}`` document per line) or a
            :class:`LongText`; needed by multi-key retrieval, loss by position and repeated-span recall.
        passkey_lengths, passkey_trials: :func:`~liger.eval.passkey.passkey` (skipped when empty).
        multikey_lengths, multikey_trials, multikey_pairs: :func:`~liger.eval.multikey.multikey`.
        position_length, position_sequences, position_edges: :func:`~liger.eval.position.position_loss`
            (skipped when ``position_length`` is None).
        repeat_gaps, repeat_trials: :func:`~liger.eval.recall.repeat_recall`.
        seed: every random choice (keys, depths, paragraphs, spans).

    Returns:
        ``{"passkey": dict | None, "multikey": ..., "position_loss": ..., "repeat_recall": ..., "seconds":
        {measure: wall seconds}}``, each measure's dict as its function returns it (None when not asked).

    Raises:
        ValueError / FileNotFoundError: as :func:`check_long_context`, before any forward pass.
    """
    corpus = check_long_context(tokenizer, texts, passkey_lengths, passkey_trials, multikey_lengths, multikey_trials,
                                multikey_pairs, position_length, position_sequences, position_edges, repeat_gaps,
                                repeat_trials)
    result: dict = {name: None for name in MEASURES}
    seconds = {}
    runs = []
    if passkey_lengths:
        runs.append(("passkey", lambda: passkey(model, tokenizer, list(passkey_lengths), passkey_trials, seed)))
    if multikey_lengths:
        runs.append(("multikey", lambda: multikey(model, tokenizer, corpus, list(multikey_lengths), multikey_trials,
                                                  multikey_pairs, seed)))
    if position_length is not None:
        runs.append(("position_loss", lambda: position_loss(model, tokenizer, corpus, position_length,
                                                            position_sequences, position_edges)))
    if repeat_gaps:
        runs.append(("repeat_recall", lambda: repeat_recall(model, tokenizer, corpus, list(repeat_gaps),
                                                            repeat_trials, seed)))
    for name, run in runs:
        start = time.time()
        result[name] = run()
        seconds[name] = round(time.time() - start, 1)
    result["seconds"] = seconds
    return result
