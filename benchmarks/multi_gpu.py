"""Scaling of ``liger finetune`` over the GPUs of one host (DDP through ``accelerate launch``).

For each process count in ``--gpus`` (default 1,2) this launches the same fine-tuning run — same model, data,
seed and *global* batch (``--batch-size`` sequences per optimizer step, split across the processes) — as

    accelerate launch --num_processes N --multi_gpu benchmarks/multi_gpu.py --worker -- <liger finetune args>

then reads each run's ``metrics.jsonl`` and prints a table: tokens/s (median over the steps after
``--warmup-steps``), scaling efficiency against one process (tokens/s ÷ (N × tokens/s of 1)), peak GPU memory
per process, and how far each run's per-step losses and final validation loss are from the 1-process run
(the losses should agree up to bf16 reduction-order noise). Writes ``--output`` JSON with versions and GPUs.

    python benchmarks/multi_gpu.py --gpus 1,2 --model smollm2 --data shakespeare --length 1024 \\
        --batch-size 16 --steps 40 --output benchmarks/results/multi_gpu_h200.json

FSDP (``train.fsdp=true`` as an extra override) with a randomly initialised Llama-architecture model too large
to train comfortably on one GPU (``--random-llama 8b``: Llama-3-8B's shape with the SmolLM2 tokenizer, written
once as a bf16 checkpoint under ``--runs``):

    python benchmarks/multi_gpu.py --gpus 1,2 --random-llama 8b --data shakespeare --length 1024 \
        --batch-size 16 --micro-batch-size 8 --steps 8 --warmup-steps 3 \
        --output benchmarks/results/fsdp_llama8b_h200x2.json train.fsdp=true

``--worker`` mode is what each launched process runs: it bounds fla's first-call Triton autotuning (``fast``,
see ``liger/bench/autotune.py``) and then runs ``liger finetune`` with the given arguments. NCCL's NVLink
multicast stays off (``NCCL_NVLS_ENABLE=0`` and friends are set for the children).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def worker(argv: list[str]) -> int:
    import torch

    from liger.bench.autotune import restrict_triton_autotuning
    from liger.cli import main

    restrict_triton_autotuning("fast")
    code = main(["finetune", *argv])
    if torch.cuda.is_available():
        rank = int(os.environ.get("LOCAL_RANK", "0"))
        peak = torch.cuda.max_memory_allocated(rank)
        out = Path(argv[argv.index("--output") + 1])
        (out / f"peak_memory_rank{rank}.json").write_text(json.dumps({"rank": rank, "peak_bytes": peak}))
    return code


# Llama-3.2-1B / -3B and Llama-3-8B shapes (vocabulary: the tokenizer's).
RANDOM_LLAMAS = {
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192),
    "3b": dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
               intermediate_size=8192),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336),
}


def random_llama(size: str, tokenizer_from: str, folder: Path) -> tuple[Path, int]:
    """A randomly initialised Llama checkpoint (bf16) with a real tokenizer, for throughput; reused if present.
    Returns (folder, parameter count)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from liger.assets import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer_from))
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=8192, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, **RANDOM_LLAMAS[size])
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
                model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
        tmp = folder.with_name(folder.name + ".tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(folder)
        del model
        torch.cuda.empty_cache()
    with torch.device("meta"):
        count = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    return folder, count


def read_metrics(output: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("type") == "train"]
    val = [r for r in rows if r.get("type") == "val" and r.get("model") != "teacher"]
    return train, val


def main() -> int:
    if "--worker" in sys.argv:
        rest = sys.argv[sys.argv.index("--worker") + 1:]
        return worker(rest[1:] if rest[:1] == ["--"] else rest)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", default="1,2", help="process counts to run, comma-separated")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--random-llama", choices=sorted(RANDOM_LLAMAS),
                        help="instead of --model: a randomly initialised Llama of this size (SmolLM2 tokenizer)")
    parser.add_argument("--data", default="shakespeare")
    parser.add_argument("--length", type=int, default=1024, help="tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=16, help="global sequences per optimizer step")
    parser.add_argument("--micro-batch-size", type=int, default=None,
                        help="sequences per forward per process (default: the whole per-process share)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--runs", default="runs/multi_gpu", help="folder for the runs' outputs")
    parser.add_argument("--timeout", type=float, default=400, help="seconds per launched run")
    parser.add_argument("--output", default="multi_gpu.json")
    parser.add_argument("extra", nargs="*", help="more key.sub=value overrides for liger finetune")
    args = parser.parse_args()

    import torch

    env = dict(os.environ, **NO_MULTICAST, PYTHONUNBUFFERED="1")
    results = []
    parameters = None
    if args.random_llama:
        started = time.time()
        folder = Path(args.runs) / f"random-llama-{args.random_llama}"
        folder, parameters = random_llama(args.random_llama, args.model, folder)
        args.model = str(folder)
        print(f"random Llama {args.random_llama}: {parameters / 1e9:.2f}B parameters at {folder} "
              f"({time.time() - started:.0f} s)", flush=True)
    for n in [int(x) for x in args.gpus.split(",")]:
        if args.batch_size % n:
            print(f"skip {n} processes: batch size {args.batch_size} does not split evenly")
            continue
        micro = args.micro_batch_size or args.batch_size // n
        out = Path(args.runs) / f"gpus{n}"
        finetune = ["--model", args.model, "--data", args.data, "--output", str(out), "--max-steps", str(args.steps),
                    "--max-length", str(args.length), "--batch-size", str(args.batch_size), "--save-every", "0",
                    f"train.micro_batch_size={micro}", "train.eval_every=0", *args.extra]
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
                  "--mixed_precision", "no",
                  "--dynamo_backend", "no"]
        launch += ["--multi_gpu"] if n > 1 else []
        cmd = [*launch, str(Path(__file__).resolve()), "--worker", "--", *finetune]
        print(f"[{time.strftime('%H:%M:%S')}] {n} process(es): {' '.join(cmd)}", flush=True)
        started = time.time()
        log = Path(args.runs) / f"gpus{n}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["rm", "-rf", str(out)])
        try:
            with open(log, "w") as f:
                code = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout,
                                      cwd=ROOT).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        wall = time.time() - started
        if code != 0 or not (out / "metrics.jsonl").exists():
            tail = log.read_text().strip().splitlines()[-5:] if log.exists() else []
            print(f"  failed ({code}) after {wall:.0f} s:\n    " + "\n    ".join(tail), flush=True)
            results.append(dict(processes=n, error=str(code), log_tail=tail))
            continue
        train, val = read_metrics(out)
        timed = [r["tokens_per_s"] for r in train[args.warmup_steps:]] or [r["tokens_per_s"] for r in train]
        peaks = [json.loads(p.read_text())["peak_bytes"] for p in sorted(out.glob("peak_memory_rank*.json"))]
        distributed = json.loads((out / "environment.json").read_text()).get("distributed")
        results.append(dict(processes=n, distributed=distributed, micro_batch_size=micro, wall_s=wall,
                            steps=len(train),
                            tokens_per_s=statistics.median(timed), tokens_per_s_runs=timed,
                            losses=[r["loss"] for r in train], validation=val,
                            peak_memory_bytes_per_process=peaks))
        print(f"  {len(train)} steps, {statistics.median(timed):,.0f} tokens/s, wall {wall:.0f} s", flush=True)

    base = next((r for r in results if r.get("processes") == 1 and "error" not in r), None)
    print(f"\nliger finetune scaling | {args.model} | T={args.length} | global batch {args.batch_size} | "
          f"{args.steps} steps" + (f" | {parameters / 1e9:.2f}B parameters" if parameters else ""))
    print(" GPUs | mode | micro | tokens/s | efficiency | peak GiB/GPU | max |Δ loss| vs 1 GPU | final val loss")
    for r in results:
        if "error" in r:
            print(f" {r['processes']:4d} | failed: {r['error']}")
            continue
        eff = r["tokens_per_s"] / (r["processes"] * base["tokens_per_s"]) if base else None
        dl = max(abs(a - b) for a, b in zip(r["losses"], base["losses"])) if base else None
        r.update(efficiency=eff, max_abs_loss_diff_vs_1=dl)
        val = r["validation"][-1]["val_loss"] if r["validation"] else None
        peak = max(r["peak_memory_bytes_per_process"]) / 2**30 if r["peak_memory_bytes_per_process"] else None
        print(f" {r['processes']:4d} | {r['distributed']} | {r['micro_batch_size']:5d} | {r['tokens_per_s']:8,.0f} | "
              f"{eff if eff is None else f'{eff:10.2f}'} | {peak if peak is None else f'{peak:12.2f}'} | "
              f"{dl if dl is None else f'{dl:21.4f}'} | {val if val is None else f'{val:.4f}'}")
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    report = dict(command="python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]), gpus=gpus,
                  python=platform.python_version(), torch=torch.__version__, commit=commit.strip(),
                  config=vars(args), parameters=parameters, results=results)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
