"""lm-eval on in-memory models: the offline suite's data, scoring against a direct computation, errors."""

import json

import pytest
import torch

import liger
from liger.eval import evaluate
from liger.eval.harness import CHANCE, SUITES, TASKS_DIR, offline_task_config, resolve_tasks
from tests.conftest import tiny_teacher
from tests.eval.conftest import TINY_DOCS


def test_offline_suite_ships_valid_data():
    for task in SUITES["offline"]:
        config = offline_task_config(task.name)
        assert config["task"] == task.name
        docs = [json.loads(line) for line in open(config["dataset_kwargs"]["data_files"]["test"])]
        assert len(docs) == 300, task.name
        assert all(0 <= d["label"] < len(d["choices"]) and len(set(d["choices"])) == len(d["choices"]) for d in docs)
        chance = sum(1 / len(d["choices"]) for d in docs) / len(docs)
        assert chance == pytest.approx(CHANCE[task.name]), task.name
        assert (TASKS_DIR / f"{task.name}.yaml").exists()


def _choice_logprob(model, tokenizer, context: str, continuation: str) -> float:
    ctx = tokenizer(context).input_ids
    cont = tokenizer(continuation).input_ids
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logprobs = model(ids).logits[0, :-1].log_softmax(-1)
    return sum(logprobs[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))


def test_scores_equal_a_direct_loglikelihood_computation(tokenizer, tiny_task_dir):
    model = liger.convert(tiny_teacher("llama", seed=3), window_size=4).eval()
    result = evaluate(model, "tiny_mc", include_path=tiny_task_dir, tokenizer=tokenizer, batch_size=2)
    assert result["skipped"] == {}
    acc = acc_norm = 0
    for doc in TINY_DOCS:
        scores = [_choice_logprob(model, tokenizer, f"Question: {doc['question']}\nAnswer:", " " + c)
                  for c in doc["choices"]]
        # lm-eval normalises by the length in characters of the choice itself (without the delimiter)
        normed = [s / len(c) for s, c in zip(scores, doc["choices"])]
        acc += scores.index(max(scores)) == doc["label"]
        acc_norm += normed.index(max(normed)) == doc["label"]
    r = result["tasks"]["tiny_mc"]
    assert r["metric"] == "acc" and r["samples"] == len(TINY_DOCS) and r["num_fewshot"] == 0
    assert r["value"] == pytest.approx(acc / len(TINY_DOCS))
    assert r["metrics"]["acc_norm"] == pytest.approx(acc_norm / len(TINY_DOCS))
    assert r["stderr"] == pytest.approx(r["metrics"]["acc_stderr"]) and r["stderr"] > 0


def test_offline_suite_runs_with_a_limit(tokenizer):
    model = tiny_teacher("qwen2")
    result = evaluate(model, "offline", limit=3, tokenizer=tokenizer, batch_size=4)
    assert list(result["tasks"]) == [t.name for t in SUITES["offline"]]
    for task in SUITES["offline"]:
        r = result["tasks"][task.name]
        assert r["metric"] == task.metric and r["samples"] == 3 and 0 <= r["value"] <= 1


def test_evaluate_loads_a_checkpoint_path(teacher_dir, tiny_task_dir):
    result = evaluate(str(teacher_dir), "tiny_mc", include_path=tiny_task_dir, limit=2, device="cpu")
    assert result["tasks"]["tiny_mc"]["samples"] == 2


def test_unreachable_data_skips_that_task_with_the_reason(tokenizer, tiny_task_dir):
    broken = (tiny_task_dir / "tiny_mc.yaml").read_text().replace("tiny_mc", "broken_mc").replace(
        str(tiny_task_dir / "broken_mc.jsonl"), str(tiny_task_dir / "missing.jsonl"))
    (tiny_task_dir / "broken_mc.yaml").write_text(broken)
    result = evaluate(tiny_teacher(), "tiny_mc,broken_mc", include_path=tiny_task_dir, tokenizer=tokenizer, limit=2)
    assert list(result["tasks"]) == ["tiny_mc"]
    assert list(result["skipped"]) == ["broken_mc"] and "missing.jsonl" in result["skipped"]["broken_mc"]
    with pytest.raises(RuntimeError, match="no task could be loaded.*broken_mc"):
        evaluate(tiny_teacher(), "broken_mc", include_path=tiny_task_dir, tokenizer=tokenizer)


def test_suites_expand_and_unknown_tasks_are_errors():
    assert [t.name for t in resolve_tasks("paper")] == ["piqa", "arc_easy", "arc_challenge", "hellaswag",
                                                        "winogrande", "mmlu"]
    assert {t.name: (t.metric, t.num_fewshot) for t in resolve_tasks("paper")}["mmlu"] == ("acc", 5)
    assert [t.name for t in resolve_tasks("bb_hyperbaton,offline")][:2] == ["bb_hyperbaton", "bb_social_iqa"]
    with pytest.raises(ValueError, match="unknown task.*no_such_task"):
        resolve_tasks("offline,no_such_task")


def test_in_memory_model_needs_a_tokenizer_and_a_causal_lm(tokenizer):
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate(tiny_teacher(), "bb_hyperbaton", limit=1)
    with pytest.raises(TypeError, match="causal LM"):
        evaluate(torch.nn.Linear(2, 2), "bb_hyperbaton", tokenizer=tokenizer, limit=1)
