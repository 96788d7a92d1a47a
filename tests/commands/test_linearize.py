"""``liger linearize`` end to end on a tiny model."""

import json

from liger.cli import main
from tests.conftest import tiny_args


def test_linearize_runs_convert_finetune_evaluate_and_summarizes(tiny_base, text_dir, tmp_path, capsys):
    out = tmp_path / "job"
    args = tiny_args(tiny_base, text_dir, out, "eval.tasks=[bb_hyperbaton]", "eval.limit=4", "eval.batch_size=4")
    assert main(["linearize", *args, "--max-steps", "4"]) == 0
    printed = capsys.readouterr().out
    assert "[1/3] convert" in printed and "[3/3] evaluate" in printed
    assert "| teacher (original attention) |" in printed and "| Liger, fine-tuned (4 steps) |" in printed
    summary = json.loads((out / "summary.json").read_text())
    v = summary["validation"]
    assert v["converted"]["step"] == 0 and v["finetuned"]["step"] == 4
    assert v["finetuned"]["loss"] < v["converted"]["loss"]
    # lm-eval ran on all three models: scores are accuracies over the 4 documents
    row = summary["suites"]["tasks"]["bb_hyperbaton"]
    assert row["metric"] == "acc" and summary["suites"]["limit"] == 4
    for name in ("teacher", "converted", "finetuned"):
        assert row[name] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert set(summary["suites"]["average"]) == {"teacher", "converted", "finetuned"}
    assert "| bb_hyperbaton | acc |" in printed
    assert summary["final"] == str(out / "final")
    assert (out / "summary.md").read_text().startswith("# liger linearize:")
    assert (out / "final" / "config.json").exists()


def test_linearize_without_tasks_reports_validation_only(tiny_base, text_dir, tmp_path, capsys):
    out = tmp_path / "job"
    assert main(["linearize", *tiny_args(tiny_base, text_dir, out, "eval.tasks=[]"), "--max-steps", "2"]) == 0
    assert json.loads((out / "summary.json").read_text())["suites"] == {}
    assert "no tasks configured" in capsys.readouterr().out


def test_linearize_rejects_an_unknown_task_before_training(tiny_base, text_dir, tmp_path, capsys):
    out = tmp_path / "job"
    assert main(["linearize", *tiny_args(tiny_base, text_dir, out, "eval.tasks=[no_such_task]")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown task(s) no_such_task" in err[0]
    assert not (out / "metrics.jsonl").exists()


def test_linearize_refuses_to_skip_the_final_model(tiny_base, text_dir, tmp_path, capsys):
    assert main(["linearize", *tiny_args(tiny_base, text_dir, tmp_path / "job", "train.save_final=false")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.save_final must stay true" in err[0]


def test_linearize_defaults_to_the_cpu_recipe():
    from liger.cli import build_parser

    args = build_parser().parse_args(["linearize"])
    assert args.config == "smollm2-cpu" and args.overrides == []


def test_linearize_a_liger_checkpoint_scores_its_teacher_in_teacher_mode(tiny_base, text_dir, tmp_path, monkeypatch):
    """Given an already converted checkpoint, the "teacher" row is the same weights with the original attention."""
    import liger.eval
    from liger.models.attention import LigerAttention

    assert main(["convert", str(tiny_base), str(tmp_path / "liger")]) == 0
    seen = []

    def fake_evaluate(model, **kwargs):
        modes = {m.teacher_mode for m in model.modules() if isinstance(m, LigerAttention)}
        seen.append(modes)
        return dict(tasks={"bb_hyperbaton": dict(metric="acc", value=0.5)})

    monkeypatch.setattr(liger.eval, "evaluate", fake_evaluate)
    args = tiny_args(tmp_path / "liger", text_dir, tmp_path / "job", "eval.tasks=[bb_hyperbaton]")
    assert main(["linearize", *args, "--max-steps", "1"]) == 0
    assert seen == [{True}, {False}, {False}]  # teacher, converted, fine-tuned
