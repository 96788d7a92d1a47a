"""Step 3, ``eval`` and ``longctx``: the trained students merged and measured with ``liger eval --compare``
(CPU or GPU), and the long-context measures of ``liger.eval.long_context`` (GPU)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .common import (
    BASELINES,
    SCRIPT,
    STUDENTS,
    parse_students,
    read_summary,
)
from .corpus import heldout_texts
from .results import write_results


def merged_student(run: Path, teacher: str):
    """``(model, tokenizer)``: the teacher converted with the run's ``model.liger`` options, its LoRA adapter
    loaded with peft and merged (float32, on the CPU)."""
    import torch
    from peft import PeftModel

    from liger.loading import load_model
    from liger.train.config import load_config

    options = load_config(str(run / "config.yaml")).model.options()  # (the run's recipe, updated with its liger)
    model, tokenizer = load_model(teacher, options, torch.float32)
    return PeftModel.from_pretrained(model, run / "adapter").merge_and_unload(), tokenizer


def merge_student(run: Path, teacher: str, dest: Path) -> Path:
    """A merged Liger checkpoint of a trained student (:func:`merged_student`), saved with the teacher's
    tokenizer."""
    model, tokenizer = merged_student(run, teacher)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def eval_command(args, corpus: Path, students: list[str], output_dir: Path) -> list[str]:
    heldout = sorted(str(p) for p in (corpus / "heldout").glob("*.txt"))
    cmd = [sys.executable, "-m", "liger", "eval", "--compare", args.model, *students, *BASELINES,
           "--tasks", args.tasks, "--batch-size", str(args.batch_size), "--ppl", *heldout,
           "--ppl-context", str(args.ppl_context), "--ppl-stride", str(args.ppl_stride),
           "--ppl-max-tokens", str(args.ppl_max_tokens), "--passkey-trials", str(args.passkey_trials),
           "--dtype", args.dtype, "--output-dir", str(output_dir)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.passkey:
        cmd += ["--passkey", args.passkey]
    if args.device:
        cmd += ["--device", args.device]
    return cmd


def cmd_eval(args) -> int:
    corpus, runs = Path(args.corpus).expanduser().resolve(), Path(args.runs).expanduser().resolve()
    output_dir = Path(args.output_dir).expanduser().resolve()
    merged_root = Path(args.scratch).expanduser().resolve() / "merged"
    output_dir.mkdir(parents=True, exist_ok=True)
    merged_root.mkdir(parents=True, exist_ok=True)
    names = parse_students(args.students) if args.students else [
        p.name for p in sorted(runs.iterdir()) if (p / "summary.json").is_file()]
    names.sort(key=lambda n: list(STUDENTS).index(n) if n in STUDENTS else len(STUDENTS))
    sidecar = output_dir / "reproduce_eval.json"
    if args.report_only:  # re-render the page from the last evaluation (no merging, no `liger eval`)
        if not (output_dir / "report.json").is_file() or not sidecar.is_file():
            raise SystemExit(f"--report-only: no earlier evaluation in {output_dir} (report.json, {sidecar.name})")
        done = json.loads(sidecar.read_text())
        report = json.loads((output_dir / "report.json").read_text())
        add_long_context(args, report, output_dir)
        trained = [n for n in report["students"] if n not in BASELINES]
        write_results(args, report, runs, names, trained, corpus, output_dir, done["eval_command"], done["argv"],
                      done["eval_seconds"])
        return 0
    trained, timings = [], {}
    for name in names:
        s = read_summary(runs, name)
        # "stopped": ended at its time limit, evaluated with the adapter of its last checkpoint (its budget shown)
        adapter = runs / name / "adapter" / "adapter_model.safetensors"
        if s.get("status") not in ("ok", "stopped") or not adapter.is_file():
            print(f"reproduce eval: {name} skipped ({s.get('status')}: {s.get('error', 'no adapter')})", flush=True)
            continue
        started = time.time()
        merge_student(runs / name, args.model, merged_root / name)
        timings[name] = round(time.time() - started, 1)
        trained.append(name)
    print(f"reproduce eval: merged {len(trained)} students into {merged_root} "
          f"({sum(timings.values()):.0f} s)", flush=True)
    cmd = eval_command(args, corpus, trained, output_dir)
    started = time.time()
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from liger.cli import main as liger_main

    print("reproduce eval: " + " ".join(shlex.quote(c) for c in ["liger", *cmd[3:]]), flush=True)
    # run from the merged folder so that the students are named by their plain names in the report
    here = os.getcwd()
    os.chdir(merged_root)
    try:
        code = liger_main(cmd[3:])
    finally:
        os.chdir(here)
    eval_seconds = round(time.time() - started, 1)
    report_path = output_dir / "report.json"
    if not report_path.is_file():
        print(f"reproduce eval: liger eval wrote no report (exit {code})", file=sys.stderr)
        return 1
    report = json.loads(report_path.read_text())
    add_long_context(args, report, output_dir)
    shown = [a for a in sys.argv[1:]]
    sidecar.write_text(json.dumps(dict(eval_command=cmd, argv=shown, eval_seconds=eval_seconds), indent=2) + "\n")
    write_results(args, report, runs, names, trained, corpus, output_dir, cmd, shown, eval_seconds)
    return code


LONGCTX_BASELINES = ("swa:64:4",)


def evaluated_students(runs: Path, names: list[str]) -> list[str]:
    """The students of ``names`` with an adapter to evaluate (trained to the end, or stopped at the time limit)."""
    out = []
    for name in names:
        s = read_summary(runs, name)
        adapter = runs / name / "adapter" / "adapter_model.safetensors"
        if s.get("status") in ("ok", "stopped") and adapter.is_file():
            out.append(name)
        else:
            print(f"reproduce: {name} not evaluated ({s.get('status')}: {s.get('error', 'no adapter')})", flush=True)
    return out


def longctx_settings(args) -> dict:
    """The long-context measures of ``longctx`` (keyword arguments of ``liger.eval.long_context``)."""
    def lengths(text):
        return [int(x) for x in text.split(",") if x]

    return dict(passkey_lengths=lengths(args.passkey), passkey_trials=args.trials,
                multikey_lengths=lengths(args.multikey), multikey_trials=args.trials,
                position_length=args.position_length or None, position_sequences=args.trials,
                repeat_gaps=lengths(args.repeat), repeat_trials=args.trials, seed=0)


def run_longctx_model(args) -> int:
    """One model of ``longctx`` (``_longctx`` subcommand, its own process): the long-context measures on the
    held-out text, written to ``--part``."""
    import torch

    from liger.eval.long_context import long_context
    from liger.eval.models import build_student, is_student_spec, load_checkpoint

    corpus, runs = Path(args.corpus).expanduser().resolve(), Path(args.runs).expanduser().resolve()
    loaded = load_checkpoint(args.model, dtype="float32", device="cpu")
    spec = args.spec
    if spec == "teacher":
        model, tokenizer = loaded.model, loaded.tokenizer
    elif is_student_spec(spec):
        model, tokenizer = build_student(spec, loaded.model), loaded.tokenizer
    else:
        model, tokenizer = merged_student(runs / spec, args.model)
    model = model.to(args.device).eval()
    if hasattr(model, "set_decoding"):
        model.set_decoding("auto", compile=False)  # CUDA graphs without a compilation per process
    started = time.time()
    result = long_context(model, tokenizer, heldout_texts(corpus), **longctx_settings(args))
    result["wall_seconds"] = round(time.time() - started, 1)
    result["device"] = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    Path(args.part).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


def cmd_longctx(args) -> int:
    """The long-context measures (liger.eval.long_context) of the teacher, the zero-training window baseline and
    every trained student, one process per model (``--parallel`` at a time): ``--output`` JSON, merged into the
    results page by ``eval --long-context``."""
    runs = Path(args.runs).expanduser().resolve()
    if args.models is not None:  # an explicit list: "teacher", baselines, student names
        from liger.eval.models import is_student_spec

        specs = [m for m in args.models.split(",") if m]
        students = [m for m in specs if m != "teacher" and not is_student_spec(m)]  # zero-training specs aside
        if students:
            parse_students(",".join(students))
            trained = evaluated_students(runs, students)
            specs = [m for m in specs if m not in students or m in trained]
    else:
        names = parse_students(args.students) if args.students else [
            p.name for p in sorted(runs.iterdir()) if (p / "summary.json").is_file()]
        specs = ["teacher", *LONGCTX_BASELINES, *evaluated_students(runs, names)]
    output = Path(args.output).expanduser().resolve()
    parts = output.with_suffix(".parts")
    parts.mkdir(parents=True, exist_ok=True)
    started = time.time()
    pending, running, codes = list(specs), [], {}
    while pending or running:
        while pending and len(running) < args.parallel:
            spec = pending.pop(0)
            part = parts / (re.sub(r"[^A-Za-z0-9_.@+=-]", "_", spec) + ".json")
            cmd = [sys.executable, str(SCRIPT), "_longctx", "--spec", spec, "--part", str(part),
                   "--corpus", args.corpus, "--runs", args.runs, "--model", args.model, "--device", args.device,
                   "--passkey", args.passkey, "--multikey", args.multikey, "--repeat", args.repeat,
                   "--position-length", str(args.position_length), "--trials", str(args.trials)]
            log = open(parts / (part.stem + ".log"), "w")
            env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
            running.append((spec, part, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
            print(f"reproduce longctx: {spec} starts", flush=True)
        time.sleep(2)
        for item in list(running):
            spec, part, process, log = item
            if process.poll() is not None:
                running.remove(item)
                log.close()
                codes[spec] = process.returncode
                print(f"reproduce longctx: {spec} ended ({process.returncode}, {time.time() - started:.0f} s)",
                      flush=True)
    models = {}
    for spec in specs:
        part = parts / (re.sub(r"[^A-Za-z0-9_.@+=-]", "_", spec) + ".json")
        if part.is_file():
            models[args.model if spec == "teacher" else spec] = json.loads(part.read_text())
    settings = longctx_settings(args)
    output.write_text(json.dumps(dict(teacher=args.model, models=models, settings=settings, exit_codes=codes,
                                      wall_seconds=round(time.time() - started, 1)), indent=2) + "\n")
    print(f"reproduce longctx: {len(models)} of {len(specs)} models measured in {time.time() - started:.0f} s; "
          f"wrote {output}", flush=True)
    return 0 if len(models) == len(specs) else 1


def merge_long_context(report: dict, path: Path) -> list[str]:
    """Fold the measures of a ``longctx`` run into a ``liger eval`` report (same model names); returns the names
    that got them."""
    from liger.eval.long_context import MEASURES

    measured = json.loads(path.read_text())
    got = []
    for name, result in measured["models"].items():
        if name in report["models"]:
            report["models"][name].update({m: result.get(m) for m in MEASURES})
            got.append(name)
    report.setdefault("config", {})["long_context"] = dict(measured["settings"], device=next(
        iter(measured["models"].values()), {}).get("device"))
    return got


def add_long_context(args, report: dict, output_dir: Path) -> None:
    """``--long-context``: fold those measures into the report and write it again (JSON, Markdown, plots)."""
    if not args.long_context:
        return
    from liger.eval.report import write_report

    got = [name for path in args.long_context for name in merge_long_context(report, Path(path))]
    write_report(report, output_dir)
    print(f"reproduce eval: long-context measures of {len(got)} models from {', '.join(args.long_context)}",
          flush=True)
