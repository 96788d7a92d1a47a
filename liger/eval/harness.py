"""lm-evaluation-harness (0.4.13) on an in-memory model: named suites, the offline tasks, one result format.

Suites:

* ``paper``: the Liger paper's conventions (docs/evaluation.md): piqa acc, arc_easy acc, arc_challenge acc_norm,
  hellaswag acc_norm, winogrande acc, all 0-shot, and mmlu 5-shot acc. Needs the Hugging Face Hub.
* ``offline``: samples of three BIG-bench tasks shipped in ``liger/eval/tasks`` (see its README), chosen so
  that SmolLM2-135M scores clearly above chance. Needs nothing but the package.

Any other lm-eval task name (or a task of ``include_path``) may be given too; its headline metric is the
first one the task reports.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from .models import check_causal_lm, load_checkpoint

logger = logging.getLogger("liger")

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


@dataclass(frozen=True)
class SuiteTask:
    name: str
    metric: str
    num_fewshot: int = 0


SUITES: dict[str, list[SuiteTask]] = {
    "paper": [
        SuiteTask("piqa", "acc"),
        SuiteTask("arc_easy", "acc"),
        SuiteTask("arc_challenge", "acc_norm"),
        SuiteTask("hellaswag", "acc_norm"),
        SuiteTask("winogrande", "acc"),
        SuiteTask("mmlu", "acc", num_fewshot=5),
    ],
    "offline": [
        SuiteTask("bb_hyperbaton", "acc"),
        SuiteTask("bb_social_iqa", "acc_norm"),
        SuiteTask("bb_context_qa", "acc"),
    ],
}

CHANCE = {"bb_hyperbaton": 0.5, "bb_social_iqa": 1 / 3, "bb_context_qa": 0.5}
"""Accuracy of uniform guessing on the offline tasks (from their number of choices)."""


def offline_task_config(name: str) -> dict:
    """The lm-eval config of an offline task, with its data file resolved to an absolute path."""
    config = yaml.safe_load((TASKS_DIR / f"{name}.yaml").read_text())
    files = config["dataset_kwargs"]["data_files"]
    files["test"] = str(TASKS_DIR / files["test"])
    return config


def resolve_tasks(tasks: str | list[str], include_path: str | os.PathLike | None = None,
                  manager=None) -> list[SuiteTask]:
    """Expand suite names and check every task name; metric "" = the task's first reported metric.

    Raises:
        ValueError: an unknown task or suite name (lm-eval's registry, the offline tasks and ``include_path``
            are searched), or an include path that is not a directory.
    """
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    names = [n for n in names if n]
    if not names:
        raise ValueError("no task given")
    if include_path is not None and not os.path.isdir(include_path):
        raise ValueError(f"--include-path '{include_path}' is not a directory")
    resolved: list[SuiteTask] = []
    unknown = []
    for name in names:
        if name in SUITES:
            resolved += SUITES[name]
            continue
        offline = {t.name: t for t in SUITES["offline"]}
        if name in offline:
            resolved.append(offline[name])
            continue
        if manager is None:
            manager = task_manager(include_path)
        if name in manager.all_tasks:
            resolved.append(SuiteTask(name, ""))
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}: not a suite ({', '.join(SUITES)}), an offline task "
                         f"or an lm-eval task" + (f" (with --include-path {include_path})" if include_path else ""))
    seen = set()
    return [t for t in resolved if not (t.name in seen or seen.add(t.name))]


def task_manager(include_path=None):
    """lm-eval's index of its built-in tasks plus those of ``include_path`` (building it takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=os.fspath(include_path) if include_path else None)


def evaluate(
    model_or_path,
    tasks: str | list[str] = "offline",
    limit: int | None = None,
    batch_size: int = 8,
    include_path: str | os.PathLike | None = None,
    tokenizer=None,
    device: str | None = None,
    seed: int = 0,
) -> dict:
    """Evaluate a causal LM with lm-eval on tasks or suites (see the module docstring).

    Args:
        model_or_path: a loaded transformers causal LM (evaluated as it is: device, dtype, adapters) or a
            checkpoint directory.
        tasks: suite and/or task names, as a list or comma-separated. Default: ``"offline"``.
        limit: evaluate only the first ``limit`` documents of each task (None = all).
        batch_size: lm-eval's batch size.
        include_path: a folder of extra lm-eval task YAMLs.
        tokenizer: the model's tokenizer (required with a model object; loaded from the path otherwise).
        device: where to run a model loaded from a path (default: cuda if available, else cpu).
        seed: lm-eval's random, numpy, torch and few-shot seeds.

    Returns:
        ``{"tasks": {name: {"metric": str, "value": float, "stderr": float | None, "num_fewshot": int,
        "samples": int | None, "metrics": {metric: value, metric_stderr: value, ...}}},
        "skipped": {name: one-line reason}}``; ``metric`` is the task's headline metric (the suite's
        convention), ``samples`` the number of documents scored. Tasks whose data cannot be loaded (e.g.
        hub tasks offline) are left out of ``tasks`` and named in ``skipped``.

    Raises:
        ValueError: unknown task names; RuntimeError: no task could be loaded.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if include_path is not None and not os.path.isdir(include_path):
        raise ValueError(f"--include-path '{include_path}' is not a directory")
    manager = task_manager(include_path)
    selected = resolve_tasks(tasks, include_path, manager)
    if isinstance(model_or_path, (str, os.PathLike)):
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        loaded = load_checkpoint(model_or_path, device=device, tokenizer=tokenizer)
        model, tokenizer = loaded.model, loaded.tokenizer
    else:
        model = model_or_path
        check_causal_lm(model)
        if tokenizer is None:
            raise ValueError("pass the tokenizer with an in-memory model")

    specs, skipped = {}, {}
    for task in selected:
        spec = offline_task_config(task.name) if task.name in CHANCE else task.name
        try:
            manager.load([spec])  # builds the task, which downloads (or finds cached) its data
        except Exception as err:  # noqa: BLE001  (any loading failure: offline hub, missing files, bad YAML)
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            skipped[task.name] = reason
            logger.warning("liger eval: task '%s' skipped, its data could not be loaded (%s)", task.name, reason)
            continue
        specs[task.name] = (task, spec)
    if not specs:
        raise RuntimeError(f"no task could be loaded ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")

    was_training = model.training
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    results: dict[str, dict] = {}
    try:
        for fewshot in sorted({task.num_fewshot for task, _ in specs.values()}):
            group = {name: spec for name, (task, spec) in specs.items() if task.num_fewshot == fewshot}
            out = lm_eval.simple_evaluate(
                model=lm, tasks=list(group.values()), num_fewshot=fewshot, limit=limit, task_manager=manager,
                log_samples=False, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
            for name in group:
                results[name] = _summarize(out, name, specs[name][0])
    finally:
        model.train(was_training)
    return {"tasks": results, "skipped": skipped}


def _summarize(out: dict, name: str, task: SuiteTask) -> dict:
    raw = out["results"][name]
    metrics = {}
    for key, value in raw.items():
        if key == "alias" or "," not in key:
            continue
        metric = key.split(",")[0]
        metrics[metric] = value if isinstance(value, (int, float)) else None
    headline = task.metric or next(m for m in metrics if not m.endswith("_stderr"))
    if headline not in metrics:
        raise RuntimeError(f"task '{name}' reported no '{headline}' (it reported {', '.join(metrics)})")
    samples = out.get("n-samples", {}).get(name, {}).get("effective")
    return {"metric": headline, "value": metrics[headline], "stderr": metrics.get(f"{headline}_stderr"),
            "num_fewshot": task.num_fewshot, "samples": samples, "metrics": metrics}


def average(task_results: dict) -> float | None:
    """Mean headline value over tasks (None when there are none)."""
    values = [r["value"] for r in task_results.values() if r["value"] is not None]
    return sum(values) / len(values) if values else None
