"""Configs and what they build: `default_config()` (every key, with its default and meaning),
`check_config(config)` (errors that name the key, before any work), and `build(config)` ->
`(peft_model, tokenizer, featurizer)`, shared by `jsoft.train` and `jsoft.export`.

Config files start from `default_config()`, so a misspelt key is an error in the file and on the command
line. Sections `peft` (PEFT's field names, checked by the method's config class) and `data.train` /
`data.eval` (keyword arguments of `datasets.load_dataset`) are free-form.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import zlib
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx
from ml_collections.config_dict import placeholder

import jsoft
from jsoft import data, optim, sharding
from jsoft.models import hub
from jsoft.models.layers import Precision, param_rngs
from jsoft.tuners.config import CONFIG_CLASSES, TASK_OF, PeftType, PromptTuningInit, _enum

PEFT_TASK_TYPES = {v: k.value for k, v in TASK_OF.items()}  # "seq_cls" -> "SEQ_CLS"
FREE_FORM = ("peft", "data.train", "data.eval",  # checked by the PEFT config class / datasets.load_dataset
             "train.eval_generate_options")  # checked by check_config against EVAL_GENERATE_OPTIONS
EVAL_GENERATE_OPTIONS = {  # generate's deterministic options -> (what is valid, a test of it)
    "num_beams": ("an integer >= 1", lambda v: isinstance(v, int) and v >= 1),
    "length_penalty": ("a number", lambda v: isinstance(v, int | float)),
    "repetition_penalty": ("a number > 0", lambda v: isinstance(v, int | float) and v > 0),
    "no_repeat_ngram_size": ("an integer >= 0", lambda v: isinstance(v, int) and v >= 0),
    "min_new_tokens": ("an integer >= 0", lambda v: isinstance(v, int) and v >= 0)}


# ============================================================================================ config


def default_config() -> ml_collections.ConfigDict:
    """Every config key with its default. Config files start from it (`config = default_config()`), so a
    misspelt key, in the file or on the command line, is an error that names it."""
    c = ml_collections.ConfigDict()
    c.model = dict(
        name_or_path="",  # Hub id or local directory of a Hugging Face checkpoint
        task="",  # seq_cls | token_cls | causal_lm | seq2seq_lm
        num_labels=placeholder(int),  # classes (seq_cls, token_cls); default: from the data's labels
        dtype="float32",  # compute dtype: float32 | bfloat16
        param_dtype=placeholder(str),  # storage dtype of the frozen weights (default: dtype)
        tokenizer=placeholder(str),  # default: name_or_path
        random_init=False,  # a randomly initialised backbone of the same architecture (a baseline)
        ignore_mismatched_sizes=False,  # initialise checkpoint weights of another shape (a head for other labels)
        # seq_cls: regression | single_label_classification | multi_label_classification; default: what the
        # labels make it (floats: regression; lists: multi-label); the run records it
        problem_type=placeholder(str),
    )
    c.peft = ml_collections.ConfigDict()  # PEFT's field names: peft_type, num_virtual_tokens, ...
    c.data = dict(
        train=ml_collections.ConfigDict(),  # keyword arguments of datasets.load_dataset (with a split)
        eval=None,  # same, or None for no evaluation
        text_columns=placeholder(object),  # default per task: ("text",) or ("tokens",) for token_cls
        # default per task: "label", "ner_tags" or "target"; causal_lm: the target text (optional)
        label_column=placeholder(str),
        label_names=placeholder(object),  # class names by id (token_cls needs tag names like "B-PER" for entity F1)
        max_length=128,
        target_max_length=placeholder(int),  # seq2seq_lm targets (default: max_length)
        template=placeholder(str),  # e.g. "Review: {text} Sentiment:" (causal_lm / seq2seq_lm / seq_cls)
        # one target word per class: classification with an LM (" negative", " positive")
        verbalizer=placeholder(object),
    )
    c.train = dict(
        batch_size=32,  # global
        eval_batch_size=placeholder(int),  # default: batch_size
        num_steps=placeholder(int),  # or num_epochs
        num_epochs=placeholder(int),
        learning_rate=1e-2,
        schedule="constant",  # after warmup: constant | linear | cosine
        warmup_steps=0,
        optimizer="adamw",  # adamw | adafactor (Lester et al.: lr 0.3) | sgd
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=placeholder(float),  # default: 0 for adamw and sgd, 1e-5 for adafactor
        max_grad_norm=1.0,  # global-norm clipping; 0 turns it off
        grad_accum_steps=1,  # microbatches per step (batch_size must divide)
        remat=False,  # recompute each layer's activations in the backward pass
        remat_policy="nothing_saveable",  # what remat keeps (REMAT_POLICIES): "dots_saveable", the matmul outputs
        dropout=True,  # the frozen model's dropout in training mode, as PEFT trains
        seed=0,
        eval_every=0,  # steps; 0: only at the end
        eval_generate_tokens=0,  # LMs: also generate up to N tokens per eval row (ROUGE-L, exact match, BLEU)
        eval_generate_options={},  # for that generation: num_beams, length_penalty, repetition_penalty,
        # no_repeat_ngram_size, min_new_tokens (default: greedy)
        checkpoint_every=500,  # steps; also at every eval and at the end
        keep_checkpoints=3,
        best_metric=placeholder(str),  # default: accuracy (classification), micro_f1 (multi-label), mse (regression),
        # f1 (token_cls), loss (LM)
        log_every=10,
        async_checkpoints=True,
        progress=True,  # tqdm progress bar (process 0)
    )
    c.mesh = dict(data=-1, fsdp=1, tensor=1)  # -1: all remaining devices
    c.lock()
    for key in FREE_FORM:
        if _get(c, key) is not None:
            _get(c, key).unlock()
    return c


def _get(c, dotted: str):
    for part in dotted.split("."):
        c = c[part]
    return c


REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")  # jax.checkpoint_policies


def check_config(config: ml_collections.ConfigDict) -> None:
    """Unknown keys (with a suggestion), missing required keys and invalid values, before any work."""
    ref = default_config()

    def walk(got, want, prefix):
        for key in got.keys():
            name = f"{prefix}{key}"
            if name in FREE_FORM:
                continue
            if key not in want:
                close = difflib.get_close_matches(key, list(want.keys()), n=1)
                hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {sorted(want.keys())}"
                raise ValueError(f"unknown config key {name}{hint}")
            if isinstance(want[key], ml_collections.ConfigDict):
                if not isinstance(got[key], ml_collections.ConfigDict):
                    raise ValueError(f"config key {name} must be a section with keys {sorted(want[key].keys())}")
                walk(got[key], want[key], name + ".")

    walk(config, ref, "")
    m, t = config.model, config.train
    if not m.name_or_path:
        raise ValueError("model.name_or_path is required (a Hub id or a local directory)")
    for key in ("name_or_path", "tokenizer"):
        path = m[key] and str(m[key])
        if path and path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():
            raise ValueError(f"model.{key}={path!r}: no such directory (a local model directory, or a Hub id)")
    if m.task not in data.TASKS:
        raise ValueError(f"model.task={m.task!r} is not valid; choose one of {list(data.TASKS)}")
    if not config.data.train or "path" not in config.data.train:
        raise ValueError("data.train is required: keyword arguments of datasets.load_dataset, "
                         "e.g. dict(path='glue', name='sst2', split='train')")
    if (t.num_steps is None) == (t.num_epochs is None):
        raise ValueError("set exactly one of train.num_steps and train.num_epochs")
    for key in ("num_steps", "num_epochs", "batch_size", "grad_accum_steps", "log_every"):
        v = t[key]
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"train.{key}={v!r} must be a positive integer")
    for key in ("eval_every", "checkpoint_every", "warmup_steps"):
        if not isinstance(t[key], int) or t[key] < 0:
            raise ValueError(f"train.{key}={t[key]!r} must be an integer >= 0")
    if t.batch_size % t.grad_accum_steps:
        raise ValueError(f"train.batch_size={t.batch_size} is not a multiple of "
                         f"train.grad_accum_steps={t.grad_accum_steps}")
    for key, value in t.eval_generate_options.items():
        if key not in EVAL_GENERATE_OPTIONS:
            raise ValueError(f"train.eval_generate_options.{key} is not an option; valid: "
                             f"{sorted(EVAL_GENERATE_OPTIONS)}")
        valid, test = EVAL_GENERATE_OPTIONS[key]
        if isinstance(value, bool) or not test(value):
            raise ValueError(f"train.eval_generate_options.{key}={value!r} must be {valid}")
    if t.remat_policy not in REMAT_POLICIES:
        raise ValueError(f"train.remat_policy={t.remat_policy!r} is not valid; choose one of {list(REMAT_POLICIES)}")
    if t.optimizer not in optim.OPTIMIZERS:
        raise ValueError(f"train.optimizer={t.optimizer!r} is not valid; choose one of {list(optim.OPTIMIZERS)}")
    if t.schedule not in optim.SCHEDULES:
        raise ValueError(f"train.schedule={t.schedule!r} is not valid; choose one of {list(optim.SCHEDULES)}")
    if m.problem_type is not None and (m.task != "seq_cls" or m.problem_type not in hub.PROBLEM_TYPES):
        raise ValueError(f"model.problem_type={m.problem_type!r} is not valid"
                         + (f" for model.task={m.task!r} (only seq_cls has one)" if m.task != "seq_cls" else
                            f"; choose one of {[p for p in hub.PROBLEM_TYPES if p]}"))
    hub.as_dtype(m.dtype, "model.dtype")
    hub.as_dtype(m.param_dtype, "model.param_dtype")
    sharding.mesh_shape(config.mesh, len(jax.devices()))
    peft_config(config)  # the PEFT config class names a bad field


def peft_config(config, tokenizer_path: str | None = None):
    """The jsoft (PEFT-named) method config from the `peft` section; task_type follows model.task."""
    fields = dict(config.peft.to_dict() if hasattr(config.peft, "to_dict") else config.peft)
    if "peft_type" not in fields:
        raise ValueError(f"peft.peft_type is required; choose one of {[p.value for p in PeftType]}")
    peft_type = _enum(PeftType, fields.pop("peft_type"), "peft.peft_type")
    cls = CONFIG_CLASSES[peft_type]
    task_type = PEFT_TASK_TYPES.get(config.model.task)
    given = fields.setdefault("task_type", task_type)
    if given is not None and str(given).upper() != task_type:
        raise ValueError(f"peft.task_type={given!r} does not match model.task={config.model.task!r} "
                         f"(which is {task_type!r}); drop peft.task_type")
    known = {f.name for f in dataclasses.fields(cls)}
    fields = {k: v for k, v in fields.items() if v is not None or k in known}  # peft.KEY=None: unset (CLI)
    for key in fields:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean peft.{close[0]}?" if close else f"valid: {sorted(known)}"
            if not close and any(key in {f.name for f in dataclasses.fields(c)} for c in CONFIG_CLASSES.values()):
                hint = f"unset it (--config.peft.{key}=None) or drop it; {hint}"
            raise ValueError(f"peft.{key} is not a field of {cls.__name__} (peft_type={peft_type.value}); {hint}")
    if peft_type == PeftType.PROMPT_TUNING:
        init = str(fields.get("prompt_tuning_init", "RANDOM")).upper()
        if init in (PromptTuningInit.TEXT, PromptTuningInit.CLASS_LABEL) and not fields.get("tokenizer_name_or_path"):
            fields["tokenizer_name_or_path"] = tokenizer_path or config.model.tokenizer or config.model.name_or_path
    for key, value in fields.items():  # ConfigDict sequences arrive as tuples
        if isinstance(value, tuple):
            fields[key] = list(value)
    try:
        return cls(**fields)
    except ValueError as e:
        raise ValueError(f"peft: {e}") from None


def named_seed(seed: int, name: str) -> int:
    """One seed, split by name (params, dropout, data): independent streams, stable across runs."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).generate_state(1)[0] >> 1)


# ============================================================================================ building


def load_tokenizer(config):
    """The run's tokenizer. For seq_cls on a decoder-only model it pads on the left, so the last position (what
    PEFT's prompt tuning and P-tuning classify from: it cannot see pads in embeddings) is each row's last real token.
    (token_cls words get their leading space from the featurizer: `data.words_need_a_space`.)"""
    from transformers import AutoTokenizer

    path = config.model.tokenizer or config.model.name_or_path
    model_type = hub.model_type(config.model.name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(str(hub.resolve(path)) if Path(str(path)).expanduser().is_dir()
                                            else path)
    except Exception as e:
        raise ValueError(f"model.tokenizer: no tokenizer could be loaded from {str(path)!r} "
                         f"({type(e).__name__}: {e})") from None
    if config.model.task == "seq_cls" and model_type in hub.DECODER_ONLY:
        tok.padding_side = "left"
    return tok


def featurizer(config, tokenizer) -> data.Featurizer:
    d = config.data
    tup = lambda v: None if v is None else (v if isinstance(v, str) else tuple(v))
    names = d.label_names
    return data.Featurizer(
        tokenizer, config.model.task, max_length=d.max_length, text_columns=tup(d.text_columns),
        label_column=d.label_column, num_labels=config.model.num_labels,
        label2id=None if names is None else {n: i for i, n in enumerate(names)},
        template=d.template, verbalizer=tup(d.verbalizer), target_max_length=d.target_max_length,
        prompt_template=config.peft.get("template"))


def num_labels_of(config, feat: data.Featurizer) -> int | None:
    if config.model.task not in ("seq_cls", "token_cls"):
        return None
    n = config.model.num_labels or feat.num_labels or (len(feat.label2id) if feat.label2id else None)
    return n


def random_backbone(name_or_path, task, num_labels, dtype, param_dtype, seed: int) -> nnx.Module:
    """The architecture of `name_or_path` with freshly initialised weights (no checkpoint read)."""
    hf = hub.read_config(hub.resolve(name_or_path))
    arch = hub.architecture(hf.get("model_type"))
    if task in ("seq_cls", "token_cls"):
        num_labels = num_labels or hf.get("num_labels") or len(hf.get("id2label") or {}) or 2
    c = arch.Config.from_hf(hf)
    c.name_or_path = str(name_or_path)
    dtype = hub.as_dtype(dtype)
    precision = Precision(dtype=dtype, param_dtype=hub.as_dtype(param_dtype) or dtype)
    return arch.build(c, task, num_labels, precision, param_rngs(seed))


def build_model(config, tokenizer, feat: data.Featurizer) -> jsoft.PeftModel:
    """The backbone (pretrained, or freshly initialised with model.random_init) with the `peft` adapter."""
    m, seed = config.model, config.train.seed
    n = num_labels_of(config, feat)
    if m.task in ("seq_cls", "token_cls") and n is None:
        raise ValueError("model.num_labels is not set and the training labels have no names to count; "
                         "set model.num_labels (or data.label_names)")
    if m.random_init:
        model = random_backbone(m.name_or_path, m.task, n, m.dtype, m.param_dtype, named_seed(seed, "params"))
    else:
        model = jsoft.from_pretrained(m.name_or_path, task=m.task, num_labels=n, dtype=m.dtype,
                                      param_dtype=m.param_dtype, seed=named_seed(seed, "head"),
                                      ignore_mismatched_sizes=m.ignore_mismatched_sizes,
                                      **({"problem_type": m.problem_type} if m.problem_type else {}))
    pm = jsoft.get_peft_model(model, peft_config(config, getattr(tokenizer, "name_or_path", None)),
                              seed=named_seed(seed, "params"), tokenizer=tokenizer)
    check_positions(config, pm)
    return pm


def check_token_ids(pm: jsoft.PeftModel, encoded: dict) -> None:
    """Every token id the data feeds the model (inputs, pads, target tokens) must be in its vocabulary: an
    embedding lookup past the table gives NaN, not an error. `encoded`: {config key: data.Encoded or None}."""
    V = pm.base_model.config.vocab_size
    for key, enc in encoded.items():
        if enc is None:
            continue
        if not 0 <= enc.pad_id < V:
            raise ValueError(f"{key}: the pad token id {enc.pad_id} is outside the model's vocabulary of {V}; "
                             "the tokenizer (model.tokenizer) does not match model.name_or_path")
        label_rows = enc.labels if pm.base_model.task in ("causal_lm", "seq2seq_lm") else []  # else class ids
        types = getattr(pm.base_model.config, "type_vocab_size", None)
        # a model without a token-type table (DeBERTa-v3: type_vocab_size 0) ignores them, as transformers does
        type_rows = enc.token_type_ids if types and enc.token_type_ids is not None else []
        bad = [i for i, r in enumerate(type_rows) if r.size and r.max() >= types]
        if bad:
            raise ValueError(f"{key} row {bad[0]}: token type id {int(type_rows[bad[0]].max())} is outside the model's "
                             f"{types} token types; the tokenizer (model.tokenizer) does not match model.name_or_path")
        for what, rows in (("token id", enc.input_ids), ("label token id", label_rows)):
            bad = [i for i, r in enumerate(rows) if r.size and r.max() >= V]
            if bad:
                raise ValueError(f"{key} row {bad[0]}: {what} {int(rows[bad[0]].max())} is outside the model's "
                                 f"vocabulary of {V} ({len(bad)} rows); the tokenizer (model.tokenizer) does not "
                                 "match model.name_or_path")


def check_positions(config, pm: jsoft.PeftModel) -> None:
    """data.max_length tokens plus the virtual tokens (prompt, P-tuning or prefix: each takes a position)
    must fit a learned position table."""
    limit = pm.base_model.config.position_table_size
    V = pm.active_peft_config.num_virtual_tokens
    if limit is not None and config.data.max_length + V > limit:
        raise ValueError(f"data.max_length={config.data.max_length} + peft.num_virtual_tokens={V} positions exceed "
                         f"the {limit} position embeddings of {config.model.name_or_path!r}; "
                         + (f"set data.max_length <= {limit - V}" if V < limit else
                            f"set peft.num_virtual_tokens <= {limit - config.data.max_length}"
                            if config.data.max_length < limit else "lower both"))


def build(config, train_ds=None):
    """`(peft_model, tokenizer, featurizer)`, as train builds them (export rebuilds a run with it). With
    `train_ds` the featurizer is fitted to it (label names; the class count when model.num_labels is unset)."""
    tok = load_tokenizer(config)
    feat = featurizer(config, tok)
    if train_ds is not None:
        feat = feat.fit(train_ds)
    return build_model(config, tok, feat), tok, feat


def load_config(workdir) -> ml_collections.ConfigDict:
    """The resolved config a run saved in its workdir, over today's defaults (a run saved before a key
    existed gets its default)."""
    f = Path(workdir) / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{workdir} has no config.json; is it the --workdir of a jsoft.train run?")
    config = default_config()
    with config.unlocked():
        _merge(config, json.loads(f.read_text()))
    return config


def _merge(config: ml_collections.ConfigDict, saved: dict, prefix: str = "") -> None:
    for key, value in saved.items():
        if (f"{prefix}{key}" not in FREE_FORM and key in config and isinstance(config[key], ml_collections.ConfigDict)
                and isinstance(value, dict)):
            _merge(config[key], value, f"{prefix}{key}.")
        else:
            config[key] = value
