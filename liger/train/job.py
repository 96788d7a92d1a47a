"""The main job as a library function: convert -> fine-tune -> evaluate -> a summary that puts the fine-tuned
Liger model beside its teacher, the converted model before training and a zero-training baseline (``swa:64:4``:
the teacher's weights attending to a 64-key sliding window plus 4 sink tokens), and says plainly which is better.

    from liger.train import linearize, load_config
    summary = linearize(load_config("smollm2-cpu", ["output=runs/smol"]))

``liger linearize`` is this function behind a command line. Outputs: those of :func:`~liger.train.finetune`, plus
``OUTPUT/summary.json`` and ``OUTPUT/summary.md``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from .config import TrainConfig

PAPER_TOKENS = 20e6
"""Training tokens of the paper's recipe (2 epochs of cleaned Alpaca, docs/method.md)."""


def linearize(cfg: TrainConfig, resume: bool | str = False, progress=print) -> dict | None:
    """Convert ``cfg.model``, fine-tune it as ``cfg`` says, evaluate the teacher, the baseline
    (``cfg.eval.baseline``), the converted and the fine-tuned model, and write the summary.

    The data, the task names and the baseline are checked before the model loads.

    Args:
        resume: as for :func:`~liger.train.finetune`.
        progress: called with one line per stage (``print`` by default).

    Returns:
        The summary (see :func:`summarize`); None on the processes other than the main one.

    Raises:
        ValueError: ``train.save_final`` is off (the job evaluates OUTPUT/final), or an unknown lm-eval task.
        TrainingError, DataError, ConfigError: as for :func:`~liger.train.finetune`.
    """
    from ..loading import load_model, load_tokenizer
    from .data import build_data
    from .loop import finetune, resolve_device_dtype

    started = time.time()
    if not cfg.train.save_final:
        raise ValueError("liger linearize evaluates OUTPUT/final: train.save_final must stay true")
    _, dtype = resolve_device_dtype(cfg)
    if cfg.eval.tasks:  # unknown task names fail now, not after the fine-tuning
        from ..eval.harness import resolve_tasks

        resolve_tasks(cfg.eval.tasks)
    progress(f"[1/3] convert {cfg.model.path} to Liger (after reading {cfg.data.path})")
    tokenizer = load_tokenizer(cfg.model.path)
    data = build_data(cfg.data, tokenizer)  # a missing, empty or too small data file fails before the model loads
    model, _ = load_model(cfg.model.path, cfg.model.options(), dtype)
    progress(f"[2/3] fine-tune on {cfg.data.path} -> {cfg.output}")
    result = finetune(cfg, resume=resume, model=model, tokenizer=tokenizer, data=data)
    if not result["main_process"]:
        return None
    progress("[3/3] evaluate")
    del model
    baseline = _baseline_validation(cfg, data, progress) if cfg.eval.baseline else None
    suites = evaluate_suites(cfg, result["final"], tokenizer, progress)
    run_info = dict(wall_seconds=time.time() - started, train_seconds=result["train_seconds"],
                    tokens_per_s=result["tokens_per_s"], trained_steps=result["trained_steps"],
                    train_tokens=result["steps"] * cfg.train.batch_size * cfg.data.max_length,
                    peak_rss_bytes=result["peak_rss_bytes"], final=result["final"],
                    val_records=data.val_records)
    summary = summarize(cfg, run_info, suites, baseline)
    out = Path(cfg.output)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(format_summary(summary) + "\n")
    return summary


def _model_loaders(cfg: TrainConfig, liger_path: str) -> dict:
    """``{name: () -> model}`` for the models the job compares, in the order of the summary."""
    from ..assets import resolve_model
    from ..loading import load_model, load_pretrained
    from .loop import resolve_device_dtype

    _, dtype = resolve_device_dtype(cfg)
    teacher_path = resolve_model(cfg.model.path)
    loaders = {"teacher": lambda: load_pretrained(teacher_path, dtype)}
    if cfg.eval.baseline:
        loaders["baseline"] = lambda: baseline_model(cfg.eval.baseline, teacher_path, dtype)
    loaders["converted"] = lambda: load_model(teacher_path, cfg.model.options(), dtype)[0]
    loaders["finetuned"] = lambda: load_model(liger_path, {}, dtype)[0]
    return loaders


def baseline_model(spec: str, teacher_path: str, dtype):
    """The zero-training baseline ``swa:W:S`` of the teacher at ``teacher_path`` (for a Liger checkpoint: of the
    base model it was converted from, the same weights)."""
    from transformers import AutoModelForCausalLM

    import liger

    from ..eval.models import build_student
    from ..loading import load_pretrained

    model = load_pretrained(teacher_path, dtype)
    if isinstance(model, liger.LigerForCausalLM):  # the same parameters, by name, in the base architecture
        base = AutoModelForCausalLM.from_config(model.config.to_base_config(), dtype=model.dtype)
        base.load_state_dict(model.state_dict())
        model = base.eval()
    return build_student(spec, model)


def _baseline_validation(cfg: TrainConfig, data, progress) -> dict:
    """The baseline's loss on the held-out validation chunks (the same ones as the other models')."""
    from ..assets import resolve_model
    from .loop import resolve_device_dtype
    from .objective import heldout_loss

    device, dtype = resolve_device_dtype(cfg)
    model = baseline_model(cfg.eval.baseline, resolve_model(cfg.model.path), dtype).to(device).eval()
    result = heldout_loss(model, data.val_ids, data.val_labels, cfg.train.micro_batch_size)
    progress(f"      {cfg.eval.baseline} (no training): validation loss {result['loss']:.4f}, perplexity "
             f"{result['ppl']:.2f}")
    return result


def evaluate_suites(cfg: TrainConfig, liger_path: str, tokenizer, progress=print) -> dict:
    """lm-eval's ``cfg.eval.tasks`` on the teacher, the baseline, the freshly converted and the fine-tuned Liger
    model, one model in memory at a time, on the fine-tuning device.

    Returns:
        ``{"tasks": {task: {"metric": name, "teacher": v, "baseline": v, "converted": v, "finetuned": v,
        "stderr": {model: stderr}}}, "average": {model: mean over the tasks every model has}, "skipped":
        {task: reason}, "limit": n}``; empty when ``cfg.eval.tasks`` is empty.
    """
    if not cfg.eval.tasks:
        return {}
    import gc
    import logging
    from contextlib import nullcontext

    import lm_eval.evaluator  # noqa: F401  (creates lm-eval's loggers, so that they can be filtered)
    import lm_eval.models.huggingface  # noqa: F401
    import torch

    from ..eval import evaluate
    from ..logs import once_per_process
    from .loop import resolve_device_dtype

    logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its per-task INFO lines drown the summary
    once_per_process("lm_eval")  # its warnings about in-memory models are the same for every model
    device, _ = resolve_device_dtype(cfg)
    loaders = _model_loaders(cfg, liger_path)
    tasks: dict = {}
    skipped: dict = {}
    for name, load in loaders.items():
        model = load().to(device).eval()
        label = cfg.eval.baseline if name == "baseline" else name
        progress(f"      lm-eval on the {label} model: {', '.join(cfg.eval.tasks)}"
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
            entry = tasks.setdefault(task, {"metric": row["metric"], "stderr": {}})
            entry[name] = row["value"]
            entry["stderr"][name] = row.get("stderr")
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


def summarize(cfg: TrainConfig, run: dict, suites: dict, baseline: dict | None = None) -> dict:
    """The summary of a finished run: the validation losses (read back from its metrics.jsonl; the baseline's
    measured by the job), lm-eval's scores, and ``verdict``: one plain sentence per comparison that matters
    (does fine-tuning beat the zero-training baseline and the converted model?)."""
    rows = _val_rows(Path(cfg.output) / "metrics.jsonl")
    validation = {name: dict(loss=row["val_loss"], ppl=row["val_ppl"], step=row["step"], tokens=row["val_tokens"])
                  for name, row in rows.items()}
    if baseline is not None:
        validation = dict(teacher=validation["teacher"], baseline=dict(baseline, step=0, spec=cfg.eval.baseline),
                          converted=validation["converted"], finetuned=validation["finetuned"])
    teacher, converted, finetuned = (validation[k]["loss"] for k in ("teacher", "converted", "finetuned"))
    gap = converted - teacher
    summary = dict(model=cfg.model.path, data=cfg.data.path, output=cfg.output, baseline=cfg.eval.baseline,
                   validation=validation, gap_closed=(converted - finetuned) / gap if gap > 0 else None,
                   suites=suites, **run)
    summary["verdict"] = _verdict(summary)
    return summary


def _compare(a: float, b: float, higher_is_better: bool) -> str:
    if a == b:
        return "the same as"
    return "better than" if (a > b) == higher_is_better else "worse than"


def _verdict(summary: dict) -> list[str]:
    v, suites = summary["validation"], summary["suites"]
    name = summary["baseline"]
    lines, measures = [], []
    if "baseline" in v:
        measures.append(f"held-out loss (against {name})")
        word = _compare(v["finetuned"]["loss"], v["baseline"]["loss"], higher_is_better=False)
        lines.append(f"On held-out validation loss the fine-tuned Liger model is {word} the zero-training baseline "
                     f"{name} ({v['finetuned']['loss']:.4f} vs {v['baseline']['loss']:.4f}).")
    average = suites.get("average") or {}
    if "finetuned" in average:
        measures.append("lm-eval")
        others = [("the converted model before training", "converted")]
        if "baseline" in average:
            others.append((f"the baseline {name}", "baseline"))
        parts = [f"{_compare(average['finetuned'], average[k], higher_is_better=True)} {label} "
                 f"({average['finetuned']:.3f} vs {average[k]:.3f})" for label, k in others]
        errors = [r["stderr"].get("finetuned") for r in suites["tasks"].values() if "finetuned" in r]
        noise = ""
        if errors and all(e is not None for e in errors):  # the average's standard error, tasks independent
            error = math.sqrt(sum(e * e for e in errors)) / len(errors)
            noise = f"; the average's standard error is about {error:.3f}, so differences of that size are noise"
        lines.append(f"On lm-eval's average the fine-tuned model is {' and '.join(parts)}{noise}.")
    lost = [measure for measure, line in zip(measures, lines) if "worse than" in line]
    if lost:
        tokens = summary.get("train_tokens")
        budget = (f" ({tokens:,} training tokens, {tokens / PAPER_TOKENS:.2%} of the paper's recipe of about 20M "
                  "tokens of instruction data)" if tokens else "")
        lines.append(f"So at this budget{budget} fine-tuning does not pay off on {' or '.join(lost)}: the run "
                     "demonstrates the pipeline, not the method's accuracy; docs/results.md compares students "
                     "trained on the paper's token budget with the same baseline.")
    return lines


def format_summary(summary: dict) -> str:
    v = summary["validation"]
    labels = {"teacher": "teacher (original attention)",
              "baseline": f"baseline {summary.get('baseline')} (the teacher's weights, sliding window + sinks, "
                          "no training)",
              "converted": "Liger, converted (no training)",
              "finetuned": f"Liger, fine-tuned ({v['finetuned']['step']} steps)"}
    records, tokens = summary.get("val_records"), summary.get("train_tokens")
    held = f"the first {records:,} records of the data, " if records else ""
    lines = [f"# liger linearize: {summary['model']} on {summary['data']}", "",
             f"Held-out validation data ({held}not trained on): {v['teacher']['tokens']:,} tokens."
             + (f" Fine-tuning data: {tokens:,} tokens." if tokens else ""), "",
             "| model | val loss | val perplexity |", "|---|---|---|"]
    for key in v:
        lines.append(f"| {labels[key]} | {v[key]['loss']:.4f} | {v[key]['ppl']:.2f} |")
    lines.append("")
    if summary["gap_closed"] is not None:
        lines.append(f"Fine-tuning closed {100 * summary['gap_closed']:.1f}% of the validation-loss gap between the "
                     "converted model and the teacher.")
    suites = summary["suites"]
    if suites.get("tasks"):
        names = [k for k in ("teacher", "baseline", "converted", "finetuned")
                 if any(k in r for r in suites["tasks"].values())]
        heads = {"teacher": "teacher", "baseline": summary.get("baseline"), "converted": "Liger, converted",
                 "finetuned": "Liger, fine-tuned"}
        limit = f", first {suites['limit']} documents per task" if suites.get("limit") else ""
        lines += ["", f"lm-eval (0-shot{limit}):", "",
                  "| task | metric | " + " | ".join(heads[k] for k in names) + " |",
                  "|---|---|" + "---|" * len(names)]
        rows = list(suites["tasks"].items())
        if suites.get("average"):
            rows.append(("**average**", dict(metric="", **suites["average"])))
        for task, r in rows:
            cells = [f"{r[k]:.3f}" if k in r else "n/a" for k in names]
            lines.append(f"| {task} | {r['metric']} | " + " | ".join(cells) + " |")
        for task, reason in suites.get("skipped", {}).items():
            lines.append(f"Skipped {task}: {reason}")
    elif not suites:
        lines.append("lm-eval: no tasks configured (eval.tasks is empty).")
    if summary.get("verdict"):
        lines += [""] + summary["verdict"]
    lines.append("")
    tps = summary.get("tokens_per_s")
    lines.append(f"Wall time {summary['wall_seconds'] / 60:.1f} min (fine-tuning "
                 f"{summary['train_seconds'] / 60:.1f} min" + (f", {tps:.0f} tokens/s" if tps else "") + ").")
    lines.append(f"Fine-tuned model: {summary['final']}")
    return "\n".join(lines)
