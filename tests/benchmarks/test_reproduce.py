"""benchmarks/reproduce.py and its package benchmarks/repro (issue 6): corpus splitting and text extraction, then
`train --tiny`, `eval` and `longctx` end to end on a tiny random Llama with a byte tokenizer (CPU)."""

from __future__ import annotations

import functools
import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("cli", "evaluate", "results", "train", "corpus", "common")


class Repro:
    """The package's modules by name (``reproduce.train``, ``reproduce.evaluate``: what a test patches), and any
    of their names (``reproduce.student_spec``), looked up in the module that defines or imports it."""

    def __init__(self):
        sys.path.insert(0, str(ROOT / "benchmarks"))
        self._modules = {name: importlib.import_module(f"repro.{name}") for name in STEPS}

    def __getattr__(self, name):
        if name in self._modules:
            return self._modules[name]
        for module in self._modules.values():
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(name)


@pytest.fixture(scope="module")
def reproduce():
    return Repro()


def test_split_documents_keeps_whole_documents_and_the_fractions(reproduce):
    docs = [(f"d{i}", "x" * 100) for i in range(100)]
    train, val, held = reproduce.split_documents(docs, heldout=0.02, validation=0.005)
    assert [d[0] for d in held] == ["d98", "d99"]
    assert [d[0] for d in val] == ["d97"]
    assert train == docs[:97]
    train, val, held = reproduce.split_documents([("a", "x" * 1000), ("b", "y"), ("c", "z")])
    assert (len(train), len(val), len(held)) == (1, 1, 1)
    with pytest.raises(ValueError):
        reproduce.split_documents([("a", "x"), ("b", "y")])


def test_html_to_text_keeps_the_main_body_and_drops_navigation(reproduce):
    page = """<html><head><title>T</title><script>var x = 1;</script></head><body>
      <div class="related">Navigation: index | modules</div>
      <div class="body" role="main"><h1>Heading<a class="headerlink" href="#h">¶</a></h1>
      <p>First   paragraph,
      on two lines &amp; an entity.</p><ul><li>item one</li><li>item two</li></ul>
      <pre>code  line 1
    indented</pre></div><div class="footer">Copyright</div></body></html>"""
    text = reproduce.html_to_text(page, main_only=True)
    assert text.split("\n\n") == ["Heading", "First paragraph, on two lines & an entity.", "item one", "item two",
                                  "code  line 1\n    indented"]
    assert reproduce.html_to_text(page) == text  # navigation and footer dropped by their class, head by its tag


def test_pod_to_text(reproduce):
    pod = "=head1 NAME\n\nperlfoo - a C<thing> with L<perlop|perlop/x> and E<lt>E<gt>\n\n=over 4\n\n=item * one\n\n" \
          "Use C<< $a->b >> here.\n\n=back\n\n=cut\n"
    assert reproduce.pod_to_text(pod).split("\n\n") == ["NAME", "perlfoo - a thing with perlop and <>", "one",
                                                          "Use $a->b here."]


def test_hybrid_layers(reproduce):
    assert reproduce.hybrid_layers(30) == [3, 11, 19, 27]
    assert reproduce.hybrid_layers(32) == [3, 11, 19, 27]
    assert reproduce.hybrid_layers(2) == [1]


def _tiny_corpus(path: Path) -> Path:
    """A corpus folder as `corpus` writes it (validation file first, one file per source, held-out files)."""
    (path / "train").mkdir(parents=True)
    (path / "heldout").mkdir()
    words = "the quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun".split()

    def paragraphs(seed, n):
        return "\n\n".join(" ".join(words[(seed + i + j) % len(words)] for j in range(12)) for i in range(n)) + "\n"

    (path / "train" / "000-validation.txt").write_text(paragraphs(0, 12))
    (path / "train" / "a.txt").write_text(paragraphs(1, 120))
    # held-out paragraphs of ~100 tokens (bytes): long enough for the repeated-span measure
    (path / "heldout" / "a.txt").write_text(paragraphs(2, 40).replace("\n\n", " the end\n\n").replace(
        "\n\n", " and so on, and so forth, and on again\n\n"))
    manifest = dict(heldout_fraction=0.02, validation_fraction=0.005, val_records=12, train_tokens=0,
                    validation_tokens=0, heldout_tokens=0,
                    sources={"a": dict(package="test", version="0", documents=3, train=dict(tokens=1),
                                       validation=dict(tokens=1), heldout=dict(tokens=1))})
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_a_stopped_student_continues_from_its_kept_checkpoint_as_if_never_stopped(tiny_base, tmp_path, reproduce,
                                                                                 monkeypatch):
    """`train --resume`: a run lost after its step-4 checkpoint (a lease taken back) continues on another machine
    from the checkpoint it kept in OUT/STUDENT/resume/, with another --out, --scratch and corpus folder (run S's
    students were refused on the development machine: "--resume with a different data.path"), and ends where the run
    that was never stopped ends: the same adapter, the same validation losses, the steps of both parts."""
    from safetensors.torch import load_file

    corpus = _tiny_corpus(tmp_path / "corpus")
    monkeypatch.setattr(sys, "argv", ["reproduce.py"])
    name = "gla+train.save_every=2+train.keep_checkpoints=3+train.eval_every=3"  # 6 steps of 2 x 128 tokens

    def train(run, *extra, corpus=corpus):
        return reproduce.main(["train", "--corpus", str(corpus), "--students", name, "--tokens", "1536", "--out",
                               str(tmp_path / run), "--scratch", str(tmp_path / f"scratch-{run}"), "--model",
                               str(tiny_base), "--tiny", *extra])

    assert train("whole", "--keep-scratch") == 0
    whole = json.loads((tmp_path / "whole" / name / "summary.json").read_text())
    assert whole["status"] == "ok" and whole["steps"] == 6 and "resumed_from_step" not in whole
    assert not (tmp_path / "whole" / name / "resume").exists()
    # the same run lost after step 4: its newest checkpoint kept beside its small files, its machine gone
    scratch = reproduce.scratch_run(tmp_path / "scratch-whole", tmp_path / "whole", name)
    shutil.rmtree(scratch / "checkpoints" / "step-000006")
    lost = tmp_path / "lost" / name
    assert reproduce.keep_for_resume(scratch, lost)
    assert sorted(p.name for p in (lost / "resume" / "checkpoints").iterdir()) == ["step-000004"]
    # (and this machine keeps the corpus elsewhere)
    assert train("lost", "--resume", corpus=shutil.copytree(corpus, tmp_path / "elsewhere" / "corpus")) == 0
    resumed = json.loads((lost / "summary.json").read_text())
    assert resumed["status"] == "ok" and resumed["steps"] == 6 and resumed["resumed_from_step"] == 4, resumed
    assert resumed["tokens"] == whole["tokens"] == 1536
    for key in ("teacher_val_loss", "initial_val_loss", "final_val_loss"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-6), key
    a, b = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (tmp_path / "whole" / name, lost))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not (lost / "resume").exists()  # finished: nothing left to continue
    assert train("lost", "--resume") == 0  # and not trained again
    assert json.loads((lost / "summary.json").read_text()) == resumed
    # --resume where nothing was kept: a new run
    assert train("new", "--resume") == 0
    assert "resumed_from_step" not in json.loads((tmp_path / "new" / name / "summary.json").read_text())


def test_train_tiny_then_eval(tiny_base, tmp_path, reproduce, monkeypatch):
    corpus = _tiny_corpus(tmp_path / "corpus")
    runs, scratch, report = tmp_path / "runs", tmp_path / "scratch", tmp_path / "report"
    # two students on the same code path as the GPU run; one that fails (in its own process, which does not
    # know the name added here) must not stop the other
    monkeypatch.setitem(reproduce.STUDENTS, "broken", dict(liger={"variant": "gla"}))
    monkeypatch.setattr(sys, "argv", ["reproduce.py"])
    students = "gla-h,memory,broken"
    code = reproduce.main(["train", "--corpus", str(corpus), "--students", students, "--tokens", "512", "--out",
                           str(runs), "--scratch", str(scratch), "--model", str(tiny_base), "--tiny"])
    assert code == 1  # one student failed
    ok = json.loads((runs / "gla-h" / "summary.json").read_text())
    assert ok["status"] == "ok", ok
    assert ok["steps"] == 2 and ok["tokens"] == 512 and ok["liger"]["full_attention_layers"] == [1]
    assert ok["final_val_loss"] is not None and ok["teacher_val_loss"] is not None
    files = {p.relative_to(runs / "gla-h").as_posix() for p in (runs / "gla-h").rglob("*") if p.is_file()}
    assert files == {"metrics.jsonl", "config.yaml", "environment.json", "loss_curve.png", "summary.json",
                     "adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/README.md"} - (
        set() if (runs / "gla-h" / "adapter" / "README.md").exists() else {"adapter/README.md"})
    memory = json.loads((runs / "memory" / "summary.json").read_text())  # global cache, 512-token sequences
    assert memory["status"] == "ok" and memory["sequence_length"] == 512 and memory["liger"]["global_cache_size"] == 256
    broken = json.loads((runs / "broken" / "summary.json").read_text())
    assert broken["status"] == "failed" and "unknown student 'broken'" in broken["error"]
    # checkpoints are removed (only the lock files stay)
    assert not [p for p in (scratch / "runs").rglob("*") if p.is_file() and p.suffix != ".lock"]

    # lm-eval's task index takes seconds to build and `liger eval` builds it once per model: build it once here
    from liger.eval import harness

    monkeypatch.setattr(harness, "task_manager", functools.lru_cache(harness.task_manager))
    code = reproduce.main(["eval", "--corpus", str(corpus), "--runs", str(runs), "--output-dir", str(report),
                           "--scratch", str(scratch), "--model", str(tiny_base), "--limit", "2", "--passkey", "",
                           "--ppl-context", "64", "--ppl-stride", "32", "--ppl-max-tokens", "256", "--tasks",
                           "bb_hyperbaton", "--device", "cpu", "--results-md", str(tmp_path / "results.md")])
    result = json.loads((report / "report.json").read_text())
    assert result["students"] == ["gla-h", "memory", *reproduce.BASELINES]
    assert code == 0
    text = (tmp_path / "results.md").read_text()
    assert reproduce.READING_PLACEHOLDER in text
    assert "| `gla-h` |" in text and "| gla-h | ok | 2 | 512 |" in text and "broken" in text
    assert (report / "loss_curves.png").stat().st_size > 1000
    assert (scratch / "merged" / "gla-h" / "config.json").is_file()

    # --report-only re-renders the page from the evaluation just made, without evaluating again
    (tmp_path / "results.md").unlink()
    monkeypatch.setattr(reproduce.evaluate, "merge_student", lambda *a: pytest.fail("--report-only merged a student"))
    code = reproduce.main(["eval", "--corpus", str(corpus), "--runs", str(runs), "--output-dir", str(report),
                           "--scratch", str(scratch), "--model", str(tiny_base), "--report-only",
                           "--results-md", str(tmp_path / "results.md")])
    assert code == 0 and (tmp_path / "results.md").read_text() == text
    (report / "reading.md").write_text("The students are fine.\n")  # a person's reading survives re-rendering
    reproduce.main(["eval", "--corpus", str(corpus), "--runs", str(runs), "--output-dir", str(report),
                    "--report-only", "--results-md", str(tmp_path / "results.md")])
    text = (tmp_path / "results.md").read_text()
    assert "## Reading\n\nThe students are fine.\n" in text and reproduce.READING_PLACEHOLDER not in text
    with pytest.raises(SystemExit, match="no earlier evaluation"):
        reproduce.main(["eval", "--corpus", str(corpus), "--runs", str(runs), "--output-dir", str(tmp_path / "x"),
                        "--report-only"])

    # the long-context measures, one process per model (on the GPU in a lease), joined to the page afterwards
    longctx = tmp_path / "longctx.json"
    code = reproduce.main(["longctx", "--corpus", str(corpus), "--runs", str(runs), "--scratch", str(scratch),
                           "--model", str(tiny_base), "--device", "cpu", "--models", "teacher,swa:64:4,memory",
                           "--passkey", "512", "--multikey", "512", "--repeat", "64", "--position-length", "256",
                           "--trials", "2", "--output", str(longctx), "--parallel", "3"])
    measured = json.loads(longctx.read_text())
    assert code == 0 and set(measured["models"]) == {str(tiny_base), "swa:64:4", "memory"}
    assert measured["models"]["memory"]["passkey"]["lengths"]["512"]["trials"] == 2
    code = reproduce.main(["eval", "--corpus", str(corpus), "--runs", str(runs), "--output-dir", str(report),
                           "--report-only", "--long-context", str(longctx), "--results-md", str(tmp_path / "r2.md")])
    page = (tmp_path / "r2.md").read_text()
    assert code == 0 and "multikey" in page.lower() and (report / "retrieval.png").is_file()
    assert json.loads((report / "report.json").read_text())["models"]["memory"]["repeat_recall"] is not None


def test_student_names_take_config_overrides(reproduce):
    spec = reproduce.student_spec("gla+optim.lr=2e-3+model.liger.gate_normalizer=4")
    assert spec["liger"] == {"variant": "gla", "gate_normalizer": 4} and spec["train"] == {"optim.lr": 2e-3}
    assert reproduce.student_spec("gla-cekl+optim.lr=5e-4")["train"] == {"train.loss": "ce+kl", "optim.lr": 5e-4}
    assert reproduce.STUDENTS["gla"] == {"liger": {"variant": "gla"}}  # the table is not modified
    for bad in ("nope", "gla+optim.lr", "gla+=3"):
        with pytest.raises(ValueError):
            reproduce.student_spec(bad)
    with pytest.raises(SystemExit, match="unknown student 'nope'"):
        reproduce.parse_students("gla,nope+optim.lr=1")


def test_student_token_budgets(reproduce):
    assert reproduce.student_spec("gla@20M")["tokens"] == 20_000_000
    assert reproduce.student_spec("gla+optim.lr=3e-3@2.5M") == {"liger": {"variant": "gla"},
                                                               "train": {"optim.lr": 3e-3}, "tokens": 2_500_000}
    assert reproduce.student_tokens("window-only@500k", None) == 500_000
    assert reproduce.student_tokens("gla", 1024) == 1024
    with pytest.raises(SystemExit, match="no token budget"):
        reproduce.student_tokens("gla", None)
    for bad in ("gla@", "gla@-1M", "gla@lots"):
        with pytest.raises(ValueError, match="not a token budget"):
            reproduce.student_spec(bad)
    with pytest.raises(SystemExit, match="named twice: gla"):
        reproduce.parse_students("gla,gsa,gla")


def test_two_train_commands_never_share_a_checkpoint_folder(reproduce, tmp_path):
    """Two `train` runs at once with the same student (two budgets, two --out folders) once shared
    SCRATCH/runs/NAME: the second deleted the first's checkpoints and the first lost its adapter."""
    a = reproduce.scratch_run(tmp_path, tmp_path / "runs-a", "gla")
    b = reproduce.scratch_run(tmp_path, tmp_path / "runs-b", "gla")
    assert a != b and a.name == b.name == "gla"
    assert reproduce.scratch_run(tmp_path, tmp_path / "runs-a" / ".." / "runs-a", "gla") == a


def test_a_student_already_training_into_the_same_folder_is_refused(reproduce, tmp_path, capsys):
    import argparse
    import fcntl

    held = reproduce.scratch_run(tmp_path / "scratch", tmp_path / "runs", "gla")
    held.parent.mkdir(parents=True)
    lock = open(held.with_name("gla.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the other process
    (held / "checkpoints").mkdir(parents=True)
    args = argparse.Namespace(student="gla", out=str(tmp_path / "runs"), scratch=str(tmp_path / "scratch"),
                              tokens=1024, per_gpu=1)
    assert reproduce.run_student(args) == reproduce.BUSY
    assert "being trained by another process" in capsys.readouterr().err
    assert (held / "checkpoints").is_dir()  # not deleted
    lock.close()
    # the dispatcher leaves the folder to the process that trains it (it used to write a "failed" summary
    # there, shown until that process overwrote it at its end) but records real failures
    runs = tmp_path / "runs"
    reproduce.record_end(runs, "gla", reproduce.BUSY)
    assert not (runs / "gla" / "summary.json").exists()
    assert "another process is training" in capsys.readouterr().out
    reproduce.record_end(runs, "gla", 1)
    assert json.loads((runs / "gla" / "summary.json").read_text())["status"] == "failed"


def test_longer_sequences_keep_the_tokens_per_step(reproduce, tmp_path):
    corpus = _tiny_corpus(tmp_path / "corpus")
    cfg = reproduce.student_config("memory", corpus, 20_000_000, tmp_path / "out", "smollm2", False, "cuda")
    assert cfg.data.max_length == 4096 and cfg.train.batch_size == cfg.train.micro_batch_size == 2
    assert cfg.train.max_steps == 20_000_000 // 8192 and cfg.train.save_every == cfg.train.max_steps // 10
    assert cfg.model.liger == {"variant": "gla", "linear_normalizer": "sum", "global_cache_size": 256,
                               "num_sink_tokens": 4}
    plain = reproduce.student_config("gla", corpus, 20_000_000, tmp_path / "out", "smollm2", False, "cuda")
    assert (plain.data.max_length, plain.train.batch_size, plain.train.max_steps) == (1024, 8, cfg.train.max_steps)
    assert plain.train.transfer_steps == 0 == cfg.train.transfer_steps


def test_attention_transfer_students_spend_a_quarter_of_their_steps_on_it(reproduce, tmp_path):
    corpus = _tiny_corpus(tmp_path / "corpus")
    cfg = reproduce.student_config("memory-at", corpus, 2_000_000, tmp_path / "out", "smollm2", False, "cuda")
    steps = 2_000_000 // 8192
    assert cfg.train.max_steps == steps and cfg.train.transfer_steps == round(steps / 4)
    assert cfg.data.max_length == 4096 and cfg.model.liger["global_cache_size"] == 256
    tiny = reproduce.student_config("gla-at", corpus, 1024, tmp_path / "out", "smollm2", True, "cpu")
    assert (tiny.train.max_steps, tiny.train.transfer_steps, tiny.train.loss) == (4, 1, "ce")


def test_a_student_stopped_at_its_time_limit_keeps_its_last_adapter(reproduce, tmp_path, monkeypatch):
    import argparse

    import liger.train

    corpus = _tiny_corpus(tmp_path / "corpus")
    scratch_root, runs = tmp_path / "scratch", tmp_path / "runs"

    def stopped_finetune(cfg, resume=False, data=None):
        adapter = Path(cfg.output) / "checkpoints" / "step-000003" / "adapter"
        adapter.mkdir(parents=True)
        (adapter / "adapter_model.safetensors").write_text("weights")
        (adapter.parent / "state.pt").write_text("state")
        (Path(cfg.output) / "config.yaml").write_text("output: x\n")
        raise SystemExit("stopped by signal 15 at the time limit")

    monkeypatch.setattr(liger.train, "finetune", stopped_finetune)
    monkeypatch.setattr(reproduce.train, "packed_data", lambda cfg, cache: None)
    args = argparse.Namespace(student="gla", out=str(runs), scratch=str(scratch_root), tokens=4096, per_gpu=1,
                              corpus=str(corpus), model="smollm2", tiny=True, data_cache=str(tmp_path / "d.pt"),
                              keep_scratch=False, resume=False)
    assert reproduce.run_student(args) == 1
    summary = json.loads((runs / "gla" / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["steps"] == 3 and summary["tokens"] == 3 * 2 * 128
    assert (runs / "gla" / "adapter" / "adapter_model.safetensors").read_text() == "weights"
    # and its checkpoint with the run's config, for `train --resume` (the scratch itself is gone)
    kept = runs / "gla" / "resume"
    assert (kept / "checkpoints" / "step-000003" / "state.pt").read_text() == "state"
    assert (kept / "config.yaml").is_file()
    assert not [p for p in scratch_root.rglob("*") if p.is_file() and p.suffix != ".lock"]
    reproduce.record_end(runs, "gla", "timeout")  # the dispatcher keeps the student's own summary
    assert json.loads((runs / "gla" / "summary.json").read_text())["status"] == "stopped"


def test_heldout_documents_keep_their_boundaries(reproduce, tmp_path):
    from liger.eval.longtext import read_documents

    corpus = _tiny_corpus(tmp_path / "corpus")
    assert reproduce.heldout_texts(corpus) == [str(corpus / "heldout" / "a.txt")]  # a corpus built before
    (corpus / "heldout-docs").mkdir()
    docs = [("first", "One paragraph.\n\nAnother one.\n"), ("second", "A second document.")]
    reproduce.write_documents(corpus / "heldout-docs" / "a.jsonl", docs)
    assert reproduce.heldout_texts(corpus) == [str(corpus / "heldout-docs" / "a.jsonl")]
    read, marked = read_documents(corpus / "heldout-docs" / "a.jsonl")
    assert marked and [text for _, text in read] == ["One paragraph.\n\nAnother one.", "A second document."]
