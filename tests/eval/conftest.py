"""Tiny checkpoints with a character-level tokenizer, and a tiny local lm-eval task."""

import json

import pytest
from transformers import PreTrainedTokenizerFast

from tests.conftest import tiny_teacher

TINY_DOCS = [
    {"question": "Is the sky blue?", "choices": ["yes", "no"], "label": 0},
    {"question": "Two plus two is", "choices": ["four", "five", "three"], "label": 0},
    {"question": "The sun is", "choices": ["cold", "hot"], "label": 1},
    {"question": "Grass is", "choices": ["red", "green", "blue"], "label": 1},
    {"question": "Ice is", "choices": ["cold", "hot"], "label": 0},
]


def char_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    """One token per printable ASCII character or newline (98 ids: fits the tiny models' 128-token vocabulary).
    With ``bos``, a 99th id ``<bos>`` that the tokenizer puts before every text (as Llama's does)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {"<unk>": 0, "<eos>": 1}
    for c in [chr(i) for i in range(32, 127)] + ["\n"]:
        vocab[c] = len(vocab)
    if bos:
        vocab["<bos>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    extra = {}
    if bos:
        tok.add_special_tokens(["<bos>"])
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                           special_tokens=[("<bos>", vocab["<bos>"])])
        extra["bos_token"] = "<bos>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>",
                                   **extra)


WORDS = ("the river ran past a quiet town where old men sat on green benches and talked about rain while children "
         "carried bread home from the market before dark every evening in late summer when birds flew south over "
         "hills covered with pine trees and a small road led to the harbor full of boats painted blue and red").split()


def prose(paragraphs: int, seed: int = 0) -> str:
    """Deterministic English-like text: ``paragraphs`` paragraphs of 1-3 sentences of 4-9 words, separated by
    blank lines (with the character tokenizer most paragraphs have 40-200 tokens)."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(paragraphs):
        sentences = []
        for _ in range(rng.randint(1, 3)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 9))]
            sentences.append(" ".join(words).capitalize() + rng.choice(".!?."))
        out.append(" ".join(sentences))
    return "\n\n".join(out) + "\n"


@pytest.fixture
def tokenizer():
    return char_tokenizer()


@pytest.fixture
def teacher_dir(tmp_path):
    """A tiny Llama checkpoint with its tokenizer."""
    path = tmp_path / "teacher"
    tiny_teacher("llama").save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def tiny_task_dir(tmp_path):
    """A folder with the lm-eval task ``tiny_mc`` (5 docs) whose data path is absolute."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    data = folder / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in TINY_DOCS))
    (folder / "tiny_mc.yaml").write_text(f"""task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  version: 1.0
""")
    return folder
