"""Data sets -> tokenized, length-bucketed, static-shape numpy batches.

    ds = data.load(config.data.train, key="data.train")
    feat = data.Featurizer(tokenizer, "seq_cls", max_length=128, text_columns=("sentence",), num_labels=2)
    feat = feat.fit(ds)                         # fixes the label list when labels are strings
    train = feat(ds, key="data.train")          # data.Encoded: unpadded token ids
    for batch in data.Batches(train, batch_size=32, seed=0, process_index=jax.process_index(),
                              process_count=jax.process_count()):
        ...                                     # endless; batch["input_ids"]: int32 [32 // P, bucket]

A batch is a dict of numpy arrays: `input_ids`, `attention_mask`, `token_type_ids` (BERT-like
tokenizers), `labels` (int32; -100 where no loss is taken), `weights` (float32 [B]; 0 marks the dummy
rows that fill the last eval batch) and, for a causal LM trained on a target after a prompt, `label_positions`
(int32 [B, K], -1 padded: the labelled tokens, so the loss computes the LM head on K slots per row).
Every batch is padded to the smallest of `bucket_lengths(max_length)`
that fits its longest row, so a run compiles a handful of programs.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import string
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from jsoft.tuners.p_tuning import TemplateRows

TASKS = ("seq_cls", "token_cls", "causal_lm", "seq2seq_lm")
IGNORE_INDEX = -100  # labels that take no loss (PyTorch / transformers convention)
BUNDLED = {"jsoft:sentiment": ("train", "eval")}  # jsoft/assets/<name>/<split>.jsonl
_CHUNK = 1024  # rows per tokenizer call


# ----------------------------------------------------------------------------------------- loading


def load(spec: Mapping[str, Any], key: str = "data.train") -> datasets.Dataset:
    """`datasets.load_dataset(**spec)`, which must name a split. A directory that `Dataset.save_to_disk`
    wrote is read with `datasets.load_from_disk` (a `DatasetDict`'s directory goes to load_dataset).

    `{"path": "jsoft:sentiment", "split": "train" | "eval"}` loads the bundled sentiment set offline.
    `key` (e.g. `data.eval`) names the config entry in errors.
    """
    spec = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)  # also an ml_collections ConfigDict
    if "path" not in spec:
        raise ValueError(f"{key} needs a `path` (a Hub data set, 'json', 'csv', or one of {list(BUNDLED)}); "
                         f"got {spec}")
    if "split" not in spec:
        raise ValueError(f"{key} needs a `split` (e.g. 'train' or 'validation'); got {spec}")
    path = spec["path"]
    if isinstance(path, str) and path.startswith("jsoft:"):
        splits = BUNDLED.get(path)
        if splits is None:
            raise ValueError(f"{key}.path={path!r} is not a bundled data set; bundled: {list(BUNDLED)}")
        if spec["split"] not in splits:
            raise ValueError(f"{key}.split={spec['split']!r} is not a split of {path}; valid: {list(splits)}")
        folder = importlib.resources.files("jsoft") / "assets" / path.split(":", 1)[1]
        extra = {k: v for k, v in spec.items() if k not in ("path", "split")}
        spec = dict(path="json", data_files=str(folder / f"{spec['split']}.jsonl"), split="train", **extra)
    saved = Path(path) / "state.json" if isinstance(path, str) else None
    try:
        if saved is not None and saved.is_file():  # one split written by Dataset.save_to_disk
            if set(spec) != {"path", "split"}:
                raise ValueError(f"a data set saved with save_to_disk takes only path and split, not "
                                 f"{sorted(set(spec) - {'path', 'split'})}")
            ds = datasets.load_from_disk(path)
            if ds.split is not None and str(ds.split) != spec["split"]:
                raise ValueError(f"it was saved as split {str(ds.split)!r}")
        else:
            ds = datasets.load_dataset(**spec)
    except Exception as e:
        raise ValueError(f"{key}: datasets.load_dataset({spec}) failed: {e}") from e
    if not isinstance(ds, datasets.Dataset):
        raise ValueError(f"{key}: {spec} gave a {type(ds).__name__}, not one split; set {key}.split")
    return ds


# ------------------------------------------------------------------------------------ featurizing


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Tokenized rows before padding: one int32 array per row (class ids: one int per row)."""

    input_ids: list[np.ndarray]
    labels: np.ndarray | list[np.ndarray]  # seq_cls: int32 [N] (multi-label: float32 [N, C]; regression: float32
    # [N]); else one per row
    token_type_ids: list[np.ndarray] | None
    pad_id: int
    max_length: int
    padding_side: str = "right"
    target_max_length: int | None = None  # seq2seq_lm: labels have their own length and buckets
    label_slots: bool = False  # causal_lm with labels on a target only: batches carry `label_positions`
    prompt_positions: list[np.ndarray] | None = None  # a P-Tuning template's virtual-token indices per row

    def __len__(self) -> int:
        return len(self.input_ids)


def pad_token_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    # GPT-2-like tokenizers have no pad token. Padded positions are masked out (attention_mask 0, labels
    # -100), so any id works; eos is the usual stand-in.
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ValueError("the tokenizer has neither a pad token nor an eos token; set tokenizer.pad_token")


_DEFAULT_COLUMNS = {  # task -> (text_columns, label_column); causal_lm: "label" only with a verbalizer
    "seq_cls": (("text",), "label"),
    "token_cls": (("tokens",), "ner_tags"),
    "causal_lm": (("text",), None),
    "seq2seq_lm": (("text",), "target"),
}


def words_need_a_space(tokenizer) -> bool:
    """Whether each word of a token_cls row must be given its leading space: a byte-level BPE tokenizer (GPT-2,
    RoBERTa, DeBERTa v1, BLOOM, GPT-NeoX, Falcon, Llama 3, Qwen2, ...) tokenizes a word differently after a space, and
    `is_split_into_words` tokenizes each word as if it began the text, unless the pre-tokenizer adds that space itself.
    transformers' run_ner loads the byte-level tokenizers it knows with `add_prefix_space=True`; most others ignore
    that flag, so jsoft adds the space to the words, which gives the same tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None:
        return False
    spec = json.loads(backend.pre_tokenizer.__getstate__())
    byte_level = [p for p in spec.get("pretokenizers", [spec]) if p.get("type") == "ByteLevel"]
    return bool(byte_level) and not any(p.get("add_prefix_space") for p in byte_level)


@dataclasses.dataclass(frozen=True)
class Featurizer:
    """Turns a `datasets.Dataset` into `Encoded` rows for one task.

    seq_cls     text_columns (1, or 2 for a text pair) -> input_ids; label_column -> one class id, or for
                a column of lists (multi-label) a float multi-hot row [num_labels].
    token_cls   text_columns[0] holds words, label_column one tag per word; the first word piece of a
                word gets its tag, other pieces and special tokens -100 (transformers' run_ner).
    causal_lm   the text -> input_ids, labels = input_ids. With a `verbalizer` or a `label_column`:
                input = prompt + target, prompt = the text (or `template`), target = verbalizer[label],
                or the label_column's text followed by EOS (data-to-text, summaries); labels are -100
                on the prompt. Targets are tokenized on their own: put the separator in the template.
    seq2seq_lm  the text (or `template`) -> input_ids; label_column (a string), or verbalizer[label] when
                a verbalizer is given, -> labels.

    `template` (e.g. "Review: {sentence} Sentiment:") is filled with the text columns by name; it
    replaces the text for every task but token_cls. A filled template longer than its budget loses text, not
    the template's end after its last field (" Sentiment:", the cue the answer follows) nor the special
    tokens after it. Class labels: integers are used as they are (checked
    against `num_labels`), `ClassLabel` features are respected, strings are mapped with `label2id`, which
    `fit(train)` sets to the sorted label list when it is not given. Verbalizer words are used verbatim:
    give " positive" with its leading space where the tokenizer needs it (GPT-2).
    """

    tokenizer: Any  # a transformers PreTrainedTokenizerFast (word_ids() is needed for token_cls)
    task: str
    max_length: int
    text_columns: Sequence[str] | None = None
    label_column: str | None = None
    num_labels: int | None = None
    label2id: Mapping[str, int] | None = None
    template: str | None = None
    verbalizer: Sequence[str] | None = None
    target_max_length: int | None = None
    prompt_template: str | None = None  # P-Tuning's "[P][P] [X] It was [P]": virtual tokens inside the input

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}; valid: {TASKS}")
        texts, label = _DEFAULT_COLUMNS[self.task]
        texts = (self.text_columns,) if isinstance(self.text_columns, str) else self.text_columns or texts
        object.__setattr__(self, "text_columns", tuple(texts))
        if self.label_column is None:
            label = "label" if self.verbalizer is not None else label
            object.__setattr__(self, "label_column", label)
        n_text = len(self.text_columns)
        if n_text == 0 or (self.template is None and n_text > (2 if self.task == "seq_cls" else 1)):
            raise ValueError(f"data.text_columns={list(self.text_columns)}: {self.task} takes "
                             f"{'one or two columns' if self.task == 'seq_cls' else 'one column'}"
                             " (or several with data.template)")
        if self.task == "token_cls" and self.template is not None:
            raise ValueError("data.template does not apply to token_cls (its input is a list of words)")
        if self.verbalizer is not None and self.task not in ("causal_lm", "seq2seq_lm"):
            raise ValueError(f"data.verbalizer applies to causal_lm and seq2seq_lm, not {self.task}")
        if self.verbalizer is not None and self.num_labels not in (None, len(self.verbalizer)):
            raise ValueError(f"data.verbalizer has {len(self.verbalizer)} entries but num_labels="
                             f"{self.num_labels}; give one word per class")
        if self.max_length < 2:
            raise ValueError(f"data.max_length={self.max_length} is too small; it must be an integer >= 2")
        if self.prompt_template is not None:
            if self.task not in ("causal_lm", "seq_cls"):
                raise ValueError(f"peft.template applies to causal_lm and seq_cls, not {self.task}")
            if len(self.text_columns) > 1 and self.template is None:
                raise ValueError(f"peft.template has one [X] but data.text_columns={list(self.text_columns)}; "
                                 "join them with data.template")
            TemplateRows(self.prompt_template, self.tokenizer)  # a bad template is named here

    # -- labels

    @property
    def id2label(self) -> dict[int, str] | None:
        return None if self.label2id is None else {i: name for name, i in self.label2id.items()}

    def fit(self, ds: datasets.Dataset) -> Featurizer:
        """A copy whose `label2id` / `num_labels` come from the training split's label feature (a float
        column: regression, one label); integer class ids without a class count give one class per id up to the
        largest (ids 0..K-1: K classes)."""
        if not self._has_class_labels():
            return self
        if self._regression(ds, "data.train"):
            return dataclasses.replace(self, num_labels=1)
        feature = self._label_feature(ds, "data.train")
        if isinstance(feature, datasets.ClassLabel):
            label2id = self.label2id or {name: i for i, name in enumerate(feature.names)}
            num_labels = self.num_labels or feature.num_classes
            if num_labels != feature.num_classes:
                raise ValueError(f"num_labels={num_labels}, but data.label_column={self.label_column!r} "
                                 f"has {feature.num_classes} classes: {feature.names}")
            return dataclasses.replace(self, label2id=label2id, num_labels=num_labels)
        values = _flat(ds[self.label_column]) if self._label_lists(ds) else list(ds[self.label_column])
        if self.label2id is not None:
            return self
        if not any(isinstance(v, str) for v in values):
            if self.num_labels is not None or self.verbalizer is not None:
                return self
            return dataclasses.replace(self, num_labels=_count_class_ids(values))
        names = sorted({v for v in values if isinstance(v, str)})
        if self.num_labels not in (None, len(names)):
            raise ValueError(f"num_labels={self.num_labels}, but data.label_column={self.label_column!r} "
                             f"of data.train has {len(names)} labels: {names}")
        return dataclasses.replace(self, label2id={name: i for i, name in enumerate(names)})

    def _has_class_labels(self) -> bool:
        return self.task in ("seq_cls", "token_cls") or self.verbalizer is not None

    def _label_feature(self, ds: datasets.Dataset, key: str):
        if self.label_column not in ds.column_names:
            raise ValueError(f"data.label_column={self.label_column!r} is not a column of {key}; "
                             f"columns: {ds.column_names}")
        feature = ds.features[self.label_column]
        return getattr(feature, "feature", feature) if self._label_lists(ds) else feature

    def _regression(self, ds: datasets.Dataset, key: str) -> bool:
        """seq_cls with one label (num_labels=1), or with a float label column and num_labels unset (run_glue's
        rule, STS-B): each row's label is a number."""
        if self.task != "seq_cls" or self.num_labels not in (None, 1) or self.label2id is not None:
            return False
        feature = self._label_feature(ds, key)
        return self.num_labels == 1 or (isinstance(feature, datasets.Value) and feature.dtype.startswith("float"))

    def _label_lists(self, ds: datasets.Dataset) -> bool:
        """Whether each row's label is a list: token_cls tags, or multi-label seq_cls classes."""
        if self.task == "token_cls":
            return True
        return self.task == "seq_cls" and len(ds) > 0 and isinstance(ds[0][self.label_column], list | tuple)

    def _class_id(self, value, row: int, key: str, n: int | None) -> int:
        if isinstance(value, str):
            if self.label2id is None:
                raise ValueError(f"{key} has string labels ({value!r}); call Featurizer.fit(train) first "
                                 "or set data.label2id")
            if value not in self.label2id:
                raise ValueError(f"{key} row {row}: label {value!r} is not one of {sorted(self.label2id)}")
            value = self.label2id[value]
        if isinstance(value, float | np.floating) and float(value).is_integer():
            value = int(value)  # 1.0: a class id stored as a float (a CSV column with gaps)
        if not isinstance(value, int | np.integer):  # bools are ints: False / True are classes 0 / 1 (BoolQ)
            raise ValueError(f"{key} row {row}: label {value!r} is neither an integer nor a string"
                             + (" (a float label trains regression with num_labels=1)" if isinstance(value, float)
                                else ""))
        if n is None:
            raise ValueError(f"{key} has integer labels but no class count; call Featurizer.fit(train) first or "
                             "set num_labels (model.num_labels in a config)")
        if not 0 <= value < n:
            raise ValueError(f"{key} row {row}: label {value} is outside the valid range [0, {n}) "
                             f"(num_labels={n})")
        return int(value)

    def _num_classes(self, ds: datasets.Dataset, key: str) -> int | None:
        feature = self._label_feature(ds, key)
        for n in (self.num_labels,
                  None if self.verbalizer is None else len(self.verbalizer),
                  feature.num_classes if isinstance(feature, datasets.ClassLabel) else None,
                  None if self.label2id is None else len(self.label2id)):
            if n is not None:
                return n
        return None

    def _class_ids(self, ds: datasets.Dataset, key: str) -> np.ndarray:
        """int32 [N] class ids; for multi-label seq_cls, float32 [N, num_labels] multi-hot rows; for regression,
        float32 [N] targets."""
        n = self._num_classes(ds, key)
        values = list(ds[self.label_column])
        if self._regression(ds, key):
            for i, v in enumerate(values):
                if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not np.isfinite(v):
                    raise ValueError(f"{key} row {i}: label {v!r} is not a finite number, which regression "
                                     "(model.num_labels=1) needs")
            return np.asarray(values, np.float32)
        if self.task != "seq_cls" or not self._label_lists(ds):
            return np.asarray([self._class_id(v, i, key, n) for i, v in enumerate(values)], np.int32)
        hot = np.zeros((len(values), n or 0), np.float32)
        for i, row in enumerate(values):
            if not isinstance(row, list | tuple):
                raise ValueError(f"{key} row {i}: label {row!r} is not a list, but row 0's is (multi-label)")
            for v in row:
                hot[i, self._class_id(v, i, key, n)] = 1.0
        return hot

    # -- text

    def _texts(self, ds: datasets.Dataset, key: str) -> list[list[str]]:
        """One list per text column, or a single list of filled templates."""
        missing = [c for c in self.text_columns if c not in ds.column_names]
        if missing:
            raise ValueError(f"data.text_columns: {missing} not in {key}; columns: {ds.column_names}")
        columns = [list(ds[c]) for c in self.text_columns]
        for column, values in zip(self.text_columns, columns):
            for i, v in enumerate(values):
                if v is None or (v.strip() == "" if isinstance(v, str) else len(v) == 0):
                    raise ValueError(f"{key} row {i}: column {column!r} is empty")
        if self.template is None:
            return columns
        try:
            return [[self.template.format(**dict(zip(self.text_columns, row))) for row in zip(*columns)]]
        except (KeyError, IndexError) as e:
            raise ValueError(f"data.template={self.template!r} names {e}, but only data.text_columns "
                             f"{list(self.text_columns)} are filled in") from e

    def _template_tail(self) -> int:
        """Tokens of the template after its last field (0 without a template)."""
        if self.template is None:
            return 0
        tail = ""
        for literal, field, _, _ in string.Formatter().parse(self.template):
            tail = tail + literal if field is None else ""
        return len(self.tokenizer(tail, add_special_tokens=False)["input_ids"]) if tail else 0

    def _cut(self, ids: list[int], limit: int, tail: int) -> list[int]:
        """`ids` in `limit` tokens, cut before their last `tail` tokens and the special tokens after those."""
        head, end = self._kept(ids, limit, tail)
        return ids[:head] + ids[len(ids) - end:]

    @functools.cached_property
    def _special_ids(self) -> frozenset[int]:  # read once, not for every row cut
        return frozenset(self.tokenizer.all_special_ids)

    def _kept(self, ids: list[int], limit: int, tail: int) -> tuple[int, int]:
        """`(head, end)`: `ids` in `limit` tokens are its first `head` and last `end` tokens."""
        if len(ids) <= limit:
            return len(ids), 0
        special, end = self._special_ids, 0
        while end < len(ids) and ids[len(ids) - 1 - end] in special:
            end += 1
        end = min(tail + end, limit)
        return limit - end, end

    def _tokenize_within(self, texts: list[list[str]], limit: int) -> dict[str, list[list[int]]]:
        """The tokenizer's truncation (the longer of a text pair first); a filled template is cut in its text."""
        tail = self._template_tail()
        if not tail:
            return self._tokenize(*texts, truncation=True, max_length=limit)
        enc = self._tokenize(*texts)
        for i, ids in enumerate(enc["input_ids"]):
            head, end = self._kept(ids, limit, tail)
            for rows in enc.values():
                rows[i] = rows[i][:head] + rows[i][len(rows[i]) - end:]
        return enc

    def _tokenize(self, *texts: list, **kwargs) -> dict[str, list[list[int]]]:
        out: dict[str, list] = {}
        for start in range(0, len(texts[0]), _CHUNK):
            enc = self.tokenizer(*[t[start:start + _CHUNK] for t in texts], return_attention_mask=False,
                                 **kwargs)
            for name in ("input_ids", "token_type_ids"):
                if name in enc:
                    out.setdefault(name, []).extend(enc[name])
            if kwargs.get("is_split_into_words"):
                out.setdefault("word_ids", []).extend(enc.word_ids(i) for i in range(len(enc["input_ids"])))
        return out

    def verbalizer_token_ids(self) -> list[list[int]]:
        """The target token ids of each class (causal_lm / seq2seq_lm with a verbalizer)."""
        if self.verbalizer is None:
            raise ValueError("no data.verbalizer is set")
        special = self.task == "seq2seq_lm"  # T5 ends a target with </s>
        return [self.tokenizer(w, add_special_tokens=special)["input_ids"] for w in self.verbalizer]

    def verbalizer_choice(self) -> tuple[int, list[int]]:
        """How a verbalizer's classes are scored: the target position `k` after the tokens every class's target
        starts with (BART's `<s>`: k = 1; else 0) and the token each class has there, which must differ."""
        words = self.verbalizer_token_ids()
        k = 0
        while all(len(w) > k + 1 for w in words) and len({w[k] for w in words}) == 1:
            k += 1
        tokens = [w[k] if len(w) > k else None for w in words]
        if None in tokens or len(set(tokens)) != len(tokens):
            raise ValueError(f"data.verbalizer={list(self.verbalizer)}: the words must start with different tokens "
                             f"(classes are scored by their first token; tokenized: {words})")
        return k, tokens

    # -- the tasks

    def __call__(self, ds: datasets.Dataset, key: str = "data.train") -> Encoded:
        if len(ds) == 0:
            raise ValueError(f"{key} has no rows")
        trunc = dict(truncation=True, max_length=self.max_length)
        keep_types = self.task in ("seq_cls", "token_cls") and "token_type_ids" in getattr(
            self.tokenizer, "model_input_names", ())
        target_max_length = None
        if self.task == "seq_cls" and self.prompt_template is not None:
            labels = self._class_ids(ds, key)
            enc = self._texts_in_prompt_template(ds, key)
        elif self.task == "seq_cls":
            labels = self._class_ids(ds, key)  # first: label errors before tokenizing
            enc = self._tokenize_within(self._texts(ds, key), self.max_length)
        elif self.task == "token_cls":
            n = self._num_classes(ds, key)  # first: a missing label column is named before tokenizing
            tags = [[self._class_id(t, i, key, n) for t in row]
                    for i, row in enumerate(ds[self.label_column])]
            (words,) = self._texts(ds, key)
            for i, (w, t) in enumerate(zip(words, tags)):
                if len(w) != len(t):
                    raise ValueError(f"{key} row {i}: {len(w)} words in {self.text_columns[0]!r} but "
                                     f"{len(t)} tags in {self.label_column!r}")
            if words_need_a_space(self.tokenizer):
                words = [[" " + w for w in row] for row in words]
            enc = self._tokenize(words, is_split_into_words=True, **trunc)
            labels = [_align(word_ids, row_tags) for word_ids, row_tags in zip(enc["word_ids"], tags)]
        elif self.task == "causal_lm" and self.verbalizer is None and self.label_column is None:
            if self.prompt_template is not None:
                enc = self._texts_in_prompt_template(ds, key)
                labels = [np.where(np.isin(np.arange(len(ids)), pos), IGNORE_INDEX, ids)
                          for ids, pos in zip(enc["input_ids"], enc["prompt_positions"])]
            else:
                enc = self._tokenize(*self._texts(ds, key), **trunc)
                labels = enc["input_ids"]
        elif self.task == "causal_lm":
            (prompts,) = self._prompts(ds, key)
            if self.verbalizer is not None:
                words = self.verbalizer_token_ids()
                targets = [words[c] for c in self._class_ids(ds, key)]
            else:
                eos = [] if self.tokenizer.eos_token_id is None else [self.tokenizer.eos_token_id]
                texts = self._tokenize(self._target_texts(ds, key), add_special_tokens=False)["input_ids"]
                targets = [t[:self.max_length - 1 - len(eos)] + eos for t in texts]
            templated = self.prompt_template is not None
            prompt_ids = self._tokenize(prompts, add_special_tokens=not templated)["input_ids"]
            keeps = [self.max_length - len(target) for target in targets]  # the prompt is cut, never a target
            for i, (keep, target) in enumerate(zip(keeps, targets)):
                if keep < 1:
                    raise ValueError(f"{key} row {i}: the target {self.tokenizer.decode(target)!r} needs "
                                     f"{len(target)} tokens; data.max_length={self.max_length} is too small")
            if templated:
                enc = self._in_prompt_template(prompt_ids, keeps, key)
                prompt_ids = enc["input_ids"]
            else:
                tail = self._template_tail()
                prompt_ids = [self._cut(p, keep, tail) for p, keep in zip(prompt_ids, keeps)]
                enc = {}
            enc["input_ids"] = [prompt + target for prompt, target in zip(prompt_ids, targets)]
            labels = [[IGNORE_INDEX] * len(prompt) + target for prompt, target in zip(prompt_ids, targets)]
        else:  # seq2seq_lm
            target_max_length = self.target_max_length or self.max_length
            (sources,) = self._prompts(ds, key)
            if self.verbalizer is not None:
                targets = [self.verbalizer[c] for c in self._class_ids(ds, key)]
            else:
                targets = self._target_texts(ds, key)
            enc = self._tokenize_within([sources], self.max_length)
            labels = self._tokenize(targets, truncation=True, max_length=target_max_length)["input_ids"]
        as_arrays = lambda rows: [np.asarray(r, np.int32) for r in rows]
        virtual = 0 if self.prompt_template is None else len(enc["prompt_positions"][0])
        return Encoded(
            input_ids=as_arrays(enc["input_ids"]),
            labels=labels if isinstance(labels, np.ndarray) else as_arrays(labels),
            token_type_ids=as_arrays(enc["token_type_ids"]) if keep_types and "token_type_ids" in enc
            else None,
            pad_id=pad_token_id(self.tokenizer),
            max_length=self.max_length + virtual,  # a template's virtual tokens come on top of the text's
            padding_side=getattr(self.tokenizer, "padding_side", "right"),
            target_max_length=target_max_length,
            label_slots=self.task == "causal_lm" and (self.verbalizer is not None or self.label_column is not None),
            prompt_positions=as_arrays(enc["prompt_positions"]) if virtual else None,
        )

    def _texts_in_prompt_template(self, ds: datasets.Dataset, key: str) -> dict[str, list]:
        """Each row's text (or filled data.template) in the P-Tuning template, within data.max_length."""
        (texts,) = self._texts(ds, key)
        ids = self._tokenize(texts, add_special_tokens=False)["input_ids"]
        return self._in_prompt_template(ids, [self.max_length] * len(ids), key)

    def _in_prompt_template(self, texts: list[list[int]], budgets: list[int], key: str) -> dict[str, list]:
        """Each text's tokens (no special tokens) at the P-Tuning template's [X], cut so that the row holds at
        most `budgets[i]` real tokens (not counting the virtual ones): `input_ids` and `prompt_positions`."""
        make = TemplateRows(self.prompt_template, self.tokenizer)
        ids, positions, tail = [], [], self._template_tail()
        for i, (text, budget) in enumerate(zip(texts, budgets)):
            room = budget - make.fixed
            if room < 1:
                raise ValueError(f"{key} row {i}: data.max_length={self.max_length} leaves no room for the text in "
                                 f"peft.template={self.prompt_template!r} ({make.fixed} tokens of its own and the "
                                 "special tokens)")
            row, slots = make(self._cut(text, room, tail))
            ids.append(row)
            positions.append(slots)
        return {"input_ids": ids, "prompt_positions": positions}

    def _target_texts(self, ds: datasets.Dataset, key: str) -> list[str]:
        if self.label_column not in ds.column_names:
            raise ValueError(f"data.label_column={self.label_column!r} is not a column of {key}; "
                             f"columns: {ds.column_names}")
        targets = list(ds[self.label_column])
        for i, t in enumerate(targets):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"{key} row {i}: column {self.label_column!r} is empty")
        return targets

    def _prompts(self, ds: datasets.Dataset, key: str) -> list[list[str]]:
        texts = self._texts(ds, key)
        if len(texts) != 1:
            raise ValueError(f"data.text_columns={list(self.text_columns)}: {self.task} takes one text "
                             "(use data.template to join several columns)")
        return texts


def generation_rows(data: Encoded) -> Encoded:
    """Eval rows as generation inputs, the labels holding the reference: seq2seq rows as they are;
    causal rows cut where their target starts (the first label that takes loss), left-padded for
    decoding, the target becoming the label."""
    if data.target_max_length is not None:
        return data
    if data.prompt_positions is not None:
        raise ValueError("generation-based eval (train.eval_generate_tokens) does not take peft.template: "
                         "generation puts the prompt in front")
    prompts, targets = [], []
    for i, (ids, labels) in enumerate(zip(data.input_ids, data.labels)):
        start = int(np.argmax(labels != IGNORE_INDEX))
        if start == 0:
            raise ValueError(f"data.eval row {i} has no prompt before its target: generation-based eval "
                             "(train.eval_generate_tokens) needs causal_lm rows of prompt + target "
                             "(data.label_column or data.verbalizer)")
        prompts.append(ids[:start])
        targets.append(labels[start:])
    return dataclasses.replace(data, input_ids=prompts, labels=targets, token_type_ids=None, padding_side="left",
                               target_max_length=max(len(t) for t in targets), label_slots=False)


def _flat(rows) -> list:
    return [v for row in rows for v in row]


def _count_class_ids(values) -> int | None:
    """Classes for the training split's integer ids (bools are 0 / 1; -100 marks an ignored token): the largest
    id + 1. None where there is no id (or a value that is none: encoding names its row)."""
    ids = [v for v in values if not (isinstance(v, int | np.integer) and v == IGNORE_INDEX)]
    if not ids or not all(isinstance(v, int | np.integer) for v in ids):
        return None
    if min(ids) < 0:
        raise ValueError(f"data.train has a negative label ({min(ids)}), which is no class id: ids count from 0 "
                         "(-100 ignores a token)")
    return int(max(ids)) + 1


def _align(word_ids: Sequence[int | None], tags: Sequence[int]) -> list[int]:
    """run_ner: a word's first piece gets its tag; later pieces and special tokens get -100."""
    out, previous = [], None
    for w in word_ids:
        out.append(IGNORE_INDEX if w is None or w == previous else tags[w])
        previous = w
    return out


# ----------------------------------------------------------------------------------------- batching


def bucket_lengths(max_length: int, min_length: int = 16) -> tuple[int, ...]:
    """Powers of two from `min_length` below `max_length`, then `max_length`: (16, 32, 64, 100) for 100."""
    lengths, n = [], min_length
    while n < max_length:
        lengths.append(n)
        n *= 2
    return (*lengths, max_length)


def _bucket(length: int, max_length: int) -> int:
    return next(b for b in bucket_lengths(max_length) if b >= length)


def _pad(rows: Sequence[np.ndarray], length: int, value: int, side: str) -> np.ndarray:
    out = np.full((len(rows), length), value, np.int32)
    for i, row in enumerate(rows):
        if side == "left":
            out[i, length - len(row):] = row
        else:
            out[i, :len(row)] = row
    return out


def label_slot_count(data: Encoded, rows: Sequence[int], length: int) -> int | None:
    """K for `label_positions [B, K]`: the most labelled tokens of a row, rounded up to a power of two;
    None (no label_positions: the loss reads every position) unless that is under half of `length`."""
    if not data.label_slots:
        return None
    k = 1 << (max(int((data.labels[i] != IGNORE_INDEX).sum()) for i in rows) - 1).bit_length()
    return k if 2 * k <= length else None


def collate(data: Encoded, rows: Sequence[int], length: int | None = None,
            target_length: int | None = None, label_slots: int | None = None) -> dict[str, np.ndarray]:
    """Pads `rows` to `length` (default: the bucket of the longest) into a batch without `weights`.
    `label_slots` K adds `label_positions [B, K]`: each row's labelled token indices, -1 padded."""
    ids = [data.input_ids[i] for i in rows]
    length = length or _bucket(max(len(r) for r in ids), data.max_length)
    side = data.padding_side
    batch = {"input_ids": _pad(ids, length, data.pad_id, side),
             "attention_mask": _pad([np.ones(len(r), np.int32) for r in ids], length, 0, side)}
    if data.token_type_ids is not None:
        batch["token_type_ids"] = _pad([data.token_type_ids[i] for i in rows], length, 0, side)
    if isinstance(data.labels, np.ndarray):
        batch["labels"] = data.labels[np.asarray(rows, np.int64)]
    elif data.target_max_length is not None:
        labels = [data.labels[i] for i in rows]
        target_length = target_length or _bucket(max(len(r) for r in labels), data.target_max_length)
        # Decoder inputs are the labels shifted right after a start token, so they pad on the right.
        batch["labels"] = _pad(labels, target_length, IGNORE_INDEX, "right")
    else:
        batch["labels"] = _pad([data.labels[i] for i in rows], length, IGNORE_INDEX, side)
    if data.prompt_positions is not None:  # indices into each row, moved by its left padding
        shift = [length - len(r) if side == "left" else 0 for r in ids]
        batch["prompt_positions"] = np.stack([data.prompt_positions[i] + s for i, s in zip(rows, shift)])
    if label_slots is not None:
        batch["label_positions"] = _pad([np.flatnonzero(r != IGNORE_INDEX) for r in batch["labels"]],
                                        label_slots, -1, "right")
    return batch


class Batches:
    """Static-shape batches of `Encoded` rows, resumable, one slice per process.

    train=True: endless; epoch e visits the rows in `np.random.default_rng(seed + e).permutation`, and
    drops the last partial batch. train=False: one pass in order; the last batch is filled with dummy
    rows (copies of a real row, `weights` 0, token labels -100) so every batch has the same batch size.

    `batch_size` is global. Process p of P gets rows [p*B/P, (p+1)*B/P) of every global batch, padded to
    the global batch's bucket, so all processes agree on the order and on the shapes. `state()` is the
    position ({"epoch", "index"}: batches already taken in that epoch); `Batches(..., state=s)` or
    `restore(s)` continues from it exactly.
    """

    def __init__(self, data: Encoded, batch_size: int, *, train: bool = True, seed: int = 0,
                 process_index: int = 0, process_count: int = 1, state: Mapping[str, int] | None = None):
        key = "train.batch_size" if train else "eval.batch_size"
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(f"{key}={batch_size} must be a positive multiple of the process count "
                             f"({process_count})")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} is outside [0, {process_count})")
        if len(data) == 0:
            raise ValueError("the data set has no rows")
        if train and len(data) < batch_size:
            raise ValueError(f"{key}={batch_size} is larger than the training set ({len(data)} rows), "
                             "so not one full batch fits; lower it or use more data")
        self.data, self.batch_size, self.train, self.seed = data, batch_size, train, seed
        self.process_index, self.process_count = process_index, process_count
        n, b = len(data), batch_size
        self.steps_per_epoch = n // b if train else -(-n // b)
        self._epoch, self._index, self._order = 0, 0, None
        if state is not None:
            self.restore(state)

    def state(self) -> dict[str, int]:
        return {"epoch": self._epoch, "index": self._index}

    def restore(self, state: Mapping[str, int]) -> None:
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index <= self.steps_per_epoch:
            raise ValueError(f"data state {dict(state)} is outside this data set "
                             f"({self.steps_per_epoch} batches per epoch)")
        self._epoch, self._index = epoch, index

    def _rows(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            n = len(self.data)
            order = np.random.default_rng(self.seed + epoch).permutation(n) if self.train else np.arange(n)
            self._order = (epoch, order)
        return self._order[1]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._index >= self.steps_per_epoch:
            if not self.train:
                raise StopIteration
            self._epoch, self._index = self._epoch + 1, 0
        b = self.batch_size
        rows = self._rows(self._epoch)[self._index * b:(self._index + 1) * b]
        self._index += 1
        valid = len(rows)
        weights = np.zeros(b, np.float32)
        weights[:valid] = 1.0
        rows = np.concatenate([rows, np.full(b - valid, rows[-1])])
        # The bucket comes from the whole global batch, so every process pads to the same length.
        data = self.data
        length = _bucket(max(len(data.input_ids[i]) for i in rows), data.max_length)
        target_length = None
        if data.target_max_length is not None:
            target_length = _bucket(max(len(data.labels[i]) for i in rows), data.target_max_length)
        local = slice(self.process_index * b // self.process_count,
                      (self.process_index + 1) * b // self.process_count)
        batch = collate(data, rows[local], length, target_length, label_slot_count(data, rows, length))
        batch["weights"] = weights[local]
        if valid < b and batch["labels"].ndim == 2 and batch["labels"].dtype.kind == "i":  # token labels
            batch["labels"][batch["weights"] == 0] = IGNORE_INDEX
        return batch
