"""FSDP (``train.fsdp``, accelerate's FSDP2) on 2 GPUs: the same losses and final weights as one process with
the same global batch, and an exact resume from a sharded run's checkpoint. Needs 2 CUDA devices."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from liger.train.loop import read_metrics
from tests.conftest import alpaca_records, byte_tokenizer, tiny_args, tiny_teacher

REPO = Path(__file__).resolve().parents[2]
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")


@pytest.fixture(scope="module")
def tiny_run_inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("fsdp_base")
    tiny_teacher("llama", vocab_size=260, tie_word_embeddings=True).save_pretrained(base)
    byte_tokenizer().save_pretrained(base)
    data = tmp_path_factory.mktemp("fsdp_data") / "alpaca.json"
    data.write_text(json.dumps(alpaca_records(120)))
    return base, data


def finetune(output, base, data, *extra, processes=1):
    env = dict(os.environ, PYTHONPATH=str(REPO), TRITON_F32_DEFAULT="ieee", **NO_MULTICAST)
    args = ["finetune", *tiny_args(base, data, output), "train.device=cuda", "train.dtype=float32",
            "train.eval_every=0", "train.save_every=2", *extra]
    if processes == 1:
        cmd = [sys.executable, "-m", "liger", *args]
    else:
        accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
        cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "liger", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return {e["step"]: e["loss"] for e in read_metrics(Path(output) / "metrics.jsonl") if e["type"] == "train"}


def test_fsdp_on_two_gpus_matches_one_process_and_resumes(tiny_run_inputs, tmp_path):
    base, data = tiny_run_inputs
    one = finetune(tmp_path / "one", base, data, "--max-steps", "4")
    sharded = finetune(tmp_path / "fsdp", base, data, "--max-steps", "4", "train.fsdp=true", processes=2)
    environment = json.loads((tmp_path / "fsdp" / "environment.json").read_text())
    assert environment["num_processes"] == 2 and environment["distributed"] == "FSDP2"
    assert one.keys() == sharded.keys() == {1, 2, 3, 4}
    for step in one:
        assert abs(one[step] - sharded[step]) <= 1e-4 * abs(one[step]), (step, one[step], sharded[step])
    a = load_file(tmp_path / "one" / "final" / "model.safetensors")
    b = load_file(tmp_path / "fsdp" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-5)
    assert (tmp_path / "fsdp" / "checkpoints" / "step-000004" / "adapter" / "adapter_model.safetensors").exists()

    # Resume a sharded run from its step-2 checkpoint: steps 3 and 4 repeat the uninterrupted run's.
    cut = tmp_path / "cut"
    finetune(cut, base, data, "--max-steps", "2", "train.fsdp=true", processes=2)
    resumed = finetune(cut, base, data, "--max-steps", "4", "train.fsdp=true", "--resume", processes=2)
    for step in (3, 4):
        assert abs(resumed[step] - sharded[step]) <= 1e-5 * abs(sharded[step]), (step, resumed[step], sharded[step])
