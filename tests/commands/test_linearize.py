"""``liger linearize`` end to end on a tiny model."""

import json

import pytest

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
    assert set(summary["suites"]["average"]) == {"teacher", "baseline", "converted", "finetuned"}
    assert "| bb_hyperbaton | acc |" in printed
    # the zero-training baseline sits beside the other models, and the summary says which is better
    assert v["baseline"]["spec"] == "swa:64:4" and v["baseline"]["tokens"] == v["teacher"]["tokens"]
    assert "| baseline swa:64:4 (" in printed and "| task | metric | teacher | swa:64:4 |" in printed
    assert summary["verdict"][0].startswith("On held-out validation loss the fine-tuned Liger model is ")
    assert "recovery" not in printed
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
    assert seen == [{True}, {False}, {False}, {False}]  # teacher, baseline swa:64:4, converted, fine-tuned


def _summary(finetuned_loss: float, averages: dict) -> dict:
    validation = {k: dict(loss=loss, ppl=2.0, step=step, tokens=4080) for k, loss, step in (
        ("teacher", 4.0, 0), ("baseline", 4.2, 0), ("converted", 8.0, 0), ("finetuned", finetuned_loss, 60))}
    tasks = {"bb_hyperbaton": dict(metric="acc", stderr=dict(finetuned=0.046), **averages)}
    return dict(model="smollm2", data="shakespeare", output="out", baseline="swa:64:4", validation=validation,
                gap_closed=0.85, suites=dict(tasks=tasks, average=dict(averages), skipped={}, limit=100),
                wall_seconds=60.0, train_seconds=30.0, tokens_per_s=100.0, trained_steps=60, train_tokens=30720,
                peak_rss_bytes=1, final="out/final", val_records=100)


def test_the_summary_says_when_fine_tuning_loses_to_the_baseline():
    from liger.train.job import _verdict, format_summary

    summary = _summary(4.6143, dict(teacher=0.71, baseline=0.69, converted=0.653, finetuned=0.623))
    summary["verdict"] = _verdict(summary)
    text = format_summary(summary)
    assert ("fine-tuned Liger model is worse than the zero-training baseline swa:64:4 (4.6143 vs 4.2000)"
            in text)
    assert ("worse than the converted model before training (0.623 vs 0.653) and worse than the baseline swa:64:4 "
            "(0.623 vs 0.690); the average's standard error is about 0.046") in text
    assert "fine-tuning does not pay off on held-out loss (against swa:64:4) or lm-eval" in text
    assert "30,720 training tokens, 0.15% of the paper's recipe" in text and "recovery" not in text

    summary = _summary(4.1, dict(teacher=0.71, baseline=0.69, converted=0.653, finetuned=0.70))
    summary["verdict"] = _verdict(summary)
    text = format_summary(summary)
    assert "is better than the zero-training baseline swa:64:4 (4.1000 vs 4.2000)" in text
    assert "better than the converted model before training (0.700 vs 0.653)" in text
    assert "does not pay off" not in text


@pytest.mark.parametrize("setup,message", [
    ("missing", "does not exist"),
    ("empty", "holds no records"),
    ("baseline", "eval.baseline must be swa:W:S"),
])
def test_linearize_checks_its_inputs_before_loading_the_model(tiny_base, tmp_path, capsys, monkeypatch, setup,
                                                              message):
    import liger.loading

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(liger.loading, "load_model", no_model)
    data, extra = tmp_path / "data.txt", []
    if setup == "empty":
        data.write_text("")
    elif setup == "baseline":
        data.write_text("text\n\nmore text\n")
        extra = ["eval.baseline=swa:64"]
    capsys.readouterr()
    assert main(["linearize", *tiny_args(tiny_base, data, tmp_path / "job", *extra)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("liger linearize: error: ") and message in err[0], err
