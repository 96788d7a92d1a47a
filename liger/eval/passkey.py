"""Passkey retrieval (Mohtashami & Jaggi, "Landmark Attention", arXiv 2305.16300): a 5-digit key hidden at a
random depth in repeated filler sentences, asked for at the end, answered by greedy decoding through the
model's cached ``generate`` path. The prompt wording and filler are the paper's (an evaluation template: never
train on it); lengths are in tokens of the model's tokenizer, and every trial is fixed by the seed.
"""

from __future__ import annotations

import random
import re

import torch

from .stats import binomial

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
         "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"


def n_tokens(tokenizer, text: str) -> int:
    """Tokens of ``text`` as the model receives it (with the tokenizer's special tokens, e.g. BOS)."""
    return len(tokenizer(text, add_special_tokens=True).input_ids)


def passkey_prompt(tokenizer, length: int, key: int, depth: float) -> str:
    """A prompt of at most ``length`` tokens (as close as whole filler sentences allow) with the needle
    after ``depth`` (0..1) of the filler."""
    fixed = n_tokens(tokenizer, " ".join([INTRO, NEEDLE.format(key=key), QUESTION]))
    per_filler = n_tokens(tokenizer, " ".join([FILLER] * 20)) / 20
    repeats = int((length - fixed) / per_filler)
    if repeats < 1:
        raise ValueError(f"passkey length {length} is too short for the prompt ({fixed} tokens without filler)")
    while True:
        before = round(repeats * depth)
        parts = [INTRO] + [FILLER] * before + [NEEDLE.format(key=key)] + [FILLER] * (repeats - before) + [QUESTION]
        prompt = " ".join(parts)
        if n_tokens(tokenizer, prompt) <= length or repeats == 1:
            return prompt
        repeats -= 1


def first_number(text: str) -> str | None:
    """The first run of digits in ``text`` (None if there is none): how retrieval answers are read."""
    found = re.search(r"\d+", text)
    return found.group() if found else None


@torch.no_grad()
def greedy_answer(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    """``(answer, prompt tokens)``: the model's greedy continuation of ``prompt`` through ``model.generate``
    (its cached decoding path: for Liger, the recurrent state and the rolling window cache)."""
    device = next(model.parameters()).device
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=True).to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                               temperature=None, top_p=None, top_k=None)
    prompt_tokens = inputs.input_ids.shape[1]
    return tokenizer.decode(generated[0, prompt_tokens:], skip_special_tokens=True), prompt_tokens


def passkey(model, tokenizer, lengths: list[int] = (1024, 2048, 4096, 8192), trials: int = 20, seed: int = 0,
            max_new_tokens: int = 8) -> dict:
    """Accuracy of greedy passkey retrieval at each prompt length.

    Args:
        lengths: prompt lengths in tokens (each prompt is at most this long).
        trials: prompts per length (keys and depths drawn from ``seed``; depths stratified: trial ``i`` of
            ``n`` has its needle at a depth drawn uniformly in ``[i/n, (i+1)/n)`` of the filler).
        max_new_tokens: tokens generated per answer; a trial succeeds if the first number in them is the key.

    Returns:
        ``{"lengths": {length: {"accuracy", "stderr", "wilson95": [low, high], "correct", "trials", "tokens":
        mean prompt tokens, "trial_results": [{"depth", "distance", "correct", "answer"}]}}, "seed", "trials"}``;
        ``stderr`` is the binomial standard error, ``wilson95`` the Wilson 95 % interval, ``distance`` the
        number of prompt tokens from the needle's first token to the end of the prompt.
    """
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if not lengths or any(n < 1 for n in lengths):
        raise ValueError(f"passkey lengths must be positive token counts, got {list(lengths)}")
    out = {}
    was_training = model.training
    model.eval()
    try:
        for length in lengths:
            rng = random.Random(f"{seed}-{length}")
            records = []
            for i in range(trials):
                key = rng.randint(10000, 99999)
                depth = (i + rng.random()) / trials
                prompt = passkey_prompt(tokenizer, length, key, depth)
                answer, tokens = greedy_answer(model, tokenizer, prompt, max_new_tokens)
                position = n_tokens(tokenizer, prompt[:prompt.index(NEEDLE.format(key=key))].rstrip())
                records.append({"depth": round(depth, 4), "distance": tokens - position, "tokens": tokens,
                                "correct": first_number(answer) == str(key), "answer": answer})
            out[int(length)] = {**binomial(sum(r["correct"] for r in records), trials),
                                "tokens": sum(r["tokens"] for r in records) / trials, "trial_results": records}
    finally:
        model.train(was_training)
    return {"lengths": out, "seed": seed, "trials": trials}
