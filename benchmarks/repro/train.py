"""Step 2, ``train``: every student fine-tuned with the same recipe, one process each (``_student``), on
one or more GPUs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from .common import (
    SCRIPT,
    SEQUENCE_LENGTH,
    SEQUENCES_PER_STEP,
    TINY,
    _num,
    hybrid_layers,
    load_manifest,
    parse_students,
    read_summary,
    student_spec,
    student_tokens,
)


def training_text(corpus: Path) -> str:
    """The folder of a corpus's training text, as a run config names it (``data.path``)."""
    return str(corpus / "train")


def student_config(name: str, corpus: Path, tokens: int, output: Path, model: str, tiny: bool, device: str):
    """The run config of student ``name``: the paper's recipe (the shipped ``liger-paper`` YAML) on the
    corpus, ``tokens // (8 * 1024)`` steps (``--tiny``: 128-token chunks, 2 per step)."""
    from transformers import AutoConfig

    from liger.assets import resolve_model
    from liger.train import load_config

    spec = student_spec(name)
    liger_options = dict(spec["liger"])
    if spec.get("hybrid"):
        layers = AutoConfig.from_pretrained(resolve_model(model)).num_hidden_layers
        liger_options["full_attention_layers"] = hybrid_layers(layers)
    manifest = load_manifest(corpus)
    length = TINY["max_length"] if tiny else SEQUENCE_LENGTH
    batch = TINY["batch_size"] if tiny else SEQUENCES_PER_STEP
    train = dict(spec.get("train", {}))
    if "data.max_length" in train:
        # longer sequences, the same tokens per optimizer step (fewer sequences)
        longer = int(train.pop("data.max_length")) // (8 if tiny else 1)
        batch = max(1, batch * length // longer)
        length = longer
    micro = batch if (tiny or device == "cuda") else 1
    steps = max(1, tokens // (batch * length))
    settings = {
        "model.path": model, "model.liger": liger_options,
        "data.path": training_text(corpus), "data.format": "text", "data.max_length": length,
        "data.val_records": manifest["val_records"],
        "train.batch_size": batch, "train.micro_batch_size": micro, "train.max_steps": steps,
        # a checkpoint every tenth of the run: a student stopped at its time limit keeps its last adapter
        "train.eval_every": max(1, steps // 10), "train.save_every": 0 if tiny else max(1, steps // 10),
        "train.keep_checkpoints": 1,
        "train.save_final": False,  # the adapter (in the last checkpoint) is all `eval` needs
        "train.seed": 0, "train.device": device, "eval.tasks": [], "output": str(output),
        # on a GPU the micro-batch step is captured in a CUDA graph (the eager loop's losses, ~3x the tokens/s at
        # 8 x 1024: docs/gpu.md run M)
        "train.cuda_graph": device == "cuda",
    }
    if tiny:  # a test of the code path: few records, a small validation split (no longer the held-out one)
        settings["data.val_records"] = min(manifest["val_records"], TINY["val_records"])
        settings["data.max_records"] = settings["data.val_records"] + TINY["max_records"]
    if spec.get("transfer_fraction"):  # that share of the steps (at least one) is attention transfer
        settings["train.transfer_steps"] = max(1, round(spec["transfer_fraction"] * steps))
    settings.update(train)
    return load_config("liger-paper", settings=settings)


def packed_data(cfg, cache: Path):
    """The corpus tokenized and packed once (``build_data``), cached as a torch file next to the runs."""
    import torch

    from liger.loading import load_tokenizer
    from liger.train.data import build_data

    if cache.is_file():
        return torch.load(cache, weights_only=False)
    data = build_data(cfg.data, load_tokenizer(cfg.model.path))
    tmp = cache.with_name(cache.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, cache)
    return data


KEEP_FILES = ("metrics.jsonl", "config.yaml", "environment.json", "loss_curve.png")
RESUME_FILES = ("config.yaml", "metrics.jsonl")
"""What a run folder needs beside its newest checkpoint to be continued (``finetune(resume=...)``)."""


def keep_for_resume(scratch: Path, out: Path) -> bool:
    """Copy the newest checkpoint of the run in ``scratch`` and :data:`RESUME_FILES` to ``out/resume/`` (a run
    folder of its own: ``train --resume`` continues from it, also on another machine). False if there is none."""
    from liger.train.checkpoint import checkpoints

    found = checkpoints(scratch)
    if not found:
        return False
    target = out / "resume"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(found[-1], target / "checkpoints" / found[-1].name)
    for file in RESUME_FILES:
        if (scratch / file).is_file():
            shutil.copy2(scratch / file, target / file)
    return True


def restore_for_resume(scratch: Path, out: Path, corpus: Path) -> int | None:
    """Before a resumed run: the step it continues from — the newest checkpoint in ``scratch`` (the same
    machine), else the one kept in ``out/resume/`` (:func:`keep_for_resume`, e.g. carried from a lost lease),
    copied into ``scratch`` — or None (a new run). A kept run goes on in ``scratch`` and reads the corpus at
    ``corpus`` (the same corpus, wherever this machine keeps it: the lease's is ``/root/lease/repro-corpus``)."""
    import yaml

    from liger.train.checkpoint import checkpoints

    found = checkpoints(scratch)
    if not found and checkpoints(out / "resume"):
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(out / "resume", scratch)
        # the run's config names the folder it ran in (its checkpoint folder there); it runs on in this one
        saved = scratch / "config.yaml"
        if saved.is_file():
            cfg = yaml.safe_load(saved.read_text())
            cfg["output"] = str(scratch)
            cfg["data"]["path"] = training_text(corpus)
            saved.write_text(yaml.safe_dump(cfg, sort_keys=False))
        found = checkpoints(scratch)
    return int(found[-1].name.split("-")[-1]) if found else None


def val_history(metrics: Path) -> dict:
    """The run's validation losses from its metrics log (whole history, also of a resumed run): the teacher's,
    the first and the last of the model."""
    teacher = first = last = None
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            if record.get("type") != "val":
                continue
            if record.get("model") == "teacher":
                teacher = record["val_loss"]
            else:
                first = record if first is None else first
                last = record
    return dict(teacher=teacher, first=first and first["val_loss"], last=last and last["val_loss"],
                last_ppl=last and last["val_ppl"])


def scratch_run(scratch: Path, out: Path, name: str) -> Path:
    """The checkpoint folder of one run: per runs folder (``--out``) and student, so that two ``train``
    commands at once (say, two token budgets) never share one."""
    import hashlib

    tag = hashlib.sha256(str(out.expanduser().resolve()).encode()).hexdigest()[:8]
    return scratch / "runs" / tag / name


BUSY = 75
"""Exit code of a student process that found its run folder being trained by another process (EX_TEMPFAIL)."""


def record_end(out: Path, name: str, code) -> None:
    """After a student process ended with ``code`` (an exit code or "timeout"): a "failed" summary when it left
    none, and nothing when it was refused because another process trains that folder (whose summary comes)."""
    if code == BUSY:
        print(f"reproduce: {name} not trained: another process is training {out / name}", flush=True)
        return
    summary_path = out / name / "summary.json"
    if code != 0 and not summary_path.is_file():  # (a student stopped at the time limit writes its own)
        (out / name).mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(dict(student=name, status="failed",
                                                error=f"process ended with {code} (see logs/{name}.log)")) + "\n")
    print(f"reproduce: {name} ended ({code})", flush=True)


def run_student(args) -> int:
    """One student, in its own process (``_student`` subcommand): fine-tune, then keep only small files."""
    import fcntl

    name, out = args.student, Path(args.out) / args.student
    scratch = scratch_run(Path(args.scratch), Path(args.out), name)
    out.mkdir(parents=True, exist_ok=True)
    # one process per run folder: a second `train` into the same --out with the same student would otherwise
    # delete this one's checkpoints under it (the lock goes with the process, also when it is killed)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    lock = open(scratch.with_name(name + ".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"reproduce: {out} is being trained by another process", file=sys.stderr)
        return BUSY
    for stale in (out / "summary.json", out / "metrics.jsonl"):
        stale.unlink(missing_ok=True)
    # --resume: continue from the newest checkpoint (this machine's scratch, else out/resume/), if there is one
    resumed_from = restore_for_resume(scratch, out, Path(args.corpus)) if args.resume else None
    if resumed_from is None:
        shutil.rmtree(scratch, ignore_errors=True)
    summary = dict(student=name, device=None, gpu=os.environ.get("CUDA_VISIBLE_DEVICES"), tokens_budget=args.tokens,
                   processes_per_gpu=args.per_gpu)
    if resumed_from is not None:
        summary["resumed_from_step"] = resumed_from
    started = time.time()
    cfg = None

    def stop(signum, frame):  # the dispatcher's time limit: end like an error, keeping the last checkpoint
        raise SystemExit(f"stopped by signal {signum} at the time limit")

    signal.signal(signal.SIGTERM, stop)
    try:
        student_spec(name)  # an unknown name fails before the heavy imports
        import torch

        device = summary["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            from liger.bench.autotune import restrict_triton_autotuning

            restrict_triton_autotuning("fast")
            summary["gpu_name"] = torch.cuda.get_device_name(0)
        from liger.train import finetune
        from liger.train.checkpoint import checkpoints

        cfg = student_config(name, Path(args.corpus), args.tokens, scratch, args.model, args.tiny, device)
        summary["liger"] = cfg.model.options()
        summary["loss"] = cfg.train.loss
        data = packed_data(cfg, Path(args.data_cache))
        result = finetune(cfg, resume="auto" if resumed_from is not None else False, data=data)
        steps = result["start_step"] + result["trained_steps"]  # (a resumed run: the steps of all its parts)
        tokens = steps * cfg.train.batch_size * cfg.data.max_length
        ckpt = checkpoints(scratch)[-1]
        shutil.copytree(ckpt / "adapter", out / "adapter", dirs_exist_ok=True)
        shutil.rmtree(out / "resume", ignore_errors=True)  # (finished: nothing to continue)
        vals = val_history(scratch / "metrics.jsonl")
        summary.update(
            status="ok", steps=steps, tokens=tokens, sequence_length=cfg.data.max_length,
            sequences_per_step=cfg.train.batch_size, train_chunks=result["train_chunks"],
            val_chunks=result["val_chunks"], train_seconds=round(result["train_seconds"], 1),
            tokens_per_s=round(result["tokens_per_s"], 1) if result["tokens_per_s"] else None,
            peak_cuda_bytes=result.get("peak_cuda_bytes"), peak_rss_bytes=result["peak_rss_bytes"],
            teacher_val_loss=vals["teacher"], initial_val_loss=vals["first"], final_val_loss=vals["last"],
            final_val_ppl=vals["last_ppl"], trainable_parameters=result["trainable_parameters"])
    except BaseException as err:  # noqa: BLE001 - recorded, the other students go on
        summary.update(status="failed", error=f"{type(err).__name__}: {err}",
                       traceback=traceback.format_exc()[-4000:])
        found = checkpoints(scratch) if cfg is not None else []
        if found and (found[-1] / "adapter").is_dir():
            # stopped early: the adapter of the last checkpoint, with the budget it reached
            steps = int(found[-1].name.split("-")[-1])
            shutil.copytree(found[-1] / "adapter", out / "adapter", dirs_exist_ok=True)
            summary.update(status="stopped", steps=steps, tokens=steps * cfg.train.batch_size * cfg.data.max_length,
                           sequence_length=cfg.data.max_length, sequences_per_step=cfg.train.batch_size)
            keep_for_resume(scratch, out)  # (`train --resume` continues it, here or on another machine)
    finally:
        for file in KEEP_FILES:
            if (scratch / file).is_file():
                shutil.copy2(scratch / file, out / file)
        summary["wall_seconds"] = round(time.time() - started, 1)
        # a GPU shared by --per-gpu students at once: each is charged its share of the wall time
        summary["gpu_seconds"] = (round(summary["wall_seconds"] / args.per_gpu, 1) if summary["device"] == "cuda"
                                  else 0.0)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if not args.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0 if summary["status"] == "ok" else 1


def cmd_train(args) -> int:
    import threading

    import torch

    students = parse_students(args.students)
    budgets = {name: student_tokens(name, args.tokens) for name in students}
    corpus, out = Path(args.corpus).expanduser().resolve(), Path(args.out).expanduser().resolve()
    requested = students
    if args.resume:  # (a student that already finished is not trained again)
        done = [name for name in students if read_summary(out, name).get("status") == "ok"]
        for name in done:
            print(f"reproduce: {name} already trained ({out / name / 'summary.json'}): skipped", flush=True)
        students = [name for name in students if name not in done]
    scratch = Path(args.scratch).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    load_manifest(corpus)
    cuda = torch.cuda.is_available()
    gpus = min(args.gpus, torch.cuda.device_count()) if cuda else 1
    started = time.time()
    # tokenize and pack once per sequence length, before the students start (each loads the cached tensors)
    import hashlib

    from liger.train.data import PACKING_VERSION

    data_caches = {}
    for name in students:
        cfg = student_config(name, corpus, budgets[name], scratch / "runs" / "_", args.model, args.tiny,
                             "cuda" if cuda else "cpu")
        key = (f"{(corpus / 'manifest.json').read_text()}|{cfg.model.path}|{cfg.data.max_length}|"
               f"{cfg.data.max_records}|packing {PACKING_VERSION}")
        data_caches[name] = scratch / f"packed-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
        if not data_caches[name].is_file():
            data = packed_data(cfg, data_caches[name])
            print(f"reproduce: {data.describe()} (packed in {time.time() - started:.0f} s)", flush=True)
            del data
    print(f"reproduce: {len(students)} students on {gpus if cuda else 'no'} GPU(s)", flush=True)
    queue = list(students)
    lock = threading.Lock()
    logs = out / "logs"
    logs.mkdir(exist_ok=True)

    def worker(gpu: int):
        while True:
            with lock:
                if not queue:
                    return
                name = queue.pop(0)
            env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
            if cuda:
                env["CUDA_VISIBLE_DEVICES"] = str(gpu)
            cmd = [sys.executable, str(SCRIPT), "_student", "--student", name, "--corpus",
                   str(corpus), "--tokens", str(budgets[name]), "--out", str(out), "--scratch", str(scratch),
                   "--data-cache", str(data_caches[name]), "--model", args.model]
            cmd += ["--tiny"] if args.tiny else []
            cmd += ["--keep-scratch"] if args.keep_scratch else []
            cmd += ["--resume"] if args.resume else []
            cmd += ["--per-gpu", str(args.per_gpu)]
            print(f"reproduce: {name} starts" + (f" on GPU {gpu}" if cuda else ""), flush=True)
            with open(logs / f"{name}.log", "w") as log:
                process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
                try:
                    code = process.wait(timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    # SIGTERM first: the student saves what it has (its last checkpoint's adapter) and its summary
                    process.terminate()
                    try:
                        process.wait(timeout=120)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
                    code = "timeout"
            record_end(out, name, code)

    threads = [threading.Thread(target=worker, args=(i % gpus,)) for i in range(gpus * args.per_gpu)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print()
    print(training_table(out, requested))
    print(f"\nreproduce: {len(students)} students in {time.time() - started:.0f} s wall")
    return 0 if all(read_summary(out, s).get("status") == "ok" for s in requested) else 1


def training_table(runs: Path, students: list[str]) -> str:
    rows = ["| student | status | steps | tokens | train s | GPU s | tokens/s | peak GPU GiB | val loss: teacher "
            "| step 0 | final |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in students:
        s = read_summary(runs, name)
        peak = s.get("peak_cuda_bytes")
        status = s.get("status", "?") if s.get("status") == "ok" else f"{s.get('status')}: {s.get('error', '')[:80]}"
        rows.append(f"| {name} | {status} | {_num(s.get('steps'), '{}')} | {_num(s.get('tokens'), '{:,}')} | "
                    f"{_num(s.get('train_seconds'), '{:.0f}')} | {_num(s.get('gpu_seconds'), '{:.0f}')} | "
                    f"{_num(s.get('tokens_per_s'), '{:,.0f}')} | {_num(peak / 2**30 if peak else None, '{:.1f}')} | "
                    f"{_num(s.get('teacher_val_loss'))} | {_num(s.get('initial_val_loss'))} | "
                    f"{_num(s.get('final_val_loss'))} |")
    return "\n".join(rows)
