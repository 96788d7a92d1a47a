"""Loss by position: the mean next-token loss of held-out text in buckets of context length, so that one can
see whether a model uses context beyond its sliding window (64 keys for Liger). A model that only sees its
window has the same loss at every position past it; one that uses longer context keeps improving.

Each sequence of ``length`` tokens is scored by one forward pass without a cache
(:func:`~liger.eval.longtext.token_nlls`). The token at position ``p`` (0-based) is predicted from the ``p``
tokens before it; the default buckets are positions 1-63 (inside a 64-key window), 64-255, 256-1023,
1024-4095, ... (edges 64 x 4^k) up to ``length - 1``.
"""

from __future__ import annotations

from .longtext import as_long_text, token_nlls
from .stats import mean_stderr


def position_buckets(length: int, edges: list[int] | None = None) -> list[tuple[int, int]]:
    """Inclusive position ranges ``[(1, e1 - 1), (e1, e2 - 1), ..., (ek, length - 1)]``.

    Args:
        length: tokens per sequence (positions 1..length-1 are scored).
        edges: the first position of each bucket after the first, increasing, each in ``[2, length - 1]``;
            default: 64, 256, 1024, ... (64 x 4^k) below ``length``.
    """
    if length < 2:
        raise ValueError(f"position length must be >= 2 tokens, got {length}")
    if edges is None:
        edges, e = [], 64
        while e < length:
            edges.append(e)
            e *= 4
    else:
        edges = [int(e) for e in edges]
        if any(b <= a for a, b in zip(edges, edges[1:])) or (edges and not 2 <= edges[0] <= edges[-1] < length):
            raise ValueError(f"position buckets must be increasing positions in [2, {length - 1}], got {edges}")
    bounds = [1] + edges + [length]
    return [(a, b - 1) for a, b in zip(bounds, bounds[1:])]


def bucket_label(start: int, end: int) -> str:
    return f"{start}-{end}"


def position_loss(model, tokenizer, texts, length: int = 4096, sequences: int = 20,
                  edges: list[int] | None = None) -> dict:
    """Mean next-token loss per position bucket over ``sequences`` held-out sequences of ``length`` tokens.

    Args:
        texts: text files (or a :class:`~liger.eval.longtext.LongText`): whole documents of ``.jsonl`` files,
            consecutive segments of plain-text files (see :meth:`LongText.sequences`).
        length: tokens per sequence. Default: 4096.
        sequences: sequences to score. Default: 20.
        edges: bucket edges (see :func:`position_buckets`).

    Returns:
        ``{"buckets": {"1-63": {"start": 1, "end": 63, "nll": mean loss (nats), "stderr": standard error over
        the sequences, "tokens": tokens scored}, ...}, "nll": mean over all scored tokens, "length",
        "sequences", "sources": [[source, first token]]}``.
    """
    if sequences < 1:
        raise ValueError(f"sequences must be >= 1, got {sequences}")
    buckets = position_buckets(length, edges)
    corpus = as_long_text(texts, tokenizer)
    chosen = corpus.sequences(length, sequences)
    per_bucket: list[list[float]] = [[] for _ in buckets]
    total = 0.0
    was_training = model.training
    model.eval()
    try:
        for seq in chosen:
            nll = token_nlls(model, seq["ids"])  # nll[p - 1] = loss at position p
            total += nll.sum().item()
            for values, (a, b) in zip(per_bucket, buckets):
                values.append(nll[a - 1:b].mean().item())
    finally:
        model.train(was_training)
    out = {}
    for values, (a, b) in zip(per_bucket, buckets):
        mean, err = mean_stderr(values)
        out[bucket_label(a, b)] = {"start": a, "end": b, "nll": mean, "stderr": err,
                                   "tokens": (b - a + 1) * len(values)}
    return {"buckets": out, "nll": total / ((length - 1) * len(chosen)), "length": length, "sequences": len(chosen),
            "sources": [[s["source"], s["start"]] for s in chosen]}
