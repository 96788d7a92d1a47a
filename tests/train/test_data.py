"""Training data: Alpaca prompt masking, plain text, packing, the validation split, and clear errors."""

import json

import pytest
import torch

from liger.train.config import DataConfig
from liger.train.data import (
    IGNORE_INDEX,
    PROMPT_NO_INPUT,
    PROMPT_WITH_INPUT,
    DataError,
    build_data,
    held_out_records,
    pack,
    tokenize,
)
from tests.conftest import alpaca_records, byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_alpaca_masks_the_prompt_and_ends_with_eos(tok):
    records = [{"instruction": "Add.", "input": "2+2", "output": "4"}, {"instruction": "Hi.", "output": "Hello"}]
    (ids0, labels0), (ids1, labels1) = tokenize(records, "alpaca", tok)
    prompt0 = PROMPT_WITH_INPUT.format(instruction="Add.", input="2+2")
    prompt1 = PROMPT_NO_INPUT.format(instruction="Hi.")
    assert tok.decode(ids0) == prompt0 + "4<eos>"
    assert tok.decode(ids1) == prompt1 + "Hello<eos>"
    n_prompt = len(tok(prompt0)["input_ids"])
    assert labels0[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels0[n_prompt:] == ids0[n_prompt:] and tok.decode(labels0[n_prompt:]) == "4<eos>"
    assert sum(v != IGNORE_INDEX for v in labels1) == len("Hello") + 1


def test_text_labels_every_token_and_ends_each_file_with_eos(tok, text_dir):
    cfg = DataConfig(path=str(text_dir), max_length=16, val_records=5)
    data = build_data(cfg, tok)
    assert data.format == "text" and data.records == 80
    assert torch.equal(data.train_ids, data.train_labels)
    stream = tok.decode(torch.cat([data.val_ids.flatten(), data.train_ids.flatten()]).tolist())
    assert stream.startswith("Paragraph 0 of a.txt: the quick brown fox")
    assert "lazy dog.\n\nParagraph 1 of a.txt" in stream
    assert "Paragraph 39 of a.txt: the quick brown fox jumps over the lazy dog.<eos>Paragraph 0 of b.md" in stream


def test_text_records_tokenize_as_the_whole_text(tmp_path):
    """Paragraph records must give the file's own tokens. With a byte-level BPE that has a "\\n\\n" token (as
    SmolLM2's has) running text splits a blank line into two "\\n" pre-tokens, but a bare paragraph + "\\n\\n"
    ends in the merged token: records that appended "\\n\\n" trained on a token the text never has."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from liger.train.data import _paragraphs, _read_text

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({"ĊĊ": len(vocab), "<eos>": len(vocab) + 1})
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[("Ċ", "Ċ")]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    text = ("\n\nTitle  \n\n\n\n  An indented paragraph,\non two lines.\n \n\nNext one.\n\n\t\nLast words.\n\n")
    path = tmp_path / "doc.txt"
    path.write_text(text)
    paragraphs = _paragraphs(text)
    assert len(paragraphs) == 4 and "".join(paragraphs) == text.strip()
    assert [p.strip() for p in paragraphs] == ["Title", "An indented paragraph,\non two lines.", "Next one.",
                                               "Last words."]
    records = tokenize(_read_text(path, "text"), "text", tok)
    assert [t for ids, _ in records for t in ids] == tok(text.strip() + "<eos>")["input_ids"]
    assert tok("a\n\n")["input_ids"][-1] == vocab["ĊĊ"]  # the token the old records ended in


def test_packing_drops_the_tail_and_chunks_without_labels():
    examples = [([1, 2, 3], [IGNORE_INDEX] * 3), ([4, 5, 6, 7, 8], [IGNORE_INDEX, IGNORE_INDEX, 6, 7, 8]),
                ([9, 10, 11], [IGNORE_INDEX] * 3)]
    ids, labels = pack(examples, 4)
    # chunks: [1,2,3,4] (no label) [5,6,7,8] [9,10,11 | tail dropped]
    assert ids.tolist() == [[5, 6, 7, 8]] and labels.tolist() == [[IGNORE_INDEX, 6, 7, 8]]
    # a chunk whose only label is at its first position takes no loss (that token is never predicted)
    ids, labels = pack([([1, 2, 3, 4, 5], [IGNORE_INDEX] * 4 + [5]), ([6, 7, 8], [IGNORE_INDEX] * 3)], 4)
    assert ids.shape[0] == 0


def test_validation_is_the_first_records_and_is_held_out(tok, tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in alpaca_records(60)))
    data = build_data(DataConfig(path=str(path), max_length=128, val_records=10), tok)
    val_text = tok.decode(data.val_ids.flatten().tolist())
    train_text = tok.decode(data.train_ids.flatten().tolist())
    assert "Repeat the number 0." in val_text and "\n5 5 5.<eos>" in val_text
    assert "number 10." not in val_text and "\n10 10 10.<eos>" in train_text
    assert "number 3." not in train_text
    assert data.train_ids.shape[1] == 128 and data.format == "alpaca"
    limited = build_data(DataConfig(path=str(path), max_length=128, val_records=10, max_records=30), tok)
    assert limited.records == 30 and limited.train_ids.shape[0] < data.train_ids.shape[0]


@pytest.mark.parametrize("setup,message", [
    ("missing", "does not exist"),
    ("empty_list", "holds no records"),
    ("no_output", "record 1 has no 'output' text"),
    ("not_object", "record 0 is not an object"),
    ("bad_json", "invalid JSON"),
    ("empty_folder", "has no text files"),
    ("few_records", "not more than data.val_records=200"),
    ("short", "not enough for one chunk of data.max_length=4096"),
])
def test_bad_data_gives_a_clear_error(tok, tmp_path, setup, message):
    cfg = DataConfig(path=str(tmp_path / "data.json"), val_records=2)
    file = tmp_path / "data.json"
    if setup == "missing":
        cfg.path = str(tmp_path / "nope.jsonl")
    elif setup == "empty_list":
        file.write_text("[]")
    elif setup == "no_output":
        file.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    elif setup == "not_object":
        file.write_text(json.dumps(["just a string"]))
    elif setup == "bad_json":
        file.write_text("[{")
    elif setup == "empty_folder":
        (tmp_path / "folder").mkdir()
        cfg.path = str(tmp_path / "folder")
    elif setup == "few_records":
        file.write_text(json.dumps(alpaca_records(5)))
        cfg.val_records = 200
    elif setup == "short":
        file.write_text(json.dumps(alpaca_records(10)))
        cfg.max_length = 4096
    with pytest.raises(DataError) as info:
        build_data(cfg, tok)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_format_mismatch_errors(tok, tmp_path, text_dir):
    (tmp_path / "t.txt").write_text("hello\n\nworld\n")
    with pytest.raises(DataError, match="not a .json/.jsonl file"):
        build_data(DataConfig(path=str(tmp_path / "t.txt"), format="alpaca", val_records=1), tok)
    with pytest.raises(DataError, match="is a folder"):
        build_data(DataConfig(path=str(text_dir), format="alpaca", val_records=1), tok)


def test_hub_dataset_names_go_through_datasets(tok, monkeypatch):
    import datasets

    rows = alpaca_records(30)
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        if name == "someone/text-corpus":
            return datasets.Dataset.from_list([{"text": f"line {i} " * 20} for i in range(30)])
        if name == "someone/other":
            return datasets.Dataset.from_list([{"question": "q", "answer": "a"}])
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = build_data(DataConfig(path="yahma/alpaca-cleaned", max_length=64, val_records=5), tok)
    assert data.format == "alpaca" and data.records == 30 and calls[-1] == ("yahma/alpaca-cleaned", "train")
    data = build_data(DataConfig(path="someone/text-corpus", max_length=64, val_records=5, split="test"), tok)
    assert data.format == "text" and calls[-1] == ("someone/text-corpus", "test")
    with pytest.raises(DataError, match=r"has columns \['answer', 'question'\]; expected instruction/input/output"):
        build_data(DataConfig(path="someone/other", val_records=1), tok)


def test_validation_split_sized_to_the_data(tok, tmp_path):
    """Unset data.val_records: 5% of the records, at least 10, at most 200, at most half; an explicit value wins."""
    assert [held_out_records(n, None) for n in (2, 3, 21, 100, 1000, 4000, 51760)] == [1, 1, 10, 10, 50, 200, 200]
    assert held_out_records(100, 7) == 7
    file = tmp_path / "small.json"
    file.write_text(json.dumps(alpaca_records(120)))  # 200 records or fewer were refused by default
    data = build_data(DataConfig(path=str(file), max_length=32), tok)
    assert data.val_records == 10 and data.records == 120
    assert "the first 10 held out for validation (data.val_records unset: 5% of the records" in data.describe()
    explicit = build_data(DataConfig(path=str(file), max_length=32, val_records=30), tok)
    assert explicit.val_records == 30 and "(data.val_records=30)" in explicit.describe()
    file.write_text(json.dumps(alpaca_records(1)))
    with pytest.raises(DataError, match="has 1 record\\(s\\): too few to hold some out"):
        build_data(DataConfig(path=str(file), max_length=32), tok)


def test_a_path_under_home_is_expanded(tok, text_dir, monkeypatch):
    # (liger-memory.yaml reads ~/.cache/liger/repro-corpus/train)
    monkeypatch.setenv("HOME", str(text_dir.parent))
    data = build_data(DataConfig(path=f"~/{text_dir.name}", format="text", max_length=8, val_records=1), tok)
    assert data.source == str(text_dir)
