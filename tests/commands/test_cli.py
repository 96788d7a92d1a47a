import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import liger  # noqa: F401
from liger.cli import main
from tests.conftest import tiny_teacher


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "convert" in out and "generate" in out


def test_every_subcommand_has_help(capsys):
    from liger.cli import SUBCOMMANDS

    for name in SUBCOMMANDS:
        command = name.rsplit(".", 1)[1]
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0, command
        assert "usage: liger" in capsys.readouterr().out


def test_convert_saves_a_loadable_checkpoint(tmp_path, capsys):
    tiny_teacher("qwen3").save_pretrained(tmp_path / "base")
    rc = main(["convert", str(tmp_path / "base"), str(tmp_path / "out"), "--variant", "gsa", "--window-size", "8",
               "--num-sink-tokens", "2", "--full-attention-layers", "1", "--use-qk-norm-in-linear", "false"])
    assert rc == 0
    assert "saved Liger-gsa" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    c = model.config
    assert (c.variant, c.window_size, c.num_sink_tokens, c.full_attention_layers, c.use_qk_norm_in_linear) == (
        "gsa", 8, 2, [1], False)
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_convert_with_the_memory_recipe(tmp_path, capsys):
    tiny_teacher("llama").save_pretrained(tmp_path / "base")
    # the recipe's options, with a flag given beside it taking precedence
    assert main(["convert", str(tmp_path / "base"), str(tmp_path / "out"), "--recipe", "memory",
                 "--global-cache-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "global cache 16 (pool 8)" in out and "window-only" in out, out
    c = AutoModelForCausalLM.from_pretrained(tmp_path / "out").config
    assert (c.linear_weight, c.window_weight, c.window_size, c.num_sink_tokens, c.global_cache_size,
            c.global_cache_pool) == (0.0, 1.0, 512, 4, 16, 8)
    # the library call takes the same recipe; an unknown one is a ValueError naming the choices
    model = liger.convert(tiny_teacher("llama"), recipe="memory")
    assert (model.config.global_cache_size, model.config.window_size, model.config.linear_weight) == (512, 512, 0.0)
    assert liger.convert(tiny_teacher("llama"), recipe="paper").config.global_cache_size == 0
    with pytest.raises(ValueError, match="paper, memory"):
        liger.convert(tiny_teacher("llama"), recipe="fast")


def test_convert_refuses_to_overwrite(tmp_path, capsys):
    tiny_teacher("llama").save_pretrained(tmp_path / "base")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "base"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "not empty" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    "args,message",
    [
        (["convert", "/no/such/dir", "OUT"], "no model directory"),
        (["convert", "{base}", "{out}", "--window-size", "0"], "LigerConfig.window_size"),
        (["convert", "{base}", "{out}", "--gate-normalizer", "-3"], "LigerConfig.gate_normalizer"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, capsys, args, message):
    tiny_teacher("llama").save_pretrained(tmp_path / "base")
    args = [a.format(base=tmp_path / "base", out=tmp_path / "out") for a in args]
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_unsupported_architecture_from_the_cli(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    assert main(["convert", str(tmp_path / "gpt2"), str(tmp_path / "out")]) == 1
    assert "unsupported architecture 'gpt2'" in capsys.readouterr().err


def test_python_dash_m_liger_works():
    out = subprocess.run([sys.executable, "-m", "liger", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("liger ")


@pytest.mark.parametrize("command", ["", "convert", "generate", "finetune", "linearize", "eval", "bench"])
def test_help_imports_neither_torch_nor_transformers(command):
    """``liger --help`` and each subcommand's help start in a fraction of a second: no torch, no transformers."""
    args = [sys.executable, "-X", "importtime", "-m", "liger", *([command] if command else []), "--help"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage: liger" in out.stdout, out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert not {"torch", "transformers"} & imported, sorted(m for m in imported if m.split(".")[0] in ("torch",
                                                                                                        "transformers"))


def test_generate_from_the_command_line(tiny_base, tmp_path):
    """In a ``liger`` process the model code loads on first use: a Liger checkpoint still loads (registered)."""
    assert main(["convert", str(tiny_base), str(tmp_path / "liger"), "--window-size", "4"]) == 0
    out = subprocess.run([sys.executable, "-m", "liger", "generate", str(tmp_path / "liger"), "abc",
                          "--max-new-tokens", "3"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.fullmatch(r"\[[1-3] tokens in [0-9.]+ s\]", out.stdout.splitlines()[-1]), out.stdout


@pytest.mark.parametrize("command", ["generate", "bench"])
def test_every_option_has_help_text(command):
    from liger.cli import build_parser

    parser = build_parser()._subparsers._group_actions[0].choices[command]
    assert all(a.help for a in parser._actions), [a.option_strings for a in parser._actions if not a.help]
