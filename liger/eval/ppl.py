"""Perplexity of a causal LM on plain-text files, with a fixed context and stride.

The text is tokenized once; windows of ``context`` input tokens start every ``stride`` tokens, and each token
(but the first) is scored once, by the first window that predicts it, so every prediction sees at least
``context - stride + 1`` tokens (fewer at the start of the text), as in transformers' "Perplexity of
fixed-length models" recipe. With ``stride == context`` the windows do not overlap.
"""

from __future__ import annotations

import math
import os

import torch


@torch.no_grad()
def token_nll(model, ids: torch.Tensor, context: int = 512, stride: int = 256) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) and number of scored tokens of a 1D token sequence.

    Args:
        ids: ``[T]`` token ids; every token but the first is scored.
        context: tokens per forward pass (the model's context). Default: 512.
        stride: tokens between window starts, 1..context. Default: 256.
    """
    if context < 2:
        raise ValueError(f"context must be >= 2 tokens, got {context}")
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in [1, context={context}], got {stride}")
    device = next(model.parameters()).device
    T = ids.shape[0]
    nll, scored, next_target = 0.0, 0, 1
    for start in range(0, T - 1, stride):
        # the window's inputs ids[start:end] predict ids[start + 1 : end + 1]; score those not scored yet
        end = min(start + context, T - 1)
        first = max(next_target, start + 1)
        if end + 1 > first:
            logits = model(ids[start:end].to(device)[None], use_cache=False).logits[0, first - 1 - start:]
            targets = ids[first:end + 1].to(device)
            nll += torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum").item()
            scored += end + 1 - first
            next_target = end + 1
        if end == T - 1:
            break
    return nll, scored


def perplexity(model, tokenizer, files: list[str | os.PathLike], context: int = 512, stride: int = 256,
               max_tokens: int | None = None) -> dict:
    """Perplexity on each text file and on all of them together.

    Args:
        files: UTF-8 plain-text files.
        context, stride: see :func:`token_nll`.
        max_tokens: score only the first ``max_tokens`` tokens of each file (None = whole file).

    Returns:
        ``{"files": {path: {"ppl": float, "tokens": int}}, "ppl": float, "tokens": int, "context": int,
        "stride": int, "max_tokens": int | None}``; the overall ``ppl`` is exp of the mean NLL over all
        scored tokens.

    Raises:
        FileNotFoundError: a missing file; ValueError: an empty file or bad context/stride.
    """
    if not files:
        raise ValueError("no text file given")
    if max_tokens is not None and max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
    per_file, total_nll, total = {}, 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for path in files:
            path = os.fspath(path)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no text file at '{path}'")
            with open(path, encoding="utf-8") as f:
                text = f.read()
            ids = torch.tensor(tokenizer(text, add_special_tokens=True).input_ids, dtype=torch.long)
            if max_tokens is not None:
                ids = ids[:max_tokens]
            if ids.numel() < 2:
                raise ValueError(f"'{path}' has fewer than 2 tokens")
            nll, n = token_nll(model, ids, context, stride)
            per_file[path] = {"ppl": math.exp(nll / n), "tokens": n}
            total_nll += nll
            total += n
    finally:
        model.train(was_training)
    return {"files": per_file, "ppl": math.exp(total_nll / total), "tokens": total, "context": context,
            "stride": stride, "max_tokens": max_tokens}
