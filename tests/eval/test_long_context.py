"""The long-context measures: text reading, prompt and sequence construction, scoring against direct
computations, standard errors, and the one entry point (runnable without lm-eval)."""

import json
import math
import re
import subprocess
import sys

import pytest
import torch

from liger.eval.long_context import check_long_context, long_context
from liger.eval.longtext import LongText, token_nlls
from liger.eval.models import build_student
from liger.eval.multikey import INTRO, NEEDLE, QUESTION, WORDS, insertion_points, multikey, multikey_prompt
from liger.eval.passkey import passkey
from liger.eval.position import position_buckets, position_loss
from liger.eval.recall import repeat_candidates, repeat_recall, repeat_sequence
from liger.eval.stats import binomial, mean_stderr
from tests.conftest import tiny_teacher
from tests.eval.conftest import char_tokenizer, prose


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "prose.txt"
    path.write_text(prose(300))
    return path


def direct_nlls(model, ids) -> torch.Tensor:
    """-log p(ids[t] | ids[:t]) for t >= 1 from the model's logits, computed here without liger's helpers."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return -logits.log_softmax(-1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]


# ---------------------------------------------------------------------------------------------- statistics


def test_binomial_accuracy_stderr_and_wilson_interval():
    r = binomial(15, 20)
    assert r["accuracy"] == 0.75 and r["stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 20))
    # Wilson 95 % intervals (z = 1.96), values from the closed form
    assert r["wilson95"] == pytest.approx([0.5313, 0.8881], abs=1e-4)
    zero = binomial(0, 20)
    assert zero["stderr"] == 0 and zero["wilson95"][0] == 0 and zero["wilson95"][1] == pytest.approx(0.1611, abs=1e-4)
    assert binomial(20, 20)["wilson95"] == pytest.approx([0.8389, 1.0], abs=1e-4)
    with pytest.raises(ValueError):
        binomial(3, 2)
    mean, err = mean_stderr([1.0, 2.0, 3.0, 6.0])
    assert mean == 3.0 and err == pytest.approx(math.sqrt(14 / 3 / 4))
    assert mean_stderr([2.0]) == (2.0, None)


# ------------------------------------------------------------------------------------------------- text


def test_long_text_locates_paragraphs_and_their_separators(text_file):
    tok = char_tokenizer()
    corpus = LongText([text_file], tok)
    text = text_file.read_text()
    assert corpus.tokens == len(text) and len(corpus.paragraphs) == 300
    assert corpus.paragraphs[0].sep_start == corpus.paragraphs[0].tok_start  # no blank line before the first
    for p in corpus.paragraphs[:50]:
        ids = corpus.documents[p.doc].ids
        assert tok.decode(ids[p.tok_start:p.tok_end]) == corpus.paragraph_text(p)
        if p is not corpus.paragraphs[0]:
            assert tok.decode(ids[p.sep_start:p.tok_start]) == "\n\n"


def test_long_text_input_errors(tmp_path):
    tok = char_tokenizer()
    with pytest.raises(FileNotFoundError, match="no text file"):
        LongText([tmp_path / "missing.txt"], tok)
    (tmp_path / "blank.txt").write_text(" \n\n ")
    with pytest.raises(ValueError, match="holds no text"):
        LongText([tmp_path / "blank.txt"], tok)
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2: expected a JSON object"):
        LongText([tmp_path / "bad.jsonl"], tok)


def test_sequences_plain_text_segments_and_jsonl_documents(tmp_path):
    tok = char_tokenizer()
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(prose(60, seed=1))
    b.write_text(prose(30, seed=2))
    corpus = LongText([a, b], tok)
    seqs = corpus.sequences(500, 6)
    assert all(len(s["ids"]) == 500 for s in seqs)
    assert [s["source"] for s in seqs] == [str(a)] * 3 + [str(b)] * 3  # round robin over the files
    # consecutive non-overlapping segments, evenly spaced in each file, exactly the file's tokens
    n_a = len(a.read_text()) // 500
    assert [s["start"] for s in seqs[:3]] == [i * n_a // 3 * 500 for i in range(3)]
    for s in seqs:
        text = a.read_text() if s["source"] == str(a) else b.read_text()
        assert tok.decode(s["ids"]) == text[s["start"]:s["start"] + 500]
    with pytest.raises(ValueError, match="needs 100 sequences of 500 tokens but the text files hold"):
        corpus.sequences(500, 100)
    # .jsonl: one document per line, each sequence the start of a document with enough tokens; BOS first
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["short one", prose(20, 3), prose(20, 4)]))
    bos = char_tokenizer(bos=True)
    corpus = LongText([docs], bos)
    assert corpus.prefix == [bos.bos_token_id]
    seqs = corpus.sequences(300, 2)
    assert [s["source"] for s in seqs] == [f"{docs}:2", f"{docs}:3"] and all(s["start"] == 0 for s in seqs)
    assert seqs[0]["ids"] == [bos.bos_token_id] + bos(prose(20, 3), add_special_tokens=False).input_ids[:299]
    # too few documents' beginnings: later non-overlapping segments of the documents fill in, evenly spaced
    segments = sum(len(bos(prose(20, i), add_special_tokens=False).input_ids) // 299 for i in (3, 4))
    assert segments > 3
    more = corpus.sequences(300, 3)
    assert {s["source"] for s in more} == {f"{docs}:2", f"{docs}:3"} and any(s["start"] > 0 for s in more)
    for s in more:
        text = prose(20, 3) if s["source"].endswith(":2") else prose(20, 4)
        ids = bos(text, add_special_tokens=False).input_ids
        assert s["start"] % 299 == 0 and s["ids"] == [bos.bos_token_id] + ids[s["start"]:s["start"] + 299]
    with pytest.raises(ValueError, match=f"hold {segments}"):
        corpus.sequences(300, segments + 1)


def test_token_nlls_equal_a_direct_computation():
    model = tiny_teacher("llama")
    ids = torch.randint(0, 128, (70,), generator=torch.Generator().manual_seed(0)).tolist()
    torch.testing.assert_close(token_nlls(model, ids, chunk=16).double(), direct_nlls(model, ids), rtol=1e-5,
                               atol=1e-5)


# -------------------------------------------------------------------------------------------- multi-key


def test_multikey_prompt_length_depths_and_pairs(text_file):
    tok = char_tokenizer()
    corpus = LongText([text_file], tok)
    pairs = [("apple", 1234567), ("tiger", 7654321), ("violin", 1111111), ("wagon", 2222222)]
    for length, depth in [(1500, 0.1), (1500, 0.62), (2500, 0.97), (1500, 0.0)]:
        depths = [(depth + j / 4) % 1 for j in range(4)]
        built = multikey_prompt(tok, corpus, length, pairs, depths, asked=0, start_paragraph=7)
        prompt = built["prompt"]
        assert built["tokens"] == len(tok(prompt).input_ids) and length - 16 <= built["tokens"] <= length
        assert prompt.endswith(QUESTION.format(word="apple"))
        for (word, number), position in zip(pairs, built["positions"]):
            needle = NEEDLE.format(word=word, number=number)
            assert prompt.count(needle) == 1 and prompt.count(str(number)) == 1
            assert prompt[position:].lstrip().startswith(needle)  # positions count tokens (here characters)
            assert re.search(r"[.!?] " + re.escape(needle) + r"( |\n\n)", prompt) or \
                prompt.startswith(INTRO + "\n\n" + needle + " ")  # a sentence of its own
        # each pair sits at its depth of the filler, to within a sentence
        filler_start = prompt.index(built["filler"][:20])
        others = sum(len(NEEDLE.format(word=w, number=n)) + 1 for w, n in pairs)
        for d, position in zip(depths, built["positions"]):
            before = sum(len(NEEDLE.format(word=w, number=n)) + 1
                         for (w, n), q in zip(pairs, built["positions"]) if q < position)
            filler_before = position - filler_start - before
            assert abs(filler_before / len(built["filler"]) - d) < 0.06, (d, filler_before, len(built["filler"]))
        assert len(prompt) - len(built["filler"]) - others < 300
    assert insertion_points("One two. Three four!\n\nFive") == [0, 8, 20, 26]


class AnswerOracle:
    """Stands in for ``model.generate``: answers with the value of the asked key found in the prompt, or with
    another pair's value (a wrong answer), or with the key of the passkey prompt."""

    def __init__(self, tokenizer, wrong: bool):
        self.tokenizer, self.wrong = tokenizer, wrong

    def __call__(self, input_ids, max_new_tokens, **kwargs):
        prompt = self.tokenizer.decode(input_ids[0])
        asked = re.search(r"What is the special magic number for (\w+)\?", prompt)
        if asked:
            values = dict(re.findall(r"The special magic number for (\w+) is (\d+)\.", prompt))
            answer = next(v for w, v in values.items() if w != asked.group(1)) if self.wrong else values[asked.group(1)]
        else:
            key = re.search(r"The pass key is (\d+)", prompt).group(1)
            answer = str(int(key) + 1) if self.wrong else key
        new = torch.tensor([self.tokenizer(" " + answer + ".").input_ids[:max_new_tokens]])
        return torch.cat([input_ids, new], 1)


@pytest.mark.parametrize("wrong", [False, True])
def test_retrieval_scores_the_generated_number(text_file, wrong):
    tok = char_tokenizer()
    model = tiny_teacher("llama")
    model.generate = AnswerOracle(tok, wrong)
    mk = multikey(model, tok, [text_file], [900, 1200], trials=4, pairs=3, seed=5)
    pk = passkey(model, tok, [400], trials=4, seed=5)
    for result in (mk, pk):
        for r in result["lengths"].values():
            assert r["accuracy"] == (0.0 if wrong else 1.0) and r["trials"] == 4 and r["correct"] == (0 if wrong else 4)
            assert r["wilson95"] == binomial(r["correct"], 4)["wilson95"]
            # stratified depths: trial i of n in [i/n, (i+1)/n); the needle is inside the prompt
            assert [int(t["depth"] * 4) for t in r["trial_results"]] == [0, 1, 2, 3]
            assert all(0 < t["distance"] <= t["tokens"] for t in r["trial_results"])
    words = [t["word"] for t in mk["lengths"][900]["trial_results"]]
    assert set(words) <= set(WORDS) and mk["pairs"] == 3


def test_multikey_pairs_are_distinct_and_trials_reproducible(text_file, monkeypatch):
    import importlib

    mk = importlib.import_module("liger.eval.multikey")  # the module (liger.eval.multikey is also the function)

    tok = char_tokenizer()
    model = build_student("convert:gla", tiny_teacher("llama"))
    seen, original = [], mk.multikey_prompt

    def spy(tokenizer, corpus, length, pairs, depths, asked, start_paragraph):
        seen.append(pairs)
        return original(tokenizer, corpus, length, pairs, depths, asked, start_paragraph)

    monkeypatch.setattr(mk, "multikey_prompt", spy)
    first = multikey(model, tok, [text_file], [500], trials=2, pairs=4, seed=1)
    assert len(seen) == 2 and all(len({w for w, _ in p}) == 4 and len({n for _, n in p}) == 4 for p in seen)
    assert all(1_000_000 <= n <= 9_999_999 for p in seen for _, n in p)
    assert [t["word"] for t in first["lengths"][500]["trial_results"]] == [p[0][0] for p in seen]  # the asked
    assert first == multikey(model, tok, [text_file], [500], trials=2, pairs=4, seed=1)  # the cached generate path


def test_word_list_is_distinct_and_prefix_free():
    assert len(set(WORDS)) == len(WORDS) == 100
    assert not [(a, b) for a in WORDS for b in WORDS if a != b and a in b]


# ------------------------------------------------------------------------------------------ position loss


def test_position_buckets():
    assert position_buckets(4096) == [(1, 63), (64, 255), (256, 1023), (1024, 4095)]
    assert position_buckets(8192)[-1] == (4096, 8191) and position_buckets(100) == [(1, 63), (64, 99)]
    assert position_buckets(64) == [(1, 63)]
    assert position_buckets(300, [10, 100]) == [(1, 9), (10, 99), (100, 299)]
    for bad in ([100, 10], [300], [1]):
        with pytest.raises(ValueError, match="increasing positions"):
            position_buckets(300, bad)


@pytest.mark.parametrize("student", [None, "convert:gla"])
def test_position_loss_equals_a_direct_computation(tmp_path, student):
    tok = char_tokenizer()
    path = tmp_path / "a.txt"
    path.write_text(prose(40, seed=3))
    model = tiny_teacher("llama")
    if student:
        model = build_student(student, model)
    result = position_loss(model, tok, [path], length=300, sequences=3, edges=[16, 100])
    corpus = LongText([path], tok)
    direct = [direct_nlls(model, s["ids"]) for s in corpus.sequences(300, 3)]
    for (a, b), label in zip([(1, 15), (16, 99), (100, 299)], ["1-15", "16-99", "100-299"]):
        r = result["buckets"][label]
        per_seq = [d[a - 1:b].mean().item() for d in direct]
        assert r["nll"] == pytest.approx(sum(per_seq) / 3, rel=1e-5)
        assert r["stderr"] == pytest.approx(mean_stderr(per_seq)[1], rel=1e-4)
        assert r["tokens"] == 3 * (b - a + 1) and (r["start"], r["end"]) == (a, b)
    assert result["nll"] == pytest.approx(torch.cat(direct).mean().item(), rel=1e-5)
    assert result["sequences"] == 3 and len(result["sources"]) == 3


# --------------------------------------------------------------------------------------- repeat recall


def test_repeat_sequence_repeats_the_paragraph_at_the_gap(text_file):
    tok = char_tokenizer(bos=True)
    corpus = LongText([text_file], tok)
    [p] = repeat_candidates(corpus, [100, 300], lead=50)[5:6]
    stream, _ = corpus.stream()
    para = corpus.documents[p.doc].ids[p.tok_start:p.tok_end]
    assert 64 <= len(para) <= 128
    longer = repeat_sequence(corpus, p, 1000, lead=50, gap=300)
    for gap in (100, 300):
        seq = repeat_sequence(corpus, p, 1000, lead=50, gap=gap)
        ids, first, second, n = seq["ids"], seq["first"], seq["second"], seq["paragraph"]
        assert ids[first:first + n] == ids[second:second + n] == para and n == len(para)
        assert second - (first + n) == gap and len(ids) == second + n
        assert ids[0] == tok.bos_token_id and ids[1:51] == stream[1000:1050]  # the lead
        assert tok.decode(ids[first - 2:first]) == tok.decode(ids[second - 2:second]) == "\n\n"
        assert ids[first + n:second - 2] == stream[1050:1050 + gap - 2]
        assert longer["ids"][:second - 2] == ids[:second - 2]  # a shorter gap is the start of a longer one


def test_repeat_recall_equals_a_direct_computation(text_file):
    tok = char_tokenizer()
    model = tiny_teacher("llama")
    result = repeat_recall(model, tok, [text_file], gaps=[100, 200], trials=3, seed=2, lead=40)
    corpus = LongText([text_file], tok)
    # rebuild the trials from the recorded paragraphs (the spans are drawn the same way from the seed)
    import random

    from liger.eval.recall import _free_starts

    rng = random.Random("repeat-2")
    chosen = rng.sample(repeat_candidates(corpus, [100, 200], lead=40), 3)
    assert [[corpus.documents[p.doc].source, p.char_start] for p in chosen] == result["paragraphs"]
    for gap in (100, 200):
        drops, firsts, seconds = [], [], []
        rng = random.Random("repeat-2")
        rng.sample(repeat_candidates(corpus, [100, 200], lead=40), 3)
        for p in chosen:
            count, before, after = _free_starts(corpus, p, 40 + 200 - (p.tok_start - p.sep_start))
            r = rng.randrange(count)
            seq = repeat_sequence(corpus, p, r if r < before else after + r - before, lead=40, gap=gap)
            nll = direct_nlls(model, seq["ids"])
            n = seq["paragraph"]
            firsts.append(nll[seq["first"] - 1:seq["first"] - 1 + n].mean().item())
            seconds.append(nll[seq["second"] - 1:seq["second"] - 1 + n].mean().item())
            drops.append(firsts[-1] - seconds[-1])
        r = result["gaps"][gap]
        assert r["first"] == pytest.approx(sum(firsts) / 3, rel=1e-5)
        assert r["second"] == pytest.approx(sum(seconds) / 3, rel=1e-5)
        assert r["drop"] == pytest.approx(sum(drops) / 3, abs=1e-5)
        assert r["drop_stderr"] == pytest.approx(mean_stderr(drops)[1], rel=1e-3)


def test_a_window_model_scores_both_occurrences_alike_past_its_window(text_file):
    # two layers of an 8-key sliding window see 2 * 7 tokens back: from the paragraph's 16th token on, only the
    # paragraph's own tokens, at both occurrences
    tok = char_tokenizer()
    model = build_student("swa:8:0", tiny_teacher("llama")).eval()
    corpus = LongText([text_file], tok)
    p = repeat_candidates(corpus, [150], lead=32)[0]
    seq = repeat_sequence(corpus, p, 3000, lead=32, gap=150)
    nll, n = token_nlls(model, seq["ids"]), seq["paragraph"]
    first, second = nll[seq["first"] - 1:seq["first"] - 1 + n], nll[seq["second"] - 1:seq["second"] - 1 + n]
    torch.testing.assert_close(first[16:], second[16:], rtol=1e-4, atol=1e-4)
    assert (first[:8] - second[:8]).abs().max() > 1e-3  # the window's view differs before that


def test_repeat_recall_needs_enough_paragraphs(tmp_path):
    path = tmp_path / "few.txt"
    path.write_text(prose(12, seed=9))
    with pytest.raises(ValueError, match="repeated-span recall needs 20 paragraphs of 64-128 tokens"):
        repeat_recall(tiny_teacher("llama"), char_tokenizer(), [path], gaps=[100], trials=20)


# ------------------------------------------------------------------------------------------- the entry


def test_long_context_runs_what_is_asked_and_restores_the_mode(text_file):
    tok = char_tokenizer()
    model = build_student("convert:gla", tiny_teacher("llama")).train()
    result = long_context(model, tok, [text_file], multikey_lengths=[700], multikey_trials=2, multikey_pairs=2,
                          position_length=256, position_sequences=2, repeat_gaps=[100], repeat_trials=2, seed=3)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert result["passkey"] is None and set(result["seconds"]) == {"multikey", "position_loss", "repeat_recall"}
    assert result["multikey"]["lengths"][700]["trials"] == 2
    assert list(result["position_loss"]["buckets"]) == ["1-63", "64-255"]
    assert result["repeat_recall"]["gaps"][100]["trials"] == 2
    json.dumps(result)  # JSON-able


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(multikey_lengths=[500]), ValueError, "need text files"),
    (dict(texts="{tmp}/missing.txt", repeat_gaps=[100]), FileNotFoundError, "no text file"),
    (dict(texts="{text}", position_length=4096), ValueError, "needs 20 sequences of 4096 tokens"),
    (dict(texts="{text}", multikey_lengths=[100]), ValueError, "too short for 4 pairs"),
    (dict(texts="{text}", multikey_lengths=[50000], multikey_trials=1), ValueError, "needs as many tokens of filler"),
    (dict(passkey_lengths=[40]), ValueError, "too short for the prompt"),
    (dict(texts="{text}", repeat_gaps=[100], repeat_trials=0), ValueError, "repeat trials must be >= 1"),
    (dict(texts="{text}", multikey_lengths=[900], multikey_pairs=101), ValueError, "pairs must be in"),
])
def test_settings_and_text_are_checked_before_any_forward(text_file, tmp_path, kwargs, error, message):
    kwargs = {k: (v.format(tmp=tmp_path, text=text_file) if isinstance(v, str) else v) for k, v in kwargs.items()}
    if "texts" in kwargs:
        kwargs["texts"] = [kwargs["texts"]]
    with pytest.raises(error, match=message):
        check_long_context(char_tokenizer(), **kwargs)


def test_runs_without_lm_eval(text_file, tmp_path):
    # a process in which lm-eval (and matplotlib) cannot be imported measures a model through measure()
    script = f"""
import sys
sys.modules["lm_eval"] = None
sys.modules["matplotlib"] = None
from liger.eval import measure
from tests.conftest import tiny_teacher
from tests.eval.conftest import char_tokenizer
r = measure(tiny_teacher("llama"), char_tokenizer(), tasks=None, passkey_lengths=[400], passkey_trials=1,
            long_text=[{str(text_file)!r}], position_length=128, position_sequences=1, repeat_gaps=[100],
            repeat_trials=1, multikey_lengths=[600], multikey_trials=1)
print("MEASURED", sorted(k for k in ("passkey", "multikey", "position_loss", "repeat_recall") if r[k]))
"""
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=root,
                         env=dict(os.environ, PYTHONPATH=root))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "MEASURED ['multikey', 'passkey', 'position_loss', 'repeat_recall']" in out.stdout


def test_tokenized_text_is_reused_only_for_an_identical_tokenizer(text_file):
    from liger.eval.longtext import as_long_text

    corpus = LongText([text_file], char_tokenizer())
    assert as_long_text(corpus, corpus.tokenizer) is corpus
    assert as_long_text(corpus, char_tokenizer()) is corpus  # another object, the same tokenization
    other = as_long_text(corpus, char_tokenizer(bos=True))
    assert other is not corpus and other.prefix == [98] and other.files == corpus.files
