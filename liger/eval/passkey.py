"""Passkey retrieval (Mohtashami & Jaggi, "Landmark Attention", arXiv 2305.16300): a 5-digit key hidden at a
random depth in repeated filler sentences, asked for at the end, answered by greedy decoding through the
model's cached ``generate`` path. The prompt wording and filler are the paper's; lengths are in tokens of
the model's tokenizer, and every trial is fixed by the seed.
"""

from __future__ import annotations

import random
import re

import torch

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
         "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"


def passkey_prompt(tokenizer, length: int, key: int, depth: float) -> str:
    """A prompt of at most ``length`` tokens (as close as whole filler sentences allow) with the needle
    after ``depth`` (0..1) of the filler."""
    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=True).input_ids)

    fixed = n_tokens(" ".join([INTRO, NEEDLE.format(key=key), QUESTION]))
    per_filler = n_tokens(" ".join([FILLER] * 20)) / 20
    repeats = int((length - fixed) / per_filler)
    if repeats < 1:
        raise ValueError(f"passkey length {length} is too short for the prompt ({fixed} tokens without filler)")
    while True:
        before = round(repeats * depth)
        parts = [INTRO] + [FILLER] * before + [NEEDLE.format(key=key)] + [FILLER] * (repeats - before) + [QUESTION]
        prompt = " ".join(parts)
        if n_tokens(prompt) <= length or repeats == 1:
            return prompt
        repeats -= 1


@torch.no_grad()
def passkey(model, tokenizer, lengths: list[int] = (512, 1024), trials: int = 5, seed: int = 0,
            max_new_tokens: int = 8) -> dict:
    """Accuracy of greedy passkey retrieval at each prompt length.

    Args:
        lengths: prompt lengths in tokens.
        trials: prompts per length (keys and depths drawn from ``seed``; depths spread evenly over 0..1).
        max_new_tokens: tokens generated per answer; a trial succeeds if the first number in them is the key.

    Returns:
        ``{"lengths": {length: {"accuracy": float, "trials": int, "tokens": mean prompt tokens}},
        "seed": int, "trials": int}``.
    """
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if not lengths or any(n < 1 for n in lengths):
        raise ValueError(f"passkey lengths must be positive token counts, got {list(lengths)}")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = {}
    was_training = model.training
    model.eval()
    try:
        for length in lengths:
            rng = random.Random(f"{seed}-{length}")
            correct, tokens = 0, 0
            for i in range(trials):
                key = rng.randint(10000, 99999)
                depth = (i + rng.random()) / trials
                inputs = tokenizer(passkey_prompt(tokenizer, length, key, depth), return_tensors="pt").to(device)
                tokens += inputs.input_ids.shape[1]
                generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                           pad_token_id=pad, temperature=None, top_p=None, top_k=None)
                answer = tokenizer.decode(generated[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
                found = re.search(r"\d+", answer)
                correct += bool(found and found.group() == str(key))
            out[int(length)] = {"accuracy": correct / trials, "trials": trials, "tokens": tokens / trials}
    finally:
        model.train(was_training)
    return {"lengths": out, "seed": seed, "trials": trials}
