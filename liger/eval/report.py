"""Everything ``liger eval`` measures for one model, and the recovery report comparing students to a teacher.

A report holds, per model: the lm-eval tasks (headline metric, value, stderr), their average, perplexity
on text files and the long-context measures (passkey and multi-key retrieval accuracy per length, loss by
position, repeated-span recall; :mod:`liger.eval.long_context`); per student: the recovery of each task and
of the average (% of the teacher's value) and the perplexity ratio (student / teacher). It is written as
JSON, Markdown, a bar chart of the tasks and one plot per long-context measure (PNG), with the versions, git
commit, device, seed and limits that reproduce it.
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
from .long_context import MEASURES, check_long_context, long_context
from .models import build_student, check_causal_lm, is_student_spec, load_checkpoint, load_tokenizer
from .ppl import perplexity

logger = logging.getLogger("liger")


def measure(model, tokenizer, tasks: str | list[str] | None = "offline", limit: int | None = None,
            batch_size: int = 8, include_path=None, ppl_files=(), ppl_context: int = 512, ppl_stride: int = 256,
            ppl_max_tokens: int | None = None, passkey_lengths=(), passkey_trials: int = 20, seed: int = 0,
            long_text=None, multikey_lengths=(), multikey_trials: int = 20, multikey_pairs: int = 4,
            position_length: int | None = None, position_sequences: int = 20, position_edges=None,
            repeat_gaps=(), repeat_trials: int = 20) -> dict:
    """lm-eval tasks (None = none), perplexity (if ``ppl_files``) and the long-context measures asked for
    (:func:`~liger.eval.long_context.long_context`: passkey if ``passkey_lengths``, multi-key retrieval if
    ``multikey_lengths``, loss by position if ``position_length``, repeated-span recall if ``repeat_gaps``;
    the last three read ``long_text``) of one loaded model. Returns ``{"tasks", "skipped", "average", "ppl",
    "passkey", "multikey", "position_loss", "repeat_recall", "seconds"}`` (and ``"long_context_seconds"``, wall
    seconds per long-context measure, when one ran; see
    :func:`~liger.eval.harness.evaluate`, :func:`~liger.eval.ppl.perplexity` and the long-context functions;
    a measure not asked for is None)."""
    check_causal_lm(model)
    start = time.time()
    result = {"tasks": {}, "skipped": {}, "average": None, "ppl": None, **{name: None for name in MEASURES}}
    if tasks:
        result.update(evaluate(model, tasks, limit=limit, batch_size=batch_size, include_path=include_path,
                               tokenizer=tokenizer, seed=seed))
        result["average"] = average(result["tasks"])
    if ppl_files:
        result["ppl"] = perplexity(model, tokenizer, ppl_files, ppl_context, ppl_stride, ppl_max_tokens)
    if passkey_lengths or multikey_lengths or position_length is not None or repeat_gaps:
        measured = long_context(model, tokenizer, long_text, passkey_lengths=passkey_lengths,
                                passkey_trials=passkey_trials, multikey_lengths=multikey_lengths,
                                multikey_trials=multikey_trials, multikey_pairs=multikey_pairs,
                                position_length=position_length, position_sequences=position_sequences,
                                position_edges=position_edges, repeat_gaps=repeat_gaps, repeat_trials=repeat_trials,
                                seed=seed)
        result.update({name: measured[name] for name in MEASURES})
        result["long_context_seconds"] = measured["seconds"]
    result["seconds"] = round(time.time() - start, 1)
    return result


def compare(teacher: str, students: list[str], device: str = "cpu", dtype: str = "float32", tokenizer=None,
            **measure_options) -> dict:
    """Measure a teacher and its students the same way; students are checkpoint paths or the zero-training
    specs ``swa:W:S`` and ``convert:VARIANT`` (see :mod:`liger.eval.models`). Models are loaded one at a
    time. ``measure_options`` are :func:`measure`'s; the long-context settings and ``long_text`` are checked
    with the teacher's tokenizer before any model is loaded, and the text is tokenized once for all models
    that share that tokenization.

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
    # the long-context settings and text, checked (and the text tokenized once) with the teacher's tokenizer
    long_options = {k: measure_options[k] for k in _LONG_CONTEXT_OPTIONS if k in measure_options}
    long_options["texts"] = long_options.pop("long_text", None)
    if any(long_options.get(k) for k in ("passkey_lengths", "multikey_lengths", "repeat_gaps")) or \
            long_options.get("position_length") is not None:
        corpus = check_long_context(load_tokenizer(teacher, tokenizer), **long_options)
        if corpus is not None:
            measure_options = dict(measure_options, long_text=corpus)
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


_LONG_CONTEXT_OPTIONS = ("long_text", "passkey_lengths", "passkey_trials", "multikey_lengths", "multikey_trials",
                         "multikey_pairs", "position_length", "position_sequences", "position_edges", "repeat_gaps",
                         "repeat_trials")


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
    lines += _long_context_markdown(report, names, header.rstrip("\n"))
    skipped = {n: m["skipped"] for n, m in models.items() if m.get("skipped")}
    if skipped:
        lines += ["## Skipped tasks", ""] + [f"- `{n}`: {t}: {why}" for n, s in skipped.items() for t, why in s.items()]
        lines.append("")
    return "\n".join(lines)


def _accuracy_cell(r: dict | None) -> str:
    if r is None:
        return "–"
    cell = _fmt(r["accuracy"], 2)
    if r.get("wilson95"):
        cell += " [{:.2f}, {:.2f}]".format(*r["wilson95"])
    return cell


def _pm(value, err, digits=2) -> str:
    return _fmt(value, digits) + (f" ± {err:.{digits}f}" if err is not None else "")


def _long_context_markdown(report: dict, names: list[str], header: str) -> list[str]:
    """Tables of the long-context measures the teacher has: retrieval accuracy by length, loss by position
    beside the teacher's, repeated-span recall by distance."""
    teacher, models = report["teacher"], report["models"]
    lines = []
    for key, title in (("passkey", "Passkey retrieval accuracy"), ("multikey", "Multi-key retrieval accuracy")):
        ref = models[teacher].get(key)
        if not ref:
            continue
        pairs = f"{ref['pairs']} pairs per prompt, " if "pairs" in ref else ""
        interval = "; [Wilson 95 % interval]" if any("wilson95" in r for r in ref["lengths"].values()) else ""
        lines += [f"## {title} ({pairs}{ref['trials']} trials per length, seed {ref['seed']}{interval})", "", header]
        for length in ref["lengths"]:
            cells = [_accuracy_cell((models[n].get(key) or {}).get("lengths", {}).get(length)) for n in names]
            lines.append(f"| {length} tokens | " + " | ".join(cells) + " |")
        lines.append("")
    ref = models[teacher].get("position_loss")
    if ref:
        lines += [f"## Loss by position (mean nats per token ± stderr over {ref['sequences']} sequences of "
                  f"{ref['length']} tokens; students: difference to the teacher)", "",
                  "Position p = tokens before the predicted one; a 64-key sliding window sees all of them up to "
                  "p = 63 (whole documents of .jsonl files, else consecutive segments of the text files).", "", header]
        for label, bucket in ref["buckets"].items():
            cells = []
            for n in names:
                r = (models[n].get("position_loss") or {}).get("buckets", {}).get(label)
                cell = _pm(r["nll"], r["stderr"], 3) if r else "–"
                if r and n != teacher:
                    cell += f" ({r['nll'] - bucket['nll']:+.3f})"
                cells.append(cell)
            lines.append(f"| positions {bucket['start']}–{bucket['end']} ({bucket['tokens']} tokens) | "
                         + " | ".join(cells) + " |")
        cells = []
        for n in names:
            r = models[n].get("position_loss")
            cells.append(_fmt(r["nll"], 3) + (f" ({r['nll'] - ref['nll']:+.3f})" if n != teacher else "") if r else "–")
        lines += ["| all positions | " + " | ".join(cells) + " |", ""]
    ref = models[teacher].get("repeat_recall")
    if ref:
        lo, hi = ref["paragraph_tokens"]
        lines += [f"## Repeated-span recall (a paragraph of {lo}-{hi} tokens, D tokens of other text, the "
                  f"paragraph again; drop = its mean loss at the first minus at the second occurrence, nats per "
                  f"token ± stderr over {ref['trials']} trials, seed {ref['seed']}; in brackets first → second)", "",
                  header]
        for gap in ref["gaps"]:
            cells = []
            for n in names:
                r = (models[n].get("repeat_recall") or {}).get("gaps", {}).get(gap)
                cells.append(f"{_pm(r['drop'], r['drop_stderr'])} ({r['first']:.2f} → {r['second']:.2f})" if r else "–")
            lines.append(f"| D = {gap} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_MARKERS = "os^Dv<>pPX*h"


def _style(report: dict, i: int, name: str) -> dict:
    """The teacher as a thick black line, each student with its own marker (so overlapping lines stay visible)."""
    if name == report["teacher"]:
        return dict(color="black", linewidth=2.5, marker="o", label=f"{name} (teacher)")
    return dict(marker=_MARKERS[(i - 1) % len(_MARKERS)], markersize=5, alpha=0.85, label=name)


def _length_axis(ax, values: list[int], label: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(values), [str(v) for v in sorted(values)])
    ax.minorticks_off()
    ax.set_xlabel(label)


def plot_retrieval(report: dict, path: str | os.PathLike) -> None:
    """Passkey and multi-key retrieval accuracy by prompt length, one line per model (Wilson 95 % bars)."""
    plt = _pyplot()
    names, models = [report["teacher"]] + report["students"], report["models"]
    keys = [k for k in ("passkey", "multikey") if models[report["teacher"]].get(k)]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, name in enumerate(names):
            lengths = (models[name].get(key) or {}).get("lengths", {})
            xs = sorted(lengths, key=int)
            ys = [lengths[x]["accuracy"] for x in xs]
            if "wilson95" in (lengths[xs[0]] if xs else {}):
                err = [[y - lengths[x]["wilson95"][0] for x, y in zip(xs, ys)],
                       [lengths[x]["wilson95"][1] - y for x, y in zip(xs, ys)]]
            else:
                err = None
            ax.errorbar([int(x) for x in xs], ys, yerr=err, capsize=3, **_style(report, i, name))
        _length_axis(ax, [int(x) for x in models[report["teacher"]][key]["lengths"]], "prompt length (tokens)")
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("accuracy (bars: Wilson 95 %)")
        ref = models[report["teacher"]][key]
        ax.set_title("passkey" if key == "passkey" else f"multi-key ({ref['pairs']} pairs)")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_position_loss(report: dict, path: str | os.PathLike) -> None:
    """Mean loss per position bucket, one line per model (standard-error bars)."""
    plt = _pyplot()
    names, models = [report["teacher"]] + report["students"], report["models"]
    ref = models[report["teacher"]]["position_loss"]
    labels = list(ref["buckets"])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(labels) + 3), 4))
    for i, name in enumerate(names):
        buckets = (models[name].get("position_loss") or {}).get("buckets", {})
        xs = [j for j, label in enumerate(labels) if label in buckets]
        ys = [buckets[labels[j]]["nll"] for j in xs]
        err = [buckets[labels[j]]["stderr"] or 0.0 for j in xs]
        ax.errorbar(xs, ys, yerr=err, capsize=3, **_style(report, i, name))
    ax.set_xticks(range(len(labels)), [label.replace("-", "–") for label in labels])
    ax.set_xlabel("position (tokens before the predicted one)")
    ax.set_ylabel("mean loss (nats per token, ± stderr)")
    ax.set_title(f"Loss by position ({ref['sequences']} sequences of {ref['length']} tokens)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_repeat_recall(report: dict, path: str | os.PathLike) -> None:
    """Repeated-span recall: the loss drop at the second occurrence by distance D, one line per model."""
    plt = _pyplot()
    names, models = [report["teacher"]] + report["students"], report["models"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, name in enumerate(names):
        gaps = (models[name].get("repeat_recall") or {}).get("gaps", {})
        xs = sorted(gaps, key=int)
        ax.errorbar([int(x) for x in xs], [gaps[x]["drop"] for x in xs],
                    yerr=[gaps[x]["drop_stderr"] or 0.0 for x in xs], capsize=3, **_style(report, i, name))
    ax.axhline(0.0, color="black", linewidth=0.8, linestyle="dotted")
    _length_axis(ax, [int(x) for x in models[report["teacher"]]["repeat_recall"]["gaps"]],
                 "distance D between the occurrences (tokens)")
    ax.set_ylabel("loss drop at the repeat (nats per token, ± stderr)")
    ax.set_title("Repeated-span recall")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """``report.json``, ``report.md``, (with tasks) ``report.png`` and, for the long-context measures the
    teacher has, ``retrieval.png``, ``position_loss.png`` and ``repeat_recall.png`` in ``out_dir``; returns
    their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths["md"].write_text(markdown(report))
    teacher = report["models"][report["teacher"]]
    if teacher["tasks"]:
        paths["png"] = out / "report.png"
        plot(report, paths["png"])
    for key, present, draw in (("retrieval", teacher.get("passkey") or teacher.get("multikey"), plot_retrieval),
                               ("position_loss", teacher.get("position_loss"), plot_position_loss),
                               ("repeat_recall", teacher.get("repeat_recall"), plot_repeat_recall)):
        if present:
            paths[key] = out / f"{key}.png"
            draw(report, paths[key])
    return paths
