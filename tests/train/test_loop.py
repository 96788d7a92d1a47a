"""The training loop on a tiny random Llama: outputs, final/ loading, exact resume after SIGKILL, NaN stop,
distillation, 2-process (gloo) equality and CLI errors. Each test takes seconds."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import liger
from liger.cli import main
from liger.train.config import load_config
from liger.train.loop import TrainingError, finetune, load_model, read_metrics
from tests.conftest import tiny_args

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args, env_extra=None, launcher=None):
    """``python -m liger ...`` in a fresh process (as a user runs it); returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env_extra or {}))
    cmd = (launcher or [sys.executable, "-m"]) + ["liger", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def train_losses(output) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_metrics(Path(output) / "metrics.jsonl") if e["type"] == "train"}


def test_finetune_writes_metrics_checkpoints_and_a_loadable_final_model(tiny_base, alpaca_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", *tiny_args(tiny_base, alpaca_file, out), "--max-steps", "6", "--save-every", "2",
                 "train.keep_checkpoints=2", "optim.max_grad_norm=1.0"]) == 0
    assert "validation loss" in capsys.readouterr().out
    entries = read_metrics(out / "metrics.jsonl")
    train = [e for e in entries if e["type"] == "train"]
    assert [e["step"] for e in train] == [1, 2, 3, 4, 5, 6]
    assert all({"step", "loss", "lr", "tokens", "grad_norm"} <= set(e) for e in train)
    assert train[-1]["tokens"] == 6 * 4 * 32 and train[0]["lr"] == 1e-3
    val = [e for e in entries if e["type"] == "val" and "model" not in e]
    assert [e["step"] for e in val] == [0, 2, 4, 6]
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    assert [e for e in entries if e.get("model") == "teacher"][0]["step"] == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
    assert (out / "checkpoints" / "step-000006" / "adapter" / "adapter_config.json").exists()
    assert (out / "loss_curve.png").stat().st_size > 1000
    saved = load_config(str(out / "config.yaml"))
    assert saved.train.max_steps == 6 and saved.model.liger == {"window_size": 8}
    assert json.loads((out / "environment.json").read_text())["trainable_parameters"] > 0

    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert isinstance(final, liger.LigerForCausalLM) and final.config.window_size == 8
    assert not any("lora" in name for name, _ in final.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    final_sd, base_sd = final.state_dict(), base.state_dict()
    assert not torch.equal(final_sd["model.layers.0.self_attn.q_proj.weight"],
                           base_sd["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(final_sd["model.layers.0.self_attn.o_proj.weight"],
                       base_sd["model.layers.0.self_attn.o_proj.weight"])
    assert torch.equal(final_sd["model.layers.1.mlp.up_proj.weight"], base_sd["model.layers.1.mlp.up_proj.weight"])
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out / "final").eos_token == "<eos>"


def test_text_data_and_o_proj_target(tiny_base, text_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["finetune", *tiny_args(tiny_base, text_dir, out), "--max-steps", "2",
                 "lora.target_modules=[q_proj,k_proj,v_proj,o_proj]", "train.gradient_checkpointing=true"]) == 0
    final = load_file(out / "final" / "model.safetensors")
    base = load_file(tiny_base / "model.safetensors")
    key = "model.layers.0.self_attn.o_proj.weight"
    assert not torch.equal(final[key], base[key])


KILLER = """
import os, signal, sys
import torch
from liger.train.config import load_config
from liger.train.loop import finetune

real_save = torch.save


def save(obj, path, *args, **kwargs):
    # die (SIGKILL: no cleanup, no flushing) in the middle of writing the step-4 checkpoint
    if str(path).endswith("state.pt") and ".tmp-step-000004" in str(path):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, path, *args, **kwargs)

torch.save = save
finetune(load_config(None, sys.argv[1:]))
"""


def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_base, alpaca_file, tmp_path):
    common = [f"model.path={tiny_base}", f"data.path={alpaca_file}", "data.max_length=32", "data.val_records=8",
              "train.batch_size=4", "train.max_steps=6", "train.save_every=2", "train.eval_every=3",
              "model.liger.window_size=8", "train.device=cpu", "optim.max_grad_norm=0.5", "train.seed=3"]
    full = run_cli("finetune", *common, f"output={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr[-2000:]

    (tmp_path / "killer.py").write_text(textwrap.dedent(KILLER))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    killed = subprocess.run([sys.executable, str(tmp_path / "killer.py"), *common, f"output={tmp_path / 'cut'}"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpt = tmp_path / "cut" / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == [".tmp-step-000004", "step-000002"]
    assert max(train_losses(tmp_path / "cut")) == 4  # steps 3-4 ran and were logged before the kill
    assert not (tmp_path / "cut" / "final").exists()

    resumed = run_cli("finetune", *common, f"output={tmp_path / 'cut'}", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr and "step-000002" in resumed.stderr
    assert train_losses(tmp_path / "cut") == train_losses(tmp_path / "full")
    a, b = load_file(tmp_path / "full" / "final" / "model.safetensors"), load_file(tmp_path / "cut" / "final" /
                                                                                    "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (ckpt / ".tmp-step-000004").exists()


def test_a_tied_model_checkpoints_only_its_trainable_weights_and_resumes_exactly(alpaca_file, tmp_path, capsys):
    """With tied embeddings the frozen ``lm_head.weight`` alias is not written into ``state.pt`` (for SmolLM2 it was
    57 of a checkpoint's 65 MB), and a run resumed from such a checkpoint equals one never stopped."""
    from tests.conftest import byte_tokenizer, tiny_teacher

    base = tmp_path / "tied"
    tiny_teacher("llama", vocab_size=260, tie_word_embeddings=True).save_pretrained(base)
    byte_tokenizer().save_pretrained(base)
    args = [*tiny_args(base, alpaca_file, tmp_path / "full"), "--save-every", "2", "optim.max_grad_norm=0.5"]
    assert main(["finetune", *args, "--max-steps", "4"]) == 0
    state = torch.load(tmp_path / "full" / "checkpoints" / "step-000002" / "state.pt", weights_only=False)
    assert state["trainable"] and all("lora_" in name for name in state["trainable"]), list(state["trainable"])
    cut = [*tiny_args(base, alpaca_file, tmp_path / "cut"), "--save-every", "2", "optim.max_grad_norm=0.5"]
    assert main(["finetune", *cut, "--max-steps", "2"]) == 0
    assert main(["finetune", *cut, "--max-steps", "4", "--resume"]) == 0
    assert train_losses(tmp_path / "cut") == train_losses(tmp_path / "full")
    a, b = (load_file(tmp_path / run / "final" / "model.safetensors") for run in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_config(tiny_base, alpaca_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", *tiny_args(tiny_base, alpaca_file, out), "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main(["finetune", *tiny_args(tiny_base, alpaca_file, out), "--max-steps", "2", "optim.lr=1e-2",
                 "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different optim.lr" in err[0], err
    assert main(["finetune", *tiny_args(tiny_base, alpaca_file, out), "--max-steps", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run; pass --resume" in err[0], err


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tiny_base, alpaca_file, tmp_path):
    cfg = load_config(None, [f"output={tmp_path / 'run'}", f"data.path={alpaca_file}", "data.max_length=32",
                             "data.val_records=8", "train.batch_size=4", "train.max_steps=6", "train.save_every=2",
                             "train.device=cpu", "model.liger.window_size=8"])
    model, tokenizer = load_model(str(tiny_base), cfg.model.liger, torch.float32)
    calls = []

    def poison(module, inputs, output):
        if module.training:
            calls.append(1)
            if len(calls) > 8:  # the first micro-batch of step 3 (4 micro-batches per step)
                return output * float("nan")
        return output

    model.lm_head.register_forward_hook(poison)
    with pytest.raises(TrainingError) as info:
        finetune(cfg, model=model, tokenizer=tokenizer)
    message = str(info.value)
    assert message.startswith("loss is nan at step 3; stopped before updating the weights")
    assert "step-000002" in message and "\n" not in message
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000002"]
    assert not (tmp_path / "run" / "final").exists()
    assert max(train_losses(tmp_path / "run")) == 2


@pytest.mark.parametrize("loss", ["kl", "ce+kl"])
def test_distillation_against_the_teacher_attention(tiny_base, alpaca_file, tmp_path, loss):
    out = tmp_path / loss
    assert main(["finetune", *tiny_args(tiny_base, alpaca_file, out), "--max-steps", "3", f"train.loss={loss}",
                 "train.kl_weight=0.5", "train.kl_temperature=2.0"]) == 0
    losses = train_losses(out)
    ce_out = tmp_path / "ce"
    if not ce_out.exists():
        assert main(["finetune", *tiny_args(tiny_base, alpaca_file, ce_out), "--max-steps", "3"]) == 0
    ce = train_losses(ce_out)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    if loss == "kl":
        # the converted model differs from its teacher, so the KL is positive but far below the CE
        assert 0 < losses[1] < 0.5 * ce[1]
    else:
        assert losses[1] > ce[1]


def test_two_processes_on_gloo_give_the_loss_of_one_process(tiny_base, alpaca_file, tmp_path):
    # two attention-transfer steps, then two next-token steps: both objectives through DDP
    common = ["finetune", *tiny_args(tiny_base, alpaca_file, "{out}"), "--max-steps", "4", "train.eval_every=0",
              "train.save_every=0", "train.transfer_steps=2"]
    one = run_cli(*[a.replace("{out}", str(tmp_path / "one")) for a in common])
    assert one.returncode == 0, one.stderr[-2000:]
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    launcher = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "-m"]
    two = run_cli(*[a.replace("{out}", str(tmp_path / "two")) for a in common], launcher=launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    env = json.loads((tmp_path / "two" / "environment.json").read_text())
    assert env["num_processes"] == 2
    a, b = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert a.keys() == b.keys() == {1, 2, 3, 4}
    objectives = [e["objective"] for e in read_metrics(tmp_path / "two" / "metrics.jsonl") if e["type"] == "train"]
    assert objectives == ["transfer", "transfer", "ce", "ce"]
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-5 * abs(a[step]), (step, a[step], b[step])
    wa, wb = load_file(tmp_path / "one" / "final" / "model.safetensors"), load_file(
        tmp_path / "two" / "final" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_finetune_an_already_converted_liger_checkpoint(tiny_base, alpaca_file, tmp_path):
    assert main(["convert", str(tiny_base), str(tmp_path / "liger"), "--window-size", "4"]) == 0
    out = tmp_path / "run"
    # model.liger options are for conversion: ignored (with a note) for a Liger checkpoint
    assert main(["finetune", *tiny_args(tmp_path / "liger", alpaca_file, out), "--max-steps", "1"]) == 0
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert final.config.window_size == 4


def test_final_model_with_tied_embeddings_equals_the_adapter_merged_by_peft(tmp_path, alpaca_file):
    """final/ is rebuilt from gathered full state dicts (the FSDP-safe path): it must equal the conversion with
    the checkpoint's adapter merged by peft, tied embeddings and generation config included."""
    from peft import PeftModel

    from tests.conftest import byte_tokenizer, tiny_teacher

    base = tmp_path / "tied"
    teacher = tiny_teacher("llama", vocab_size=260, tie_word_embeddings=True)
    teacher.generation_config.eos_token_id = 259
    teacher.save_pretrained(base)
    byte_tokenizer().save_pretrained(base)
    out = tmp_path / "run"
    assert main(["finetune", *tiny_args(base, alpaca_file, out), "--max-steps", "2"]) == 0
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert final.config.tie_word_embeddings
    assert final.lm_head.weight.data_ptr() == final.model.embed_tokens.weight.data_ptr()
    assert final.generation_config.eos_token_id == 259
    model, _ = load_model(str(base), {"window_size": 8}, torch.float32)
    expected = PeftModel.from_pretrained(model, out / "checkpoints" / "step-000002" / "adapter").merge_and_unload()
    x = torch.randint(0, 260, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(final(input_ids=x).logits, expected(input_ids=x).logits, rtol=1e-5, atol=1e-5)


def test_save_final_false_keeps_the_adapter_and_writes_no_merged_model(tiny_base, alpaca_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", *tiny_args(tiny_base, alpaca_file, out), "--max-steps", "2",
                 "train.save_final=false"]) == 0
    assert "adapter in" in capsys.readouterr().out
    assert not (out / "final").exists()
    assert (out / "checkpoints" / "step-000002" / "adapter" / "adapter_model.safetensors").exists()


def test_attention_transfer_steps_come_first_and_reduce_the_layers_error(tiny_base, alpaca_file, tmp_path):
    out = tmp_path / "run"
    assert main(["finetune", *tiny_args(tiny_base, alpaca_file, out), "--max-steps", "8", "train.transfer_steps=6",
                 "optim.lr=0.01", "train.eval_every=0"]) == 0
    entries = [e for e in read_metrics(out / "metrics.jsonl") if e["type"] == "train"]
    assert [e["objective"] for e in entries] == ["transfer"] * 6 + ["ce"] * 2
    transfer = [e["loss"] for e in entries[:6]]
    assert transfer[-1] < 0.8 * transfer[0], transfer
    # the CE steps are next-token losses (nats), far above the layers' MSE
    assert all(e["loss"] > 10 * transfer[0] for e in entries[6:])
    assert (out / "loss_curve.png").stat().st_size > 0
    assert AutoModelForCausalLM.from_pretrained(out / "final").config.model_type == "liger"


def test_attention_transfer_needs_a_liger_model(tiny_base, alpaca_file, tmp_path):
    from transformers import AutoModelForCausalLM as Auto

    cfg = load_config(settings={"model.path": str(tiny_base), "data.path": str(alpaca_file), "data.max_length": 32,
                                "train.batch_size": 4, "data.val_records": 8, "train.max_steps": 1,
                                "train.transfer_steps": 1, "train.device": "cpu", "output": str(tmp_path / "r")})
    with pytest.raises(TrainingError, match="train.transfer_steps needs a Liger model"):
        finetune(cfg, model=Auto.from_pretrained(tiny_base))


def test_cuda_graph_needs_a_cuda_device(tiny_base, alpaca_file, tmp_path, capsys):
    """``train.cuda_graph`` on the CPU: a one-line error and a non-zero exit, before anything is written (the
    captured step itself is tested against the eager one in tests/gpu/test_train_graph_gpu.py)."""
    out = tmp_path / "run"
    assert main(["finetune", *tiny_args(tiny_base, alpaca_file, out), "--max-steps", "1", "train.cuda_graph=true"]) != 0
    err = capsys.readouterr().err
    assert "train.cuda_graph needs a CUDA GPU (this run's device is cpu)" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
