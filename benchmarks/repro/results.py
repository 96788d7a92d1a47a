"""The results page (``docs/results.md``): corpus, runs, recovery tables, loss curves and the commands."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from .common import (
    STUDENTS,
    _num,
    load_manifest,
    read_summary,
)
from .train import training_table


def write_results(args, report, runs, names, trained, corpus, output_dir, cmd, shown, eval_seconds) -> None:
    """``REPORT/loss_curves.png`` and ``REPORT/results.md`` (and ``--results-md``) from a finished evaluation."""
    plot_loss_curves(runs, trained, output_dir / "loss_curves.png")
    text = results_markdown(report, runs, names, corpus, output_dir, cmd, shown, eval_seconds, args.results_md)
    (output_dir / "results.md").write_text(text)
    targets = [output_dir / "results.md"]
    if args.results_md:
        Path(args.results_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results_md).write_text(text)
        targets.append(Path(args.results_md))
    print("reproduce eval: wrote " + ", ".join(str(t) for t in targets) + f" (liger eval: {eval_seconds:.0f} s)")


def plot_loss_curves(runs: Path, students: list[str], png: Path) -> None:
    """Training loss (smoothed) and validation loss of every student, the teacher's validation loss dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from liger.train.metrics import read_metrics

    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(13, 4.6))
    teacher = None
    metrics = {name: read_metrics(runs / name / "metrics.jsonl") for name in students}
    finals = [max((e["tokens"] for e in m if e["type"] == "train"), default=0) for m in metrics.values()]
    log_x = bool(finals) and min(finals) > 0 and max(finals) > 4 * min(finals)  # budgets differ: log axis
    for i, (name, entries) in enumerate(metrics.items()):
        train = [e for e in entries if e["type"] == "train"]
        val = [e for e in entries if e["type"] == "val" and "model" not in e and not (log_x and e["step"] == 0)]
        teacher = teacher or next((e["val_loss"] for e in entries if e.get("model") == "teacher"), None)
        color = plt.get_cmap("tab20")(i % 20) if len(students) > 10 else f"C{i}"
        if train:
            window = max(1, len(train) // 25)
            losses = [e["loss"] for e in train]
            smooth = [sum(losses[max(0, j - window + 1):j + 1]) / len(losses[max(0, j - window + 1):j + 1])
                      for j in range(len(losses))]
            ax_train.plot([e["tokens"] / 1e6 for e in train], smooth, color=color, lw=1.2, label=name)
            per_step = train[0]["tokens"]
            ax_val.plot([e["step"] * per_step / 1e6 for e in val], [e["val_loss"] for e in val], "o-", color=color,
                        ms=3, label=name)
    for ax, title in ((ax_train, "training loss (moving average)"), (ax_val, "validation loss")):
        if teacher is not None:
            ax.axhline(teacher, ls="--", color="gray", label="teacher (validation)")
        ax.set_xlabel("training tokens (millions" + (", log scale)" if log_x else ")"))
        if log_x:
            ax.set_xscale("log")
        ax.set_ylabel("loss (nats / token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    top = (teacher or 2.0) + 3.0
    ax_train.set_ylim(top=top)
    ax_val.set_ylim(top=top)
    ax_val.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


READING_PLACEHOLDER = "<!-- READING: to be written by a person after looking at the numbers -->"


def _rel(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:
        return str(path)


def results_markdown(report: dict, runs: Path, students: list[str], corpus: Path, output_dir: Path, eval_cmd: list,
                     argv: list[str], eval_seconds: float, results_md: str | None) -> str:
    """``docs/results.md``: corpus, runs, the recovery tables, loss curves, commands; the reading is
    ``REPORT/reading.md`` or a placeholder."""
    from liger.eval.harness import CHANCE
    from liger.eval.report import markdown

    manifest = load_manifest(corpus)
    md_dir = Path(results_md).resolve().parent if results_md else output_dir
    teacher = report["teacher"]
    names = report["students"]
    models, recovery = report["models"], report["recovery"]
    tasks = list(models[teacher]["tasks"])
    prov = report.get("provenance", {})
    # the reading is a person's: kept in REPORT/reading.md, so that re-rendering the page does not lose it
    reading_file = output_dir / "reading.md"
    reading = reading_file.read_text().strip() if reading_file.is_file() else READING_PLACEHOLDER
    lines = ["# Reproducing Liger's recovery at small scale", "",
             f"SmolLM2-135M-Instruct (the teacher) linearized into {len(students)} students with the same recipe, "
             "compared with the teacher and three students without training. Generated by "
             "`benchmarks/reproduce.py eval`; only the reading below is written by hand.", "",
             "## Reading", "", reading, ""]
    # corpus
    lines += ["## Corpus", "",
              f"Real English text from packages only (`benchmarks/reproduce.py corpus`); per source the last "
              f"documents (>= {100 * manifest['heldout_fraction']:.0f} % of its bytes) are held out (perplexity "
              f"below, never trained on), the documents before them (>= {100 * manifest['validation_fraction']:.1f} %) "
              "are the validation split, the rest is trained on. Tokens are SmolLM2's.", "",
              "| source | package | documents | train tokens | validation tokens | held-out tokens |",
              "|---|---|---|---|---|---|"]
    for name, s in manifest["sources"].items():
        lines.append(f"| {name} | {s['package']} {s['version']} | {s['documents']} | {s['train']['tokens']:,} | "
                     f"{s['validation']['tokens']:,} | {s['heldout']['tokens']:,} |")
    lines += [f"| **total** | | | {manifest['train_tokens']:,} | {manifest['validation_tokens']:,} | "
              f"{manifest['heldout_tokens']:,} |", ""]
    # runs
    summaries = [read_summary(runs, n) for n in students]
    budgets = [s_["tokens_budget"] for n, s_ in zip(students, summaries) if "tokens_budget" in s_ and "@" not in n]
    default_budget = max(set(budgets), key=budgets.count) if budgets else None
    first = next((s_ for s_ in summaries if s_.get("status") == "ok" and s_.get("tokens_budget") == default_budget),
                 next((s_ for s_ in summaries if s_.get("status") == "ok"), {}))
    gpus = len({s_.get("gpu") for s_ in summaries} - {None}) or 1
    mixed = len({s_.get("steps") for s_ in summaries if s_.get("status") == "ok"}) > 1
    own_budget = " unless the student's name ends in @TOKENS, its own budget (steps and tokens of every run in " \
        "the table below)" if mixed else ""
    lines += ["## Students and their runs", "",
              f"Recipe (all students): LoRA r=8 α=8 on q/k/v, AdamW lr 1e-3 constant, no warm-up, no clipping, "
              f"{first.get('sequence_length', '?')}-token packed chunks, {first.get('sequences_per_step', '?')} "
              f"sequences per optimizer step, {first.get('steps', '?')} steps "
              f"({first.get('tokens', 0):,} tokens){own_budget}, seed 0; validation loss on the validation split "
              "(token-weighted). GPU seconds are each student's process wall time on its GPU (loading, "
              "autotuning, validation and saving included) divided by the number of students sharing that GPU "
              f"at once ({first.get('processes_per_gpu', 1)}, `--per-gpu`); train seconds are the optimizer steps "
              f"only. GPU: {first.get('gpu_name', '?')}.", "",
              "| student | Liger options | loss |", "|---|---|---|"]
    for name in students:
        s = read_summary(runs, name)
        opts = ", ".join(f"{k}={v}" for k, v in (s.get("liger") or STUDENTS.get(name, {}).get("liger", {})).items())
        lines.append(f"| {name} | {opts} | {s.get('loss', '?')} |")
    lines += ["", training_table(runs, students), ""]
    if (output_dir / "loss_curves.png").is_file():
        lines += [f"![loss curves]({_rel(output_dir / 'loss_curves.png', md_dir)})", ""]
    # recovery table
    lines += ["## Recovery", "",
              f"Offline suite (BIG-bench samples shipped with liger), {report['config'].get('limit') or 'all'} "
              f"documents per task; value (students: % of the teacher). Average = mean of the task values; "
              f"recovery = student average / teacher average.", ""]
    header = "| model | " + " | ".join(f"{t} ({models[teacher]['tasks'][t]['metric']})" for t in tasks) + \
        " | average | recovery | perplexity (× teacher) | " + " | ".join(
            f"passkey {n}" for n in (models[teacher].get("passkey") or {}).get("lengths", {})) + " |"
    ncols = header.count("|") - 1
    lines += [header, "|" + "---|" * ncols]
    for name in [teacher] + names:
        m = models[name]
        cells = []
        for t in tasks:
            r = m["tasks"].get(t)
            cell = _num(r["value"] if r else None)
            if name != teacher and recovery[name]["tasks"].get(t) is not None:
                cell += f" ({recovery[name]['tasks'][t]:.0f}%)"
            cells.append(cell)
        cells.append(_num(m.get("average")))
        cells.append("100%" if name == teacher else _num(recovery[name]["average"], "{:.1f}%"))
        ppl = (m.get("ppl") or {}).get("ppl")
        ratio = None if name == teacher else recovery[name]["ppl_ratio"]
        cells.append(_num(ppl, "{:.2f}") + (f" (×{ratio:.2f})" if ratio is not None else ""))
        for p in ((m.get("passkey") or {}).get("lengths") or {}).values():
            cells.append(_num(p["accuracy"], "{:.2f}"))
        label = f"`{name}`" + (" (teacher)" if name == teacher else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    chance = ", ".join(f"{t} {CHANCE[t]:.3f}" for t in tasks if t in CHANCE)
    lines += ["", f"Chance: {chance}. Zero-training students: `swa:64:4` (the teacher with a 64-key window + 4 "
              "sink tokens), `swa:64:0` (window only), `convert:gla` (Liger-GLA before fine-tuning).", ""]
    # perplexity per held-out file
    if models[teacher].get("ppl"):
        files = list(models[teacher]["ppl"]["files"])
        p = models[teacher]["ppl"]
        lines += [f"### Perplexity per held-out source (context {p['context']}, stride {p['stride']}, first "
                  f"{report['config'].get('ppl_max_tokens')} tokens of each file)", "",
                  "| model | " + " | ".join(Path(f).stem for f in files) + " | all |",
                  "|" + "---|" * (len(files) + 2)]
        for name in [teacher] + names:
            pp = models[name]["ppl"]
            lines.append(f"| `{name}` | " + " | ".join(_num(pp["files"][f]["ppl"], "{:.2f}") for f in files) +
                         f" | {_num(pp['ppl'], '{:.2f}')} |")
        lines.append("")
    lines += ["## Full report (`liger eval --compare`)", "",
              f"`{_rel(output_dir / 'report.json', md_dir)}` holds every number with its standard error, the "
              "settings and the provenance; the report's own Markdown follows.", ""]
    body = markdown(report).split("\n", 2)[2] if markdown(report).startswith("# ") else markdown(report)
    lines += [body.replace("\n## ", "\n### "), ""]
    # commands
    lines += ["## Commands", "", "```bash",
              "python benchmarks/reproduce.py corpus --out CORPUS",
              "python benchmarks/reproduce.py train --corpus CORPUS --students " + ",".join(students) +
              f" --tokens {default_budget or 'N'} --gpus {gpus} --per-gpu {first.get('processes_per_gpu', 1)}"
              " --out RUNS",
              "python benchmarks/reproduce.py " + " ".join(shlex.quote(a) for a in argv),
              "```", "", "which ran (from the folder of the merged students):", "", "```bash",
              " ".join(shlex.quote(c) for c in ["liger", *eval_cmd[3:]]), "```", "",
              f"Evaluation: {eval_seconds:.0f} s on {prov.get('device', report['config'].get('device'))}, "
              f"liger {prov.get('liger', '?')} (git {str(prov.get('git_commit', '?'))[:10]}), torch "
              f"{prov.get('torch', '?')}, transformers {prov.get('transformers', '?')}, lm-eval "
              f"{prov.get('lm-eval', '?')}.", ""]
    return "\n".join(lines)
