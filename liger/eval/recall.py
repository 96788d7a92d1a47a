"""Repeated-span recall: a real paragraph P, then D tokens of other text, then P again. A model that remembers
P predicts its second occurrence far better than its first (the teacher's loss drops by several nats); a
model whose memory ends D tokens back gains nothing.

Each sequence is ``[special prefix] lead P_sep P gap P_sep P`` in token ids, cut from the whole-document
tokenization of the text files (:class:`~liger.eval.longtext.LongText`): ``P`` a paragraph of 64-128 tokens
(by default) and ``P_sep`` the blank-line tokens before it in its document, so both occurrences are the same
ids; ``lead`` (128 tokens by default, longer than a 64-key window) and ``gap`` are consecutive tokens from
elsewhere in the text, so each occurrence of P is preceded by unrelated running text and a windowed model
scores both alike. ``D`` counts the tokens strictly between the two occurrences (gap + P_sep). For each trial
the paragraph and the lead are the same at every D, and a shorter gap is the start of a longer one.
"""

from __future__ import annotations

import random

from .longtext import LongText, Paragraph, as_long_text, token_nlls
from .stats import mean_stderr


def _free_starts(corpus: LongText, p: Paragraph, need: int) -> tuple[int, int, int]:
    """``(count, before, after)``: the stream positions where ``need`` tokens not overlapping ``p`` (and its
    separator) start: ``[0, before)`` then ``[after, after + count - before)``."""
    stream, offsets = corpus.stream()
    ps, pe = offsets[p.doc] + p.sep_start, offsets[p.doc] + p.tok_end
    before = max(0, ps - need + 1)
    return before + max(0, len(stream) - need - pe + 1), before, pe


def repeat_candidates(corpus: LongText, gaps: list[int], lead: int = 128,
                      paragraph_tokens: tuple[int, int] = (64, 128)) -> list[Paragraph]:
    """Paragraphs of ``paragraph_tokens`` tokens (inclusive) that follow a blank line in their document (of
    fewer tokens than the shortest gap) and leave room for ``lead + max(gaps)`` tokens of other text."""
    lo, hi = paragraph_tokens
    out = []
    for p in corpus.paragraphs:
        sep = p.tok_start - p.sep_start
        if lo <= p.tokens <= hi and 0 < sep < min(gaps) and _free_starts(corpus, p, lead + max(gaps) - sep)[0] > 0:
            out.append(p)
    return out


def usable_paragraphs(corpus: LongText, gaps: list[int], trials: int, lead: int = 128,
                      paragraph_tokens: tuple[int, int] = (64, 128)) -> list[Paragraph]:
    """:func:`repeat_candidates`, checked to number at least ``trials`` (a ValueError otherwise)."""
    candidates = repeat_candidates(corpus, gaps, lead, paragraph_tokens)
    if len(candidates) < trials:
        raise ValueError(
            f"repeated-span recall needs {trials} paragraphs of {paragraph_tokens[0]}-{paragraph_tokens[1]} tokens "
            f"with {lead + max(gaps)} tokens of other text besides them, but the text files hold {len(candidates)}: "
            "give more text or fewer trials")
    return candidates


def repeat_sequence(corpus: LongText, p: Paragraph, span_start: int, lead: int, gap: int) -> dict:
    """The token ids of one trial at distance ``gap`` (see the module docstring).

    Returns:
        ``{"ids": [int], "first": position of P's first token, "second": position of its repeat,
        "paragraph": P's token count}``; ``second - (first + paragraph) == gap``.
    """
    stream, _ = corpus.stream()
    doc = corpus.documents[p.doc]
    sep, para = doc.ids[p.sep_start:p.tok_start], doc.ids[p.tok_start:p.tok_end]
    if gap <= len(sep):
        raise ValueError(f"gap {gap} must exceed the paragraph separator ({len(sep)} tokens)")
    span = stream[span_start:span_start + lead + gap - len(sep)]
    ids = corpus.prefix + span[:lead] + sep + para + span[lead:] + sep + para
    first = len(corpus.prefix) + lead + len(sep)
    return {"ids": ids, "first": first, "second": first + len(para) + gap, "paragraph": len(para)}


def repeat_recall(model, tokenizer, texts, gaps: list[int] = (256, 512, 1024, 2048, 4096), trials: int = 20,
                  seed: int = 0, paragraph_tokens: tuple[int, int] = (64, 128), lead: int = 128) -> dict:
    """Mean loss of a paragraph's tokens at its first and second occurrence, D tokens apart.

    Args:
        texts: text files (or a :class:`~liger.eval.longtext.LongText`) the paragraphs and the other text
            come from.
        gaps: the distances D in tokens. Default: 256, 512, 1024, 2048, 4096.
        trials: paragraphs (distinct, drawn from ``seed``) per distance; every distance uses the same ones.
        paragraph_tokens: (min, max) tokens of a paragraph P. Default: (64, 128).
        lead: tokens of other text before P's first occurrence. Default: 128.

    Returns:
        ``{"gaps": {D: {"first", "first_stderr", "second", "second_stderr", "drop", "drop_stderr", "trials",
        "tokens": mean sequence tokens}}, "trials", "seed", "paragraph_tokens", "lead", "paragraphs":
        [[source, first character] of each P]}``; losses are mean nats per token of P, ``drop = first -
        second`` (its standard error is over the trials' paired differences).

    Raises:
        ValueError: fewer than ``trials`` usable paragraphs in the text.
    """
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if not gaps or any(d < 1 for d in gaps):
        raise ValueError(f"repeat-recall distances must be positive token counts, got {list(gaps)}")
    if lead < 0 or not 1 <= paragraph_tokens[0] <= paragraph_tokens[1]:
        raise ValueError(f"need lead >= 0 and 1 <= min <= max paragraph tokens, got {lead}, {paragraph_tokens}")
    corpus = as_long_text(texts, tokenizer)
    max_gap = max(gaps)
    candidates = usable_paragraphs(corpus, gaps, trials, lead, paragraph_tokens)
    rng = random.Random(f"repeat-{seed}")
    chosen = rng.sample(candidates, trials)
    starts = []
    for p in chosen:
        count, before, after = _free_starts(corpus, p, lead + max_gap - (p.tok_start - p.sep_start))
        r = rng.randrange(count)
        starts.append(r if r < before else after + r - before)
    results = {}
    was_training = model.training
    model.eval()
    try:
        for gap in gaps:
            first, second, tokens = [], [], 0
            for p, start in zip(chosen, starts):
                seq = repeat_sequence(corpus, p, start, lead, gap)
                nll = token_nlls(model, seq["ids"])  # nll[t - 1] = loss of token t
                n = seq["paragraph"]
                first.append(nll[seq["first"] - 1:seq["first"] - 1 + n].mean().item())
                second.append(nll[seq["second"] - 1:seq["second"] - 1 + n].mean().item())
                tokens += len(seq["ids"])
            (f, f_err), (s, s_err) = mean_stderr(first), mean_stderr(second)
            d, d_err = mean_stderr([a - b for a, b in zip(first, second)])
            results[int(gap)] = {"first": f, "first_stderr": f_err, "second": s, "second_stderr": s_err, "drop": d,
                                 "drop_stderr": d_err, "trials": trials, "tokens": tokens / trials}
    finally:
        model.train(was_training)
    return {"gaps": results, "trials": trials, "seed": seed, "paragraph_tokens": list(paragraph_tokens),
            "lead": lead, "paragraphs": [[corpus.documents[p.doc].source, p.char_start] for p in chosen]}
