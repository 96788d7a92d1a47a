"""``liger finetune``'s command line: one clear line for each bad input."""

import logging

import pytest

from liger.cli import main
from tests.conftest import tiny_args


@pytest.mark.parametrize("extra,message", [
    (["train.bacth_size=2"], "unknown config key 'train.bacth_size'"),
    (["--data", "/no/such/data.json"], "data.path '/no/such/data.json' does not exist"),
    (["--model", "/no/such/model"], "no model directory at '/no/such/model'"),
    (["--batch-size", "3", "train.micro_batch_size=2"], "train.batch_size must be a multiple"),
    (["lora.target_modules=[nothing_here]"], "lora.target_modules ['nothing_here']"),
    (["--config", "nope.yaml"], "no config file 'nope.yaml'"),
    (["--max-length", "100000"], "not enough for one chunk"),
    (["train.fsdp=true"], "train.fsdp needs CUDA GPUs"),
])
def test_cli_errors_are_one_line(tiny_base, alpaca_file, tmp_path, capsys, extra, message):
    capsys.readouterr()
    assert main(["finetune", *tiny_args(tiny_base, alpaca_file, tmp_path / "run"), *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # (transformers may draw a progress bar while loading the model first)
    assert [line for line in err if "error" in line] == err[-1:], err
    assert err[-1].startswith("liger finetune: error: ") and message in err[-1], err


def test_resume_needs_a_checkpoint_unless_if_possible(tiny_base, alpaca_file, tmp_path, capsys, caplog):
    out = tmp_path / "mistyped"
    capsys.readouterr()
    assert main(["finetune", *tiny_args(tiny_base, alpaca_file, out), "--max-steps", "2", "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume: no checkpoint in" in err[0] and "--resume-if-possible" in err[0], err
    assert not (out / "metrics.jsonl").exists()
    args = [*tiny_args(tiny_base, alpaca_file, out), "--max-steps", "2", "--save-every", "1"]
    assert main(["finetune", *args, "--resume-if-possible"]) == 0  # nothing to resume: a new run
    assert (out / "final").is_dir()
    with caplog.at_level(logging.INFO, logger="liger"):
        assert main(["finetune", *args, "--max-steps", "3", "--resume-if-possible"]) == 0  # resumes step 2
    assert "resumed from" in caplog.text and "step-000002" in caplog.text
    with pytest.raises(SystemExit):
        main(["finetune", *args, "--resume", "--resume-if-possible"])
