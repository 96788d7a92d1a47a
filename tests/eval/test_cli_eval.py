"""``liger eval`` end to end on tiny checkpoints; the recovery report; errors; lm_eval's own CLI on a saved
Liger checkpoint in a process that cannot import liger."""

import json
import os
import subprocess
import sys

import pytest

import liger
from liger.cli import main
from tests.conftest import tiny_teacher
from tests.eval.conftest import char_tokenizer

TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 6


def test_eval_writes_results_with_provenance(teacher_dir, tiny_task_dir, tmp_path, capsys):
    (tmp_path / "text.txt").write_text(TEXT)
    out = tmp_path / "res" / "results.json"
    rc = main(["eval", "--model", str(teacher_dir), "--tasks", "tiny_mc", "--include-path", str(tiny_task_dir),
               "--limit", "3", "--batch-size", "2", "--ppl", str(tmp_path / "text.txt"), "--ppl-context", "64",
               "--ppl-stride", "32", "--passkey", "400", "--passkey-trials", "2", "--seed", "7", "--output", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "tiny_mc" in printed and "perplexity" in printed and "passkey" in printed
    result = json.loads(out.read_text())
    assert result["tasks"]["tiny_mc"]["samples"] == 3
    assert result["ppl"]["context"] == 64 and result["ppl"]["tokens"] == len(TEXT) - 1
    assert list(result["passkey"]["lengths"]) == ["400"] and result["passkey"]["seed"] == 7
    prov = result["provenance"]
    for key in ("liger", "torch", "transformers", "lm-eval", "git_commit", "device_name", "seed", "limit"):
        assert key in prov, key
    assert prov["liger"] == liger.__version__ and prov["seed"] == 7 and prov["limit"] == 3
    assert result["config"]["device"] == "cpu" and result["config"]["tasks"] == "tiny_mc"


def test_compare_report_recovery_and_files(teacher_dir, tiny_task_dir, tmp_path, capsys):
    (tmp_path / "text.txt").write_text(TEXT)
    out = tmp_path / "report"
    # swa:1024:0 attends to every key of these short inputs: it must recover exactly 100% of the teacher
    rc = main(["eval", "--compare", str(teacher_dir), "swa:1024:0", "convert:gla", "--tasks", "tiny_mc",
               "--include-path", str(tiny_task_dir), "--ppl", str(tmp_path / "text.txt"), "--ppl-context", "64",
               "--ppl-stride", "32", "--passkey", "400", "--passkey-trials", "1", "--output-dir", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    teacher = str(teacher_dir)
    assert report["students"] == ["swa:1024:0", "convert:gla"]
    same = report["recovery"]["swa:1024:0"]
    assert same["tasks"]["tiny_mc"] == pytest.approx(100.0) and same["average"] == pytest.approx(100.0)
    assert same["ppl_ratio"] == pytest.approx(1.0, rel=1e-5)
    gla = report["models"]["convert:gla"]
    t = report["models"][teacher]
    assert report["recovery"]["convert:gla"]["tasks"]["tiny_mc"] == pytest.approx(
        100 * gla["tasks"]["tiny_mc"]["value"] / t["tasks"]["tiny_mc"]["value"])
    assert report["recovery"]["convert:gla"]["ppl_ratio"] == pytest.approx(gla["ppl"]["ppl"] / t["ppl"]["ppl"])
    assert report["recovery"]["convert:gla"]["ppl_ratio"] != pytest.approx(1.0)
    md = (out / "report.md").read_text()
    assert "| tiny_mc (acc) |" in md and "## Perplexity" in md and "| 400 tokens |" in md and "100.0%" in md
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "lm-eval" in report["provenance"] and report["config"]["limit"] is None


@pytest.mark.parametrize("args,message", [
    (["--model", "{teacher}", "--tasks", "no_such_task"], "unknown task(s) no_such_task"),
    (["--model", "{tmp}/missing"], "no model directory"),
    (["--model", "{tmp}/vit"], "is not a causal language model"),
    (["--compare", "{teacher}", "swa:64"], "not a valid sliding-window student"),
    (["--compare", "{teacher}", "{tmp}/missing"], "no model directory"),
    (["--compare", "{teacher}"], "needs a teacher and at least one student"),
    (["--model", "{teacher}", "--ppl", "{tmp}/missing.txt"], "no text file"),
    (["--model", "{teacher}", "--limit", "0"], "--limit must be >= 1"),
    (["--model", "{teacher}", "--ppl-context", "64"], "1 <= --ppl-stride <= --ppl-context"),
])
def test_bad_input_is_one_line_and_nonzero_exit(teacher_dir, tmp_path, capsys, args, message):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                       image_size=8, patch_size=4)).save_pretrained(tmp_path / "vit")
    args = [a.format(teacher=teacher_dir, tmp=tmp_path) for a in args]
    capsys.readouterr()
    assert main(["eval"] + args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_skipped_task_exits_nonzero_and_names_it(teacher_dir, tiny_task_dir, capsys):
    (tiny_task_dir / "gone.yaml").write_text((tiny_task_dir / "tiny_mc.yaml").read_text().replace(
        "task: tiny_mc", "task: gone").replace("tiny_mc.jsonl", "gone.jsonl"))
    assert main(["eval", "--model", str(teacher_dir), "--tasks", "tiny_mc,gone", "--include-path",
                 str(tiny_task_dir), "--limit", "1"]) == 1
    err = capsys.readouterr().err
    assert "task 'gone' skipped" in err and "gone.jsonl" in err


def test_lm_eval_cli_loads_a_saved_liger_checkpoint_without_liger(tiny_task_dir, tmp_path):
    ckpt = tmp_path / "liger-ckpt"
    liger.convert(tiny_teacher("mistral"), window_size=4, num_sink_tokens=1).save_pretrained(ckpt)
    char_tokenizer().save_pretrained(ckpt)
    child = ("import sys; sys.modules['liger'] = None; from lm_eval.__main__ import cli_evaluate; "
             "sys.argv = ['lm_eval'] + sys.argv[1:]; cli_evaluate()")
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", child, "--model", "hf", "--model_args",
         f"pretrained={ckpt},trust_remote_code=True,dtype=float32", "--tasks", "tiny_mc", "--include_path",
         str(tiny_task_dir), "--device", "cpu", "--batch_size", "2", "--output_path", str(tmp_path / "lm_eval_out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = list((tmp_path / "lm_eval_out").rglob("results_*.json"))
    results = json.loads(path.read_text())["results"]["tiny_mc"]
    assert 0 <= results["acc,none"] <= 1
    # the same checkpoint loaded by liger gives the same score
    from transformers import AutoModelForCausalLM

    from liger.eval import evaluate

    model = AutoModelForCausalLM.from_pretrained(ckpt)
    ours = evaluate(model, "tiny_mc", include_path=tiny_task_dir, tokenizer=char_tokenizer(), batch_size=2)
    assert ours["tasks"]["tiny_mc"]["value"] == pytest.approx(results["acc,none"])
