"""``liger generate MODEL PROMPT``: greedy (or sampled) text from a Liger or base checkpoint."""

from __future__ import annotations

import argparse
import time


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate text from a checkpoint",
        description="Generate a continuation with the cached decoding path. "
        "Example: liger generate out/liger-gla 'The capital of France is' --max-new-tokens 30",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model", help="a Liger or base checkpoint directory, or the alias 'smollm2'")
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument("--max-new-tokens", type=int, default=40, metavar="N", help="tokens to generate at most")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0, help="seeds the sampling (with --temperature above 0)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import liger.models  # noqa: F401  (registers the liger model type)
    from liger.assets import resolve_model

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).to(args.device).eval()
    text = args.prompt
    if args.chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt").to(args.device)
    torch.manual_seed(args.seed)
    sample = args.temperature > 0
    start = time.time()
    out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=sample,
                         temperature=args.temperature if sample else None, top_p=None, top_k=None,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    new = out[0, inputs["input_ids"].shape[1]:]
    print(tokenizer.decode(new, skip_special_tokens=True))
    print(f"[{len(new)} tokens in {time.time() - start:.1f} s]")
    return 0
