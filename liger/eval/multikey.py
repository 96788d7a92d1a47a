"""Multi-key retrieval (in the spirit of RULER's multi-key needle-in-a-haystack, arXiv 2404.06654, and of
MQAR): K key-value pairs "The special magic number for {word} is {7-digit number}." hidden at spread depths in
real text from user-given files, then a question about one of them, answered by greedy decoding through the
model's cached ``generate`` path. A different template from the passkey test; an evaluation template (never
train on it).

Each trial draws K distinct words from :data:`WORDS`, K distinct 7-digit numbers, a starting paragraph of the
text, and the asked pair's depth (stratified over the trials); the other pairs sit at that depth plus
multiples of 1/K (mod 1), so the K pairs are always spread evenly over the filler. Pairs are placed at the
sentence or paragraph end nearest to their depth; the filler is cut at a word boundary so that the prompt
has at most ``length`` tokens and at least ``length - max(1, length // 200)`` when the search allows.
"""

from __future__ import annotations

import bisect
import random
import re

from .longtext import LongText, as_long_text
from .passkey import first_number, greedy_answer, n_tokens
from .stats import binomial

INTRO = ("Some special magic numbers are hidden within the following text. Make sure to memorize them. "
         "I will quiz you about the numbers afterwards.")
NEEDLE = "The special magic number for {word} is {number}."
QUESTION = "What is the special magic number for {word}? The special magic number for {word} is"

WORDS = (
    "anchor", "apple", "badger", "balloon", "beacon", "bicycle", "blanket", "bottle", "bridge", "butter", "cabinet",
    "camera", "candle", "canyon", "carpet", "castle", "cherry", "chimney", "circus", "cobalt", "compass",
    "copper", "cotton", "crystal", "dolphin", "dragon", "eagle", "engine", "falcon", "feather", "fiddle",
    "forest", "fountain", "garden", "ginger", "glacier", "guitar", "hammer", "harbor", "helmet", "honey",
    "island", "jacket", "jungle", "kettle", "kitten", "ladder", "lantern", "lemon", "lizard", "magnet",
    "marble", "meadow", "mirror", "monkey", "mustard", "nectar", "noodle", "orchard", "oyster", "paddle",
    "parrot", "pebble", "pepper", "pillow", "planet", "pocket", "pumpkin", "puzzle", "quartz", "rabbit", "radish",
    "ribbon", "rocket", "saddle", "salmon", "satchel", "scarf", "shovel", "silver", "spider", "squirrel",
    "statue", "tablet", "teapot", "thimble", "tiger", "tomato", "trumpet", "tunnel", "turtle", "umbrella",
    "velvet", "violin", "walnut", "wagon", "whistle", "window", "wizard", "yogurt",
)
"""Keys: 100 distinct lower-case nouns, none contained in another."""

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)")
_PARAGRAPH_END = re.compile(r"(?=\n[ \t]*\n)")


def min_length(tokenizer, pairs: int) -> int:
    """Tokens of a multi-key prompt with ``pairs`` pairs and no filler (a shorter length cannot be built)."""
    needles = " ".join(NEEDLE.format(word="pumpkin", number=8888888) for _ in range(pairs))
    return n_tokens(tokenizer, f"{INTRO}\n\n{needles}\n\n{QUESTION.format(word='pumpkin')}")


def insertion_points(filler: str) -> list[int]:
    """Character positions where a pair may go: the start, after each sentence end (followed by white
    space), at each paragraph end, and the end."""
    points = {0, len(filler)}
    points.update(m.end() for m in _SENTENCE_END.finditer(filler))
    points.update(m.start() for m in _PARAGRAPH_END.finditer(filler))
    return sorted(points)


def assemble(filler: str, needles: list[str], depths: list[float], question: str) -> tuple[str, list[int]]:
    """The prompt ``INTRO, blank line, filler with the needles, blank line, question`` and each needle's
    character offset in it. Needle ``j`` goes to the insertion point nearest ``depths[j] * len(filler)``."""
    points = insertion_points(filler)
    targets = []
    for d in depths:
        x = d * len(filler)
        i = bisect.bisect_left(points, x)
        near = points[max(0, i - 1):i + 1]
        targets.append(min(near, key=lambda p: (abs(p - x), p)))
    head = INTRO + "\n\n"
    body, starts, cursor = "", {}, 0
    for j in sorted(range(len(needles)), key=lambda j: (targets[j], depths[j])):
        body = _join(body, filler[cursor:targets[j]])
        cursor = targets[j]
        body = _join(body, needles[j])
        starts[j] = len(head) + len(body) - len(needles[j])
    body = _join(body, filler[cursor:])
    return head + body + "\n\n" + question, [starts[j] for j in range(len(needles))]


def _join(left: str, right: str) -> str:
    """``left + right`` with one space between them where neither has white space at the seam."""
    if left and right and not left[-1].isspace() and not right[0].isspace():
        return left + " " + right
    return left + right


def _cut(source: str, chars: int) -> str:
    """``source`` cut at the last white space at or before ``chars`` (whole words), trailing space removed."""
    if chars >= len(source):
        return source.rstrip()
    cut = max(source.rfind(" ", 0, chars + 1), source.rfind("\n", 0, chars + 1))
    return source[:max(cut, 0)].rstrip()


def multikey_prompt(tokenizer, corpus: LongText, length: int, pairs: list[tuple[str, int]], depths: list[float],
                    asked: int, start_paragraph: int) -> dict:
    """A multi-key prompt of at most ``length`` tokens.

    Args:
        corpus: the filler text; paragraphs are taken in order from ``start_paragraph`` (wrapping around).
        pairs: ``[(word, number)]``; pair ``j`` is placed at ``depths[j]`` (0..1) of the filler.
        asked: index of the pair the question asks about.

    Returns:
        ``{"prompt": str, "tokens": int, "positions": [token index of each needle's first token],
        "filler": str}``.

    Raises:
        ValueError: ``length`` too short for the pairs without any filler.
    """
    needles = [NEEDLE.format(word=w, number=n) for w, n in pairs]
    question = QUESTION.format(word=pairs[asked][0])
    empty = n_tokens(tokenizer, assemble("", needles, depths, question)[0])
    if empty > length:
        raise ValueError(f"multikey length {length} is too short for {len(pairs)} pairs "
                         f"({empty} tokens without filler)")
    paragraphs = corpus.paragraphs
    want = int(length * corpus.chars_per_token * 2) + 2000
    parts, size = [], 0
    for k in range(len(paragraphs)):
        text = corpus.paragraph_text(paragraphs[(start_paragraph + k) % len(paragraphs)])
        parts.append(text)
        size += len(text) + 2
        if size >= want:
            break
    source = "\n\n".join(parts)

    def build(chars: int) -> tuple[str, list[int], str]:
        filler = _cut(source, chars)
        return (*assemble(filler, needles, depths, question), filler)

    tolerance = max(1, length // 200)
    lo, lo_n, hi = 0, empty, len(source) + 1  # build(lo) fits; build(hi) does not (or hi is past the end)
    c = min(int((length - empty) * corpus.chars_per_token), len(source))
    while hi - lo > 1:
        n = n_tokens(tokenizer, build(c)[0])
        if n <= length:
            lo, lo_n = c, n
            if length - n <= tolerance or c >= len(source):
                break
        else:
            hi = c
        guess = int(c + (length - n) * corpus.chars_per_token * (0.97 if n < length else 1.03))
        c = guess if lo < guess < hi else (lo + hi) // 2
        if c == lo:
            break
    prompt, starts, filler = build(lo)
    positions = [n_tokens(tokenizer, prompt[:s].rstrip()) for s in starts]
    return {"prompt": prompt, "tokens": lo_n, "positions": positions, "filler": filler}


def draw_trial(rng: random.Random, i: int, trials: int, pairs: int) -> tuple[list[str], list[int], float, list[float]]:
    """Trial ``i`` of ``trials``: ``pairs`` distinct words and 7-digit numbers, the asked pair's depth (stratified:
    drawn in ``[i/trials, (i+1)/trials)``) and every pair's depth (the others at multiples of 1/pairs from it)."""
    words = rng.sample(WORDS, pairs)
    numbers: list[int] = []
    while len(numbers) < pairs:
        n = rng.randint(1_000_000, 9_999_999)
        if n not in numbers:
            numbers.append(n)
    depth = (i + rng.random()) / trials
    return words, numbers, depth, [(depth + j / pairs) % 1.0 for j in range(pairs)]


def multikey(model, tokenizer, texts, lengths: list[int] = (1024, 2048, 4096, 8192), trials: int = 20,
             pairs: int = 4, seed: int = 0, max_new_tokens: int = 12) -> dict:
    """Accuracy of greedy multi-key retrieval at each prompt length (see the module docstring).

    Args:
        texts: text files (or a :class:`~liger.eval.longtext.LongText`) the filler comes from.
        lengths: prompt lengths in tokens (each prompt is at most this long).
        trials: prompts per length.
        pairs: key-value pairs per prompt (K).
        max_new_tokens: tokens generated per answer; a trial succeeds if the first number in them is the
            asked value.

    Returns:
        ``{"lengths": {length: {"accuracy", "stderr", "wilson95": [low, high], "correct", "trials", "tokens":
        mean prompt tokens, "trial_results": [{"word", "value", "depth", "distance", "correct", "answer"}]}},
        "pairs", "trials", "seed"}``; ``distance`` counts the prompt tokens from the asked pair's first token
        to the end of the prompt.
    """
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if not 1 <= pairs <= len(WORDS):
        raise ValueError(f"pairs must be in [1, {len(WORDS)}], got {pairs}")
    if not lengths or any(n < 1 for n in lengths):
        raise ValueError(f"multikey lengths must be positive token counts, got {list(lengths)}")
    corpus = as_long_text(texts, tokenizer)
    out = {}
    was_training = model.training
    model.eval()
    try:
        for length in lengths:
            rng = random.Random(f"multikey-{seed}-{length}")
            records = []
            for i in range(trials):
                words, numbers, depth, depths = draw_trial(rng, i, trials, pairs)
                built = multikey_prompt(tokenizer, corpus, length, list(zip(words, numbers)), depths, 0,
                                        rng.randrange(len(corpus.paragraphs)))
                answer, tokens = greedy_answer(model, tokenizer, built["prompt"], max_new_tokens)
                records.append({"word": words[0], "value": numbers[0], "depth": round(depth, 4),
                                "distance": tokens - built["positions"][0], "tokens": tokens,
                                "correct": first_number(answer) == str(numbers[0]), "answer": answer})
            out[int(length)] = {**binomial(sum(r["correct"] for r in records), trials),
                                "tokens": sum(r["tokens"] for r in records) / trials, "trial_results": records}
    finally:
        model.train(was_training)
    return {"lengths": out, "pairs": pairs, "trials": trials, "seed": seed}
