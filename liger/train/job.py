"""The main job as a library function: convert -> fine-tune -> evaluate -> a teacher-vs-Liger summary.

    from liger.train import linearize, load_config
    summary = linearize(load_config("smollm2-cpu", ["output=runs/smol"]))

``liger linearize`` is this function behind a command line. Outputs: those of :func:`~liger.train.finetune`, plus
``OUTPUT/summary.json`` and ``OUTPUT/summary.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import TrainConfig


def linearize(cfg: TrainConfig, resume: bool | str = False, progress=print) -> dict | None:
    """Convert ``cfg.model``, fine-tune it as ``cfg`` says, evaluate the teacher, the converted and the
    fine-tuned model, and write the summary.

    Args:
        resume: as for :func:`~liger.train.finetune`.
        progress: called with one line per stage (``print`` by default).

    Returns:
        The summary (see :func:`summarize`); None on the processes other than the main one.

    Raises:
        ValueError: ``train.save_final`` is off (the job evaluates OUTPUT/final), or an unknown lm-eval task.
        TrainingError, DataError, ConfigError: as for :func:`~liger.train.finetune`.
    """
    from ..assets import resolve_model
    from ..loading import load_model
    from .loop import finetune, resolve_device_dtype

    started = time.time()
    if not cfg.train.save_final:
        raise ValueError("liger linearize evaluates OUTPUT/final: train.save_final must stay true")
    _, dtype = resolve_device_dtype(cfg)
    if cfg.eval.tasks:  # unknown task names fail now, not after the fine-tuning
        from ..eval.harness import resolve_tasks

        resolve_tasks(cfg.eval.tasks)
    progress(f"[1/3] convert {cfg.model.path} to Liger")
    model, tokenizer = load_model(cfg.model.path, cfg.model.liger, dtype)
    progress(f"[2/3] fine-tune on {cfg.data.path} -> {cfg.output}")
    result = finetune(cfg, resume=resume, model=model, tokenizer=tokenizer)
    if not result["main_process"]:
        return None
    progress("[3/3] evaluate")
    del model
    suites = evaluate_suites(cfg, resolve_model(cfg.model.path), result["final"], tokenizer, progress)
    run_info = dict(wall_seconds=time.time() - started, train_seconds=result["train_seconds"],
                    tokens_per_s=result["tokens_per_s"], trained_steps=result["trained_steps"],
                    peak_rss_bytes=result["peak_rss_bytes"], final=result["final"])
    summary = summarize(cfg, run_info, suites)
    out = Path(cfg.output)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(format_summary(summary) + "\n")
    return summary


def evaluate_suites(cfg: TrainConfig, teacher_path: str, liger_path: str, tokenizer, progress=print) -> dict:
    """lm-eval's ``cfg.eval.tasks`` on the teacher, the freshly converted and the fine-tuned Liger model, one
    model in memory at a time, on the fine-tuning device.

    Returns:
        ``{"tasks": {task: {"metric": name, "teacher": v, "converted": v, "finetuned": v}}, "average": {...},
        "skipped": {task: reason}, "limit": n}``; empty when ``cfg.eval.tasks`` is empty.
    """
    if not cfg.eval.tasks:
        return {}
    import gc
    import logging
    from contextlib import nullcontext

    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its per-task INFO lines drown the summary

    import torch

    from ..eval import evaluate
    from ..loading import load_model, load_pretrained
    from .loop import resolve_device_dtype

    device, dtype = resolve_device_dtype(cfg)
    loaders = {
        "teacher": lambda: load_pretrained(teacher_path, dtype),
        "converted": lambda: load_model(teacher_path, cfg.model.liger, dtype)[0],
        "finetuned": lambda: load_model(liger_path, {}, dtype)[0],
    }
    tasks: dict = {}
    skipped: dict = {}
    for name, load in loaders.items():
        model = load().to(device).eval()
        progress(f"      lm-eval on the {name} model: {', '.join(cfg.eval.tasks)}"
                 + (f" (first {cfg.eval.limit} documents per task)" if cfg.eval.limit else ""))
        # a Liger checkpoint given as the model: its teacher is the same weights with the original attention
        teacher_mode = name == "teacher" and hasattr(model, "teacher_mode")
        try:
            with model.teacher_mode() if teacher_mode else nullcontext():
                result = evaluate(model, tasks=cfg.eval.tasks, limit=cfg.eval.limit,
                                  batch_size=cfg.eval.batch_size, tokenizer=tokenizer, seed=cfg.train.seed)
        except RuntimeError as err:  # no task could be loaded (e.g. Hub tasks offline): keep the summary
            progress(f"      lm-eval skipped: {str(err).splitlines()[0]}")
            return dict(tasks=tasks, average={}, skipped={", ".join(cfg.eval.tasks): str(err).splitlines()[0]},
                        limit=cfg.eval.limit)
        for task, row in result["tasks"].items():
            tasks.setdefault(task, {"metric": row["metric"]})[name] = row["value"]
        skipped.update(result.get("skipped", {}))
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    complete = {t: r for t, r in tasks.items() if all(k in r for k in loaders)}
    average = {k: sum(r[k] for r in complete.values()) / len(complete) for k in loaders} if complete else {}
    return dict(tasks=tasks, average=average, skipped=skipped, limit=cfg.eval.limit)


def _val_rows(metrics_path: Path) -> dict:
    from .metrics import read_metrics

    val = [e for e in read_metrics(metrics_path) if e["type"] == "val"]
    teacher = [e for e in val if e.get("model") == "teacher"]
    liger = [e for e in val if "model" not in e]
    if not teacher or not liger:
        raise RuntimeError(f"{metrics_path} lacks the step-0 validation entries")
    return dict(teacher=teacher[0], converted=liger[0], finetuned=liger[-1])


def summarize(cfg, run: dict, suites: dict) -> dict:
    """The summary of a finished run (read back from its metrics.jsonl)."""
    rows = _val_rows(Path(cfg.output) / "metrics.jsonl")
    teacher, converted, finetuned = (rows[k]["val_loss"] for k in ("teacher", "converted", "finetuned"))
    gap = converted - teacher
    return dict(
        model=cfg.model.path, data=cfg.data.path, output=cfg.output,
        validation={name: dict(loss=row["val_loss"], ppl=row["val_ppl"], step=row["step"], tokens=row["val_tokens"])
                    for name, row in rows.items()},
        gap_closed=(converted - finetuned) / gap if gap > 0 else None,
        suites=suites, **run,
    )


def format_summary(summary: dict) -> str:
    v = summary["validation"]
    names = {"teacher": "teacher (original attention)", "converted": "Liger, converted (no training)",
             "finetuned": f"Liger, fine-tuned ({v['finetuned']['step']} steps)"}
    lines = [f"# liger linearize: {summary['model']} on {summary['data']}", "",
             f"Held-out validation data: {v['teacher']['tokens']:,} tokens.", "",
             "| model | val loss | val perplexity |", "|---|---|---|"]
    for key, label in names.items():
        lines.append(f"| {label} | {v[key]['loss']:.4f} | {v[key]['ppl']:.2f} |")
    lines.append("")
    if summary["gap_closed"] is not None:
        lines.append(f"Fine-tuning closed {100 * summary['gap_closed']:.1f}% of the loss gap between the converted "
                     "model and the teacher.")
    suites = summary["suites"]
    if suites.get("tasks"):
        limit = f", first {suites['limit']} documents per task" if suites.get("limit") else ""
        lines += ["", f"lm-eval (0-shot{limit}):", "",
                  "| task | metric | teacher | Liger, converted | Liger, fine-tuned | recovery |",
                  "|---|---|---|---|---|---|"]
        rows = list(suites["tasks"].items())
        if suites.get("average"):
            rows.append(("**average**", dict(metric="", **suites["average"])))
        for task, r in rows:
            cells = [f"{r[k]:.3f}" if k in r else "n/a" for k in ("teacher", "converted", "finetuned")]
            recovery = (f"{100 * r['finetuned'] / r['teacher']:.1f}%" if r.get("teacher") and "finetuned" in r
                        else "n/a")
            lines.append(f"| {task} | {r['metric']} | " + " | ".join(cells) + f" | {recovery} |")
        for task, reason in suites.get("skipped", {}).items():
            lines.append(f"Skipped {task}: {reason}")
        lines.append("")
    elif not suites:
        lines.append("lm-eval: no tasks configured (eval.tasks is empty).")
    tps = summary.get("tokens_per_s")
    lines.append(f"Wall time {summary['wall_seconds'] / 60:.1f} min (fine-tuning "
                 f"{summary['train_seconds'] / 60:.1f} min" + (f", {tps:.0f} tokens/s" if tps else "") + ").")
    lines.append(f"Fine-tuned model: {summary['final']}")
    return "\n".join(lines)
