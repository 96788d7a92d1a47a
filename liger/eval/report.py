"""Everything ``liger eval`` measures for one model, and the recovery report comparing students to a teacher.

A report holds, per model: the lm-eval tasks (headline metric, value, stderr), their average, perplexity
on text files and passkey accuracy per length; per student: the recovery of each task and of the average
(% of the teacher's value) and the perplexity ratio (student / teacher). It is written as JSON, Markdown
and a bar chart (PNG), with the versions, git commit, device, seed and limits that reproduce it.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from pathlib import Path

from ..provenance import provenance  # noqa: F401  (liger eval records it with every result)
from .harness import CHANCE, average, evaluate
from .models import build_student, check_causal_lm, is_student_spec, load_checkpoint
from .passkey import passkey
from .ppl import perplexity

logger = logging.getLogger("liger")


def measure(model, tokenizer, tasks: str | list[str] | None = "offline", limit: int | None = None,
            batch_size: int = 8, include_path=None, ppl_files=(), ppl_context: int = 512, ppl_stride: int = 256,
            ppl_max_tokens: int | None = None, passkey_lengths=(), passkey_trials: int = 5, seed: int = 0) -> dict:
    """lm-eval tasks (None = none), perplexity (if ``ppl_files``) and passkey (if ``passkey_lengths``) of
    one loaded model. Returns ``{"tasks", "skipped", "average", "ppl", "passkey", "seconds"}`` (see
    :func:`~liger.eval.harness.evaluate`, :func:`~liger.eval.ppl.perplexity`, :func:`~liger.eval.passkey.passkey`;
    ``ppl``/``passkey`` are None when not measured)."""
    check_causal_lm(model)
    start = time.time()
    result = {"tasks": {}, "skipped": {}, "average": None, "ppl": None, "passkey": None}
    if tasks:
        result.update(evaluate(model, tasks, limit=limit, batch_size=batch_size, include_path=include_path,
                               tokenizer=tokenizer, seed=seed))
        result["average"] = average(result["tasks"])
    if ppl_files:
        result["ppl"] = perplexity(model, tokenizer, ppl_files, ppl_context, ppl_stride, ppl_max_tokens)
    if passkey_lengths:
        result["passkey"] = passkey(model, tokenizer, passkey_lengths, passkey_trials, seed)
    result["seconds"] = round(time.time() - start, 1)
    return result


def compare(teacher: str, students: list[str], device: str = "cpu", dtype: str = "float32", tokenizer=None,
            **measure_options) -> dict:
    """Measure a teacher and its students the same way; students are checkpoint paths or the zero-training
    specs ``swa:W:S`` and ``convert:VARIANT`` (see :mod:`liger.eval.models`). Models are loaded one at a
    time. ``measure_options`` are :func:`measure`'s.

    Returns:
        ``{"teacher": name, "students": [names], "models": {name: measure(...)}, "recovery": {student:
        {"tasks": {task: % of teacher}, "average": %, "ppl_ratio": student/teacher ppl}}}``.
    """
    if not students:
        raise ValueError("--compare needs a teacher and at least one student")
    if is_student_spec(teacher):
        raise ValueError(f"the teacher must be a checkpoint, got the student spec '{teacher}'")
    # check every student spec before the teacher's evaluation
    from liger.assets import resolve_model

    for spec in students:
        if is_student_spec(spec):
            _check_student_spec(spec)
        else:
            resolve_model(spec)
    loaded = load_checkpoint(teacher, dtype=dtype, device=device, tokenizer=tokenizer)
    models = {}
    logger.info("liger eval: measuring the teacher %s", teacher)
    models[teacher] = measure(loaded.model, loaded.tokenizer, **measure_options)
    for spec in students:
        logger.info("liger eval: measuring the student %s", spec)
        if is_student_spec(spec):
            student, student_tokenizer = build_student(spec, loaded.model).eval(), loaded.tokenizer
        else:
            other = load_checkpoint(spec, dtype=dtype, device=device, tokenizer=tokenizer)
            student, student_tokenizer = other.model, other.tokenizer
        models[spec] = measure(student, student_tokenizer, **measure_options)
        del student
        gc.collect()
    return {"teacher": teacher, "students": list(students), "models": models,
            "recovery": {s: recovery(models[teacher], models[s]) for s in students}}


def _check_student_spec(spec: str) -> None:
    from liger.models.configuration_liger import VARIANTS

    from .models import parse_swa

    if spec.startswith("swa:"):
        parse_swa(spec)
    elif spec[len("convert:"):] not in VARIANTS:
        raise ValueError(f"'{spec}': unknown Liger variant (choose from {', '.join(VARIANTS)})")


def recovery(teacher: dict, student: dict) -> dict:
    """Student as % of the teacher per task and on average; perplexity ratio (student / teacher)."""
    def pct(s, t):
        return 100.0 * s / t if s is not None and t else None

    tasks = {name: pct(student["tasks"][name]["value"], result["value"])
             for name, result in teacher["tasks"].items() if name in student["tasks"]}
    ppl_ratio = None
    if teacher.get("ppl") and student.get("ppl"):
        ppl_ratio = student["ppl"]["ppl"] / teacher["ppl"]["ppl"]
    return {"tasks": tasks, "average": pct(student.get("average"), teacher.get("average")), "ppl_ratio": ppl_ratio}


def _fmt(value, digits=3):
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    """The report as Markdown tables (one column per model)."""
    teacher, names = report["teacher"], [report["teacher"]] + report["students"]
    models = report["models"]
    header = "| | " + " | ".join(f"`{n}`" for n in names) + " |\n|---|" + "---|" * len(names) + "\n"
    lines = ["# Recovery report", ""]
    config = report.get("config", {})
    if config:
        lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in config.items()), ""]
    task_names = list(models[teacher]["tasks"])
    if task_names:
        lines += ["## Tasks (value ± stderr; students: % of the teacher)", "", header.rstrip("\n")]
        for task in task_names + ["average"]:
            cells = []
            for name in names:
                if task == "average":
                    value, err = models[name]["average"], None
                else:
                    r = models[name]["tasks"].get(task)
                    value, err = (r["value"], r["stderr"]) if r else (None, None)
                cell = _fmt(value) + (f" ± {err:.3f}" if err is not None else "")
                if name != teacher:
                    rec = report["recovery"][name]
                    pct = rec["average"] if task == "average" else rec["tasks"].get(task)
                    cell += f" ({_fmt(pct, 1)}%)" if pct is not None else ""
                cells.append(cell)
            metric = "" if task == "average" else f" ({models[teacher]['tasks'][task]['metric']}" + (
                f", chance {CHANCE[task]:.3f})" if task in CHANCE else ")")
            label = "**average**" if task == "average" else task
            lines.append(f"| {label}{metric} | " + " | ".join(cells) + " |")
        lines.append("")
    if models[teacher].get("ppl"):
        p = models[teacher]["ppl"]
        lines += [f"## Perplexity (context {p['context']}, stride {p['stride']}, {p['tokens']} tokens; "
                  "students: ratio to the teacher)", "", header.rstrip("\n")]
        cells = []
        for name in names:
            value = models[name]["ppl"]["ppl"]
            ratio = report["recovery"][name]["ppl_ratio"] if name != teacher else None
            cells.append(_fmt(value, 2) + (f" (×{ratio:.2f})" if ratio is not None else ""))
        lines += ["| perplexity | " + " | ".join(cells) + " |", ""]
    if models[teacher].get("passkey"):
        pk = models[teacher]["passkey"]
        lines += [f"## Passkey retrieval accuracy ({pk['trials']} trials per length, seed {pk['seed']})", "",
                  header.rstrip("\n")]
        for length in pk["lengths"]:
            cells = [_fmt(models[n]["passkey"]["lengths"][length]["accuracy"], 2) for n in names]
            lines.append(f"| {length} tokens | " + " | ".join(cells) + " |")
        lines.append("")
    skipped = {n: m["skipped"] for n, m in models.items() if m.get("skipped")}
    if skipped:
        lines += ["## Skipped tasks", ""] + [f"- `{n}`: {t}: {why}" for n, s in skipped.items() for t, why in s.items()]
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: str | os.PathLike) -> None:
    """Grouped bar chart: headline value per task (and the average) for every model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [report["teacher"]] + report["students"]
    models = report["models"]
    tasks = list(models[report["teacher"]]["tasks"])
    groups = tasks + ["average"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) + 2), 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [models[name]["tasks"].get(t, {}).get("value") or 0.0 for t in tasks] + [
            models[name]["average"] or 0.0]
        ax.bar([g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))], values, width, label=name)
    for g, task in enumerate(tasks):
        if task in CHANCE:
            ax.hlines(CHANCE[task], g - 0.4, g + 0.4, colors="black", linestyles="dotted")
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_ylabel("accuracy (dotted: chance)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small")
    ax.set_title("Teacher vs students")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """``report.json``, ``report.md`` and (with tasks) ``report.png`` in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths["md"].write_text(markdown(report))
    if report["models"][report["teacher"]]["tasks"]:
        paths["png"] = out / "report.png"
        plot(report, paths["png"])
    return paths
