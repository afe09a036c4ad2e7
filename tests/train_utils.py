"""Tiny offline training setups: a tiny HF model and its tokenizer in one directory, small jsonl data sets,
and a config for them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from jsoft import build

POSITIVE = ["good", "great", "fine", "nice"]
NEGATIVE = ["bad", "awful", "poor", "sad"]
FILLER = ["the", "a", "movie", "film", "plot", "was", "is", "very", "it", "this", "and", "i", "liked"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
NAMES = ["john", "mary", "smith"]
PLACES = ["paris", "london", "york"]
WORDS = POSITIVE + NEGATIVE + FILLER + NAMES + PLACES + ["positive", "negative", "in", "lives", "new"]


def tokenizer(kind: str):
    """A word-level WordPiece tokenizer: BERT-like ("bert", "roberta", "deberta-v2", "distilbert"), T5-like ("t5":
    "</s>" after the text), BART-like ("bart": "<s>" before it too; "[CLS]" plays "<s>"), or decoder-like (anything
    else: no special tokens, no pad token)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS + [":", ".", "##s"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if kind in ("t5", "bart"):
        single = "$A </s>" if kind == "t5" else "[CLS] $A </s>"
        tok.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[("</s>", vocab["</s>"]), ("[CLS]", vocab["[CLS]"])])
        kw = dict(eos_token="</s>", pad_token="[PAD]", model_input_names=["input_ids", "attention_mask"])
        if kind == "bart":
            kw["bos_token"] = "[CLS]"
    elif kind in ("bert", "roberta", "deberta-v2", "distilbert", "electra", "modernbert", "albert"):
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        kw = dict(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                  model_input_names=["input_ids", "token_type_ids", "attention_mask"]
                  if kind not in ("roberta", "distilbert", "modernbert")  # these take no token types
                  else ["input_ids", "attention_mask"])
    else:
        kw = dict(eos_token="</s>", model_input_names=["input_ids", "attention_mask"])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", **kw)


def model_dir(tiny_dir, kind: str, task: str, **overrides) -> Path:
    """tests/tiny.py's model with a matching tokenizer saved beside it."""
    path = Path(tiny_dir(kind, task, **overrides))
    if not (path / "tokenizer.json").exists():
        tokenizer(kind).save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sentiment(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(i % 2)
        words = list(rng.choice(FILLER, size=int(rng.integers(2, 9))))
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POSITIVE if label else NEGATIVE)))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def ner(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(int(rng.integers(3, 9))):
            r = rng.random()
            if r < 0.2:
                tokens += [str(rng.choice(NAMES)), "smith"]
                tags += ["B-PER", "I-PER"]
            elif r < 0.35:
                tokens.append(str(rng.choice(PLACES)))
                tags.append("B-LOC")
            else:
                tokens.append(str(rng.choice(FILLER)))
                tags.append("O")
        rows.append({"tokens": tokens, "ner_tags": [TAGS.index(t) for t in tags]})
    return rows


def config(model_path: Path, train_file: Path, eval_file: Path | None, task: str = "seq_cls", **sections):
    """A small run: P-Tuning v2 by default; `sections` update config sections, e.g. train=dict(...)."""
    c = build.default_config()
    c.model.name_or_path = str(model_path)
    c.model.task = task
    c.model.num_labels = 2 if task == "seq_cls" else None
    c.peft = dict(peft_type="PREFIX_TUNING", num_virtual_tokens=4)
    c.data.train = dict(path="json", data_files=str(train_file), split="train")
    if eval_file is not None:
        c.data.eval = dict(path="json", data_files=str(eval_file), split="train")
    c.data.max_length = 32
    c.train.batch_size = 8
    c.train.num_steps = 6
    c.train.learning_rate = 3e-2
    c.train.progress = False
    c.train.log_every = 1
    c.train.dropout = False  # dropout triples XLA's compile time; the resume and mesh tests turn it on
    for name, values in sections.items():
        section = c[name]
        if name == "peft":
            c.peft = values
            continue
        for k, v in values.items():
            section[k] = v
    return c


def summarize_config(tiny_dir, tmp_path: Path, kind: str = "t5", **sections):
    """A tiny seq2seq run (T5 or BART; text -> short target) with its tokenizer saved beside the model."""
    model = model_dir(tiny_dir, kind, "seq2seq_lm")
    rows = lambda n, seed: [{"text": r["text"], "target": ("great plot" if r["label"] else "bad")}
                            for r in sentiment(n, seed)]
    return model, config(model, write_jsonl(tmp_path / "t.jsonl", rows(16, 0)),
                         write_jsonl(tmp_path / "e.jsonl", rows(11, 1)), task="seq2seq_lm", **sections)


def gpt2_data_to_text_config(tiny_dir, tmp_path: Path, **sections):
    """A tiny GPT-2 causal run of prompt -> target text (the data-to-text setup of prefix tuning)."""
    model = model_dir(tiny_dir, "gpt2", "causal_lm")
    rows = lambda n, seed: [{"text": r["text"], "target": ("great plot" if r["label"] else "bad")}
                            for r in sentiment(n, seed)]
    c = config(model, write_jsonl(tmp_path / "t.jsonl", rows(16, 0)), write_jsonl(tmp_path / "e.jsonl", rows(11, 1)),
               task="causal_lm", **sections)
    c.data.template = "{text} :"
    c.data.label_column = "target"
    return model, c
