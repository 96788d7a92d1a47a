"""``liger finetune``: LoRA fine-tuning of a Liger model (the paper's recipe by default)."""

from __future__ import annotations

import argparse
import warnings

# command-line flag -> config key (the flags are shortcuts for the most used keys)
FLAG_KEYS = {
    "model": "model.path",
    "data": "data.path",
    "output": "output",
    "max_steps": "train.max_steps",
    "max_length": "data.max_length",
    "batch_size": "train.batch_size",
    "save_every": "train.save_every",
    "seed": "train.seed",
}


def add_run_options(parser: argparse.ArgumentParser, default_config: str | None) -> None:
    """The options shared by ``liger finetune`` and ``liger linearize``."""
    parser.add_argument("--config", default=default_config, metavar="FILE.yaml",
                        help="run config: a YAML file or a shipped recipe (liger-paper, smollm2-cpu, liger-memory)"
                        + (f"; default: {default_config}" if default_config else "; default: the paper's recipe"))
    parser.add_argument("--model", help="base checkpoint (converted first) or Liger checkpoint: a directory, the "
                        "alias 'smollm2', or a hub id (model.path)")
    parser.add_argument("--data", help="Alpaca .json/.jsonl, a text file or folder, the alias 'shakespeare', or a "
                        "Hugging Face dataset name (data.path)")
    parser.add_argument("--output", help="output directory (output)")
    parser.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps (train.max_steps)")
    parser.add_argument("--max-length", type=int, metavar="L", help="tokens per packed sequence (data.max_length)")
    parser.add_argument("--batch-size", type=int, metavar="B", help="sequences per optimizer step (train.batch_size)")
    parser.add_argument("--save-every", type=int, metavar="N", help="checkpoint interval in steps (train.save_every)")
    parser.add_argument("--seed", type=int, metavar="S", help="random seed (train.seed)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_const", const=True, default=False,
                        help="continue from the newest complete checkpoint in the output directory (an error if it "
                        "holds none)")
    resume.add_argument("--resume-if-possible", dest="resume", action="store_const", const="auto",
                        help="continue from the newest complete checkpoint if there is one, else start a new run "
                        "there (for jobs that are restarted automatically)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, e.g. optim.lr=5e-4 lora.target_modules=[q_proj,k_proj,v_proj,o_proj] "
                        "model.liger.window_size=32")


def quiet_library_warnings() -> None:
    """transformers/peft deprecation notices about their own internals are noise for a CLI user."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)(\..*)?$")


def resolve_config(args: argparse.Namespace):
    """Defaults < YAML < flags < ``key.sub=value`` overrides."""
    from ..train.config import load_config

    settings = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None}
    return load_config(args.config, args.overrides, settings)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="LoRA fine-tuning of a Liger model (the paper's recipe), resumable, multi-GPU via accelerate",
        description="Fine-tune a Liger model with LoRA. The model is a base checkpoint (converted first with "
        "model.liger options) or a Liger checkpoint. Writes OUTPUT/metrics.jsonl, loss_curve.png, config.yaml, "
        "checkpoints/ and final/ (LoRA merged). Examples: "
        "liger finetune --config smollm2-cpu --output runs/smol;  "
        "liger finetune --config liger-paper --model meta-llama/Llama-3.2-1B --output runs/llama1b;  "
        "accelerate launch -m liger finetune --config liger-paper --model ... --output ...",
    )
    add_run_options(parser, default_config=None)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..train import finetune

    quiet_library_warnings()
    cfg = resolve_config(args)
    summary = finetune(cfg, resume=args.resume)
    if not summary["main_process"]:
        return 0
    where = f"final model: {summary['final']}" if summary["final"] else f"adapter in {summary['output']}/checkpoints"
    if summary["val"]:
        first, last = summary["val"][0], summary["val"][-1]
        print(f"validation loss {first['loss']:.4f} (step {first['step']}) -> {last['loss']:.4f} "
              f"(step {last['step']}); {where}")
    else:
        print(where)
    return 0
