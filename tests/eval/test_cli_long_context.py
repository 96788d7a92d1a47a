"""``liger eval`` with the long-context measures: results, the report's tables and plots, one-line errors
checked before any model is loaded."""

import json

import pytest

from liger.cli import build_parser, main
from tests.eval.conftest import prose

MEASURES = ["--passkey", "400", "--passkey-trials", "2", "--multikey", "600", "--multikey-trials", "2",
            "--multikey-pairs", "2", "--position-loss", "--position-length", "200", "--position-sequences", "2",
            "--repeat-recall", "100,150", "--repeat-trials", "2"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "prose.txt"
    path.write_text(prose(200))
    return path


def test_eval_model_runs_the_long_context_measures_without_tasks(teacher_dir, text_file, tmp_path, capsys):
    out = tmp_path / "results.json"
    rc = main(["eval", "--model", str(teacher_dir), *MEASURES, "--long-text", str(text_file), "--output", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    for line in ("passkey    400 tokens: accuracy", "multikey    600 tokens: accuracy", "loss at positions",
                 "repeat recall D=100  : drop", "repeat recall D=150  : drop"):
        assert line in printed, printed
    result = json.loads(out.read_text())
    assert result["tasks"] == {} and result["ppl"] is None  # no lm-eval task without --tasks
    assert result["multikey"]["pairs"] == 2 and result["multikey"]["lengths"]["600"]["trials"] == 2
    assert list(result["position_loss"]["buckets"]) == ["1-63", "64-199"]
    assert list(result["repeat_recall"]["gaps"]) == ["100", "150"]
    assert result["passkey"]["lengths"]["400"]["wilson95"]
    config = result["config"]
    assert config["long_text"] == [str(text_file)] and config["position_length"] == 200
    assert config["repeat_gaps"] == [100, 150] and config["multikey_pairs"] == 2


def test_compare_report_has_a_table_and_a_plot_per_measure(teacher_dir, text_file, tmp_path):
    out = tmp_path / "report"
    # swa:1024:0 attends to every key of these inputs: its numbers must be the teacher's
    rc = main(["eval", "--compare", str(teacher_dir), "swa:1024:0", "swa:8:0", *MEASURES, "--long-text",
               str(text_file), "--output-dir", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    teacher, same = report["models"][str(teacher_dir)], report["models"]["swa:1024:0"]
    for bucket, r in teacher["position_loss"]["buckets"].items():
        assert same["position_loss"]["buckets"][bucket]["nll"] == pytest.approx(r["nll"], rel=1e-5)
    for gap, r in teacher["repeat_recall"]["gaps"].items():
        assert same["repeat_recall"]["gaps"][gap]["drop"] == pytest.approx(r["drop"], abs=1e-4)
    assert same["multikey"]["lengths"]["600"]["correct"] == teacher["multikey"]["lengths"]["600"]["correct"]
    window = report["models"]["swa:8:0"]["position_loss"]["buckets"]["64-199"]["nll"]
    assert window != pytest.approx(teacher["position_loss"]["buckets"]["64-199"]["nll"], rel=1e-3)
    md = (out / "report.md").read_text()
    for section in ("## Passkey retrieval accuracy (2 trials per length, seed 0; [Wilson 95 % interval])",
                    "## Multi-key retrieval accuracy (2 pairs per prompt, 2 trials per length",
                    "## Loss by position (mean nats per token ± stderr over 2 sequences of 200 tokens",
                    "## Repeated-span recall", "| 400 tokens |", "| 600 tokens |", "| positions 1–63 (126 tokens) |",
                    "| positions 64–199 (272 tokens) |", "| all positions |", "| D = 100 |", "| D = 150 |", "(+0.000)"):
        assert section in md, section
    for name in ("retrieval.png", "position_loss.png", "repeat_recall.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    assert not (out / "report.png").exists()  # no task, no task chart


def test_bare_flags_take_the_default_lengths():
    from liger.commands.eval import resolve_config

    args = resolve_config(build_parser().parse_args(["eval", "--model", "m", "--passkey", "--multikey",
                                                     "--repeat-recall", "--position-loss", "--long-text", "a.txt"]))
    assert args.passkey == args.multikey == [1024, 2048, 4096, 8192]
    assert args.repeat_recall == [256, 512, 1024, 2048, 4096] and args.passkey_trials == 20
    assert (args.position_length, args.position_sequences, args.multikey_pairs, args.repeat_trials) == (4096, 20, 4, 20)


@pytest.mark.parametrize("args,message", [
    (["--multikey", "500"], "--multikey needs --long-text FILE..."),
    (["--position-loss", "--repeat-recall"], "--position-loss, --repeat-recall need --long-text FILE..."),
    (["--long-text", "{text}"], "--long-text is read by --multikey, --position-loss and --repeat-recall"),
    (["--repeat-recall", "--long-text", "{tmp}/missing.txt"], "no text file at"),
    (["--position-loss", "--long-text", "{tmp}/empty.txt"], "holds no text"),
    (["--position-loss", "--long-text", "{text}"], "needs 20 sequences of 4096 tokens but the text files hold 3"),
    (["--repeat-recall", "100", "--long-text", "{tmp}/short.txt"], "repeated-span recall needs 20 paragraphs"),
    (["--multikey", "100", "--long-text", "{text}"], "multikey length 100 is too short for 4 pairs"),
    (["--multikey", "90000", "--long-text", "{text}"], "needs as many tokens of filler text"),
    (["--multikey", "500", "--multikey-pairs", "0", "--long-text", "{text}"], "--multikey-pairs must be >= 1"),
    (["--repeat-recall", "--repeat-trials", "0", "--long-text", "{text}"], "--repeat-trials must be >= 1"),
    (["--position-loss", "--position-buckets", "9999", "--long-text", "{text}"], "increasing positions"),
    (["--position-loss", "--long-text", "{tmp}/bad.jsonl"], "line 1: expected a JSON object"),
    (["--passkey", "40"], "passkey length 40 is too short"),
])
@pytest.mark.parametrize("mode", ["--model", "--compare"])
def test_bad_long_context_input_is_one_line_before_any_model_loads(teacher_dir, text_file, tmp_path, capsys,
                                                                   monkeypatch, args, message, mode):
    import liger.eval.models
    import liger.eval.report

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(liger.eval.models, "load_checkpoint", no_model)
    monkeypatch.setattr(liger.eval.report, "load_checkpoint", no_model)
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "short.txt").write_text(prose(10))
    (tmp_path / "bad.jsonl").write_text("not json\n")
    args = [a.format(text=text_file, tmp=tmp_path) for a in args]
    which = ["--model", str(teacher_dir)] if mode == "--model" else ["--compare", str(teacher_dir), "swa:64:0"]
    capsys.readouterr()
    assert main(["eval", *which, *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("liger eval: error: "), err
