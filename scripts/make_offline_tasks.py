"""Regenerate the offline evaluation suite's data (liger/eval/tasks/*.jsonl) from the BIG-bench sdist.

    python scripts/make_offline_tasks.py                       # downloads bigbench==1.0.0 (358 MB) from PyPI
    python scripts/make_offline_tasks.py --sdist bigbench-1.0.0.tar.gz

Each task keeps a seeded sample of the task's examples with exactly one correct choice, as
``{"question": str, "choices": [str, ...], "label": int}``. The task YAMLs next to the data say how lm-eval
scores them. If ``pip download`` fails after fetching the sdist (``Distributions from PyPI cannot declare
direct URL dependencies``: bigbench requires ``bleurt @ file://``), fetch it with
``TMPDIR=tmp pip download --no-deps --no-clean bigbench==1.0.0 -d .`` and pass the tarball left in ``tmp``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parents[1] / "liger" / "eval" / "tasks"
SEED = 1234
PER_TASK = 300


def _mc(example: dict) -> tuple[list[str], int] | None:
    """Choices and the index of the one correct choice, or None if the example has several."""
    choices = [c.strip() for c in example["target_scores"]]
    correct = [i for i, score in enumerate(example["target_scores"].values()) if score == 1]
    return (choices, correct[0]) if len(correct) == 1 else None


def hyperbaton(task: dict):
    # minimal pairs: score each ordering as a sentence of its own (no question)
    for example in task["examples"]:
        a, b = re.findall(r'"\s*(.*?)\s*"', example["input"])
        label = 0 if example["target_scores"]["a"] == 1 else 1
        yield {"question": "", "choices": [f"I saw a {a}.", f"I saw a {b}."], "label": label}


def social_iqa(task: dict):
    for example in task["examples"]:
        mc = _mc(example)
        if mc:
            yield {"question": example["input"].strip(), "choices": mc[0], "label": mc[1]}


def context_qa(task: dict):
    # contextual_parametric_knowledge_conflicts: the answer must be read from the context, which may contradict
    # what the model memorised; long contexts are left out to keep the suite fast on a CPU
    prefix = task["task_prefix"].strip()
    for example in task["examples"]:
        mc = _mc(example)
        if mc and len(example["input"]) <= 700:
            yield {"question": f"{prefix}\n{example['input'].strip()}", "choices": mc[0], "label": mc[1]}


# output file -> (BIG-bench task path, converter)
TASKS = {
    "bb_hyperbaton": ("hyperbaton", hyperbaton),
    "bb_social_iqa": ("social_iqa", social_iqa),
    "bb_context_qa": ("contextual_parametric_knowledge_conflicts", context_qa),
}


def download_sdist(dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(dest),
                    "bigbench==1.0.0"], check=False)
    found = sorted(dest.glob("bigbench-1.0.0.tar.gz"))
    if not found:
        sys.exit("could not download the bigbench sdist; see this script's docstring for the --no-clean route")
    return found[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="bigbench-1.0.0.tar.gz (default: download it from PyPI)")
    parser.add_argument("--out", type=Path, default=TASKS_DIR)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or download_sdist(Path(tmp))
        with tarfile.open(sdist) as tar:
            for name, (path, convert) in TASKS.items():
                member = f"bigbench-1.0.0/bigbench/benchmark_tasks/{path}/task.json"
                task = json.load(tar.extractfile(member))
                docs = list(convert(task))
                docs = random.Random(SEED).sample(docs, min(PER_TASK, len(docs)))
                with open(args.out / f"{name}.jsonl", "w") as f:
                    for doc in docs:
                        f.write(json.dumps(doc, ensure_ascii=False) + "\n")
                chance = sum(1 / len(d["choices"]) for d in docs) / len(docs)
                print(f"{name}: {len(docs)} of {len(task['examples'])} examples from {path}, chance {chance:.3f}")


if __name__ == "__main__":
    main()
