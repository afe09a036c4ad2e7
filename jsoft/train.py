"""Train a soft prompt: `python -m jsoft.train --config configs/X.py [--config.train.learning_rate=3e-2] --workdir DIR`.

One linear loop in commented sections (big_vision style): config -> data -> model -> mesh -> optimizer ->
restore -> steps -> evaluation -> summary. Only the trainable state (`jsoft.Trainable` leaves: prompts,
encoders, heads) has gradients and optimizer state; the frozen backbone is an input of the step, sharded by
logical-axis rules, never donated. Re-running the same command resumes from the workdir bit for bit.

Workdir: `config.json` (the resolved config), `checkpoints/` (Orbax), `metrics.jsonl`, `tb/` (TensorBoard),
`summary.json` (written at the end).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import math
import os
import resource
import signal
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import jsoft
from jsoft import data, metrics, optim, sharding
from jsoft.models import hub
from jsoft.models.layers import Precision
from jsoft.tuners.config import CONFIG_CLASSES, TASK_OF, PeftType, PromptTuningInit, _enum

log = logging.getLogger("jsoft.train")

PEFT_TASK_TYPES = {v: k.value for k, v in TASK_OF.items()}  # "seq_cls" -> "SEQ_CLS"
FREE_FORM = ("peft", "data.train", "data.eval")  # checked by the PEFT config class / datasets.load_dataset
IGNORE = data.IGNORE_INDEX


# ============================================================================================ config


def default_config() -> ml_collections.ConfigDict:
    """Every config key with its default. Config files start from it (`config = default_config()`), so a
    misspelt key, in the file or on the command line, is an error that names it."""
    c = ml_collections.ConfigDict()
    c.model = dict(
        name_or_path="",  # Hub id or local directory of a Hugging Face checkpoint
        task="",  # seq_cls | token_cls | causal_lm | seq2seq_lm
        num_labels=None,  # classes (seq_cls, token_cls); default: from the data's labels
        dtype="float32",  # compute dtype: float32 | bfloat16
        param_dtype=None,  # storage dtype of the frozen weights (default: dtype)
        tokenizer=None,  # default: name_or_path
        random_init=False,  # a randomly initialised backbone of the same architecture (a baseline)
    )
    c.peft = ml_collections.ConfigDict()  # PEFT's field names: peft_type, num_virtual_tokens, ...
    c.data = dict(
        train=ml_collections.ConfigDict(),  # keyword arguments of datasets.load_dataset (with a split)
        eval=None,  # same, or None for no evaluation
        text_columns=None,  # default per task: ("text",) or ("tokens",) for token_cls
        label_column=None,  # default per task: "label", "ner_tags" or "target"
        label_names=None,  # class names by id (token_cls needs tag names like "B-PER" for entity F1)
        max_length=128,
        target_max_length=None,  # seq2seq_lm targets (default: max_length)
        template=None,  # e.g. "Review: {text} Sentiment:" (causal_lm / seq2seq_lm / seq_cls)
        verbalizer=None,  # one target word per class: classification with an LM (" negative", " positive")
    )
    c.train = dict(
        batch_size=32,  # global
        eval_batch_size=None,  # default: batch_size
        num_steps=None,  # or num_epochs
        num_epochs=None,
        learning_rate=1e-2,
        schedule="constant",  # after warmup: constant | linear | cosine
        warmup_steps=0,
        optimizer="adamw",  # adamw | adafactor (Lester et al.: lr 0.3) | sgd
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=None,  # default: 0 for adamw and sgd, 1e-5 for adafactor
        max_grad_norm=1.0,  # global-norm clipping; 0 turns it off
        grad_accum_steps=1,  # microbatches per step (batch_size must divide)
        remat=False,  # recompute each layer's activations in the backward pass
        dropout=True,  # the frozen model's dropout in training mode, as PEFT trains
        seed=0,
        eval_every=0,  # steps; 0: only at the end
        checkpoint_every=500,  # steps; also at every eval and at the end
        keep_checkpoints=3,
        best_metric=None,  # default: accuracy (classification), f1 (token_cls), loss (LM)
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
    if t.optimizer not in optim.OPTIMIZERS:
        raise ValueError(f"train.optimizer={t.optimizer!r} is not valid; choose one of {list(optim.OPTIMIZERS)}")
    if t.schedule not in optim.SCHEDULES:
        raise ValueError(f"train.schedule={t.schedule!r} is not valid; choose one of {list(optim.SCHEDULES)}")
    hub.as_dtype(m.dtype, "model.dtype")
    hub.as_dtype(m.param_dtype, "model.param_dtype")
    sharding.mesh_shape(config.mesh, len(jax.devices()))
    peft_config(config)  # the PEFT config class names a bad field


def peft_config(config, tokenizer_path: str | None = None):
    """The jsoft (PEFT-named) method config from the `peft` section; task_type follows model.task."""
    fields = dict(config.peft.to_dict() if hasattr(config.peft, "to_dict") else config.peft)
    if "peft_type" not in fields:
        raise ValueError(f"peft.peft_type is required; choose one of {[p.value for p in PeftType]}")
    try:
        peft_type = _enum(PeftType, fields.pop("peft_type"), "peft.peft_type")
    except ValueError as e:
        raise ValueError(str(e).replace("peft_type", "peft.peft_type", 1)) from None
    cls = CONFIG_CLASSES[peft_type]
    task_type = PEFT_TASK_TYPES.get(config.model.task)
    given = fields.setdefault("task_type", task_type)
    if given is not None and str(given).upper() != task_type:
        raise ValueError(f"peft.task_type={given!r} does not match model.task={config.model.task!r} "
                         f"(which is {task_type!r}); drop peft.task_type")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in fields:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean peft.{close[0]}?" if close else f"valid: {sorted(known)}"
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
    from transformers import AutoTokenizer

    path = config.model.tokenizer or config.model.name_or_path
    try:
        return AutoTokenizer.from_pretrained(str(hub.resolve(path)) if Path(str(path)).expanduser().is_dir()
                                             else path)
    except Exception as e:
        raise ValueError(f"model.tokenizer: no tokenizer could be loaded from {str(path)!r} "
                         f"({type(e).__name__}: {e})") from None


def featurizer(config, tokenizer) -> data.Featurizer:
    d = config.data
    tup = lambda v: None if v is None else (v if isinstance(v, str) else tuple(v))
    names = d.label_names
    return data.Featurizer(
        tokenizer, config.model.task, max_length=d.max_length, text_columns=tup(d.text_columns),
        label_column=d.label_column, num_labels=config.model.num_labels,
        label2id=None if names is None else {n: i for i, n in enumerate(names)},
        template=d.template, verbalizer=tup(d.verbalizer), target_max_length=d.target_max_length)


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
    return arch.build(c, task, num_labels, precision, nnx.Rngs(params=seed))


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
                                      param_dtype=m.param_dtype, seed=named_seed(seed, "head"))
    return jsoft.get_peft_model(model, peft_config(config, getattr(tokenizer, "name_or_path", None)),
                                seed=named_seed(seed, "params"), tokenizer=tokenizer)


def build(config, train_ds=None):
    """`(peft_model, tokenizer, featurizer)`, as train builds them (export rebuilds a run with it). With
    `train_ds` the featurizer is fitted to it (label names; the class count when model.num_labels is unset)."""
    tok = load_tokenizer(config)
    feat = featurizer(config, tok)
    if train_ds is not None:
        feat = feat.fit(train_ds)
    return build_model(config, tok, feat), tok, feat


# ============================================================================================ the steps


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def remat_layers(model: nnx.Module) -> int:
    """Rematerialise every transformer layer (the outermost `nnx.List`s of modules: each stack's blocks):
    a layer's activations are recomputed in the backward pass instead of kept. Works for every method,
    prefixes included (a prefix is an ordinary input of the layer). Returns the number of layers wrapped."""
    lists = [(path, node) for path, node in nnx.iter_graph(model)
             if isinstance(node, nnx.List) and len(node) and all(isinstance(x, nnx.Module) for x in node)]
    done: list[tuple] = []
    for path, node in sorted(lists, key=lambda pn: len(pn[0])):
        if any(path[:len(p)] == p for p in done):
            continue  # inside a layer that is already rematerialised
        done.append(tuple(path))
        for layer in node:
            layer.__class__ = _remat_class(type(layer))
    return sum(len(n) for p, n in lists if tuple(p) in done)


_REMAT_CLASSES: dict[type, type] = {}


def _remat_class(cls: type) -> type:
    """A subclass whose `__call__` runs under `jax.checkpoint`. Arrays (and pytrees of arrays) pass through
    the checkpoint; everything else (layer index, None, flags) is closed over. The layers' `DropoutRng`
    travels as its key and counter, so dropout masks are the same as without rematerialisation."""
    from jsoft.models.layers import DropoutRng

    if getattr(cls, "_jsoft_remat", False):
        return cls
    if cls in _REMAT_CLASSES:
        return _REMAT_CLASSES[cls]
    original = cls.__call__

    def __call__(self, *args, **kw):
        drop = kw.pop("drop", None)
        arg_is_array = [_is_array_tree(a) for a in args]
        arrays = ([a for a, is_arr in zip(args, arg_is_array) if is_arr],
                  {k: v for k, v in kw.items() if _is_array_tree(v)})
        static_kw = {k: v for k, v in kw.items() if k not in arrays[1]}
        graphdef, state = nnx.split(self)
        start, used = (0 if drop is None else drop.count), {}

        def call(state, arrays, key):
            it = iter(arrays[0])
            args_ = [next(it) if is_arr else a for a, is_arr in zip(args, arg_is_array)]
            extra = {}
            if drop is not None:
                extra["drop"] = d = DropoutRng(key)
                d.count = start
            out = original(nnx.merge(graphdef, state), *args_, **static_kw, **arrays[1], **extra)
            if drop is not None:
                used["count"] = d.count
            return out

        out = jax.checkpoint(call)(state, arrays, None if drop is None else drop.key)
        if drop is not None:
            drop.count = used["count"]
        return out

    sub = type(cls.__name__, (cls,), {"__call__": __call__, "_jsoft_remat": True, "__module__": cls.__module__,
                                     "__qualname__": cls.__qualname__})
    _REMAT_CLASSES[cls] = sub
    return sub


def _is_array_tree(v) -> bool:
    leaves = jax.tree.leaves(v)
    return bool(leaves) and all(isinstance(x, jax.Array | np.ndarray) for x in leaves)


def initial_state(params, tx: optax.GradientTransformation, seed: int) -> dict:
    """What a checkpoint holds: trainable parameters, optimizer state, step and the dropout key."""
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(named_seed(seed, "dropout")))}


def load_config(workdir) -> ml_collections.ConfigDict:
    """The resolved config a run saved in its workdir."""
    f = Path(workdir) / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{workdir} has no config.json; is it the --workdir of a jsoft.train run?")
    return ml_collections.ConfigDict(json.loads(f.read_text()))


def to_saveable(tree) -> dict:
    """A nested dict of arrays keyed by the tree's paths (Orbax stores plain dicts most robustly)."""
    out: dict = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        d = out
        keys = [_key(k) for k in path]
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = leaf
    return out


def from_saveable(saved: dict, like) -> Any:
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for path, _ in paths:
        d = saved
        for k in path:
            d = d[_key(k)]
        leaves.append(d)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _key(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


# ============================================================================================ training


class _Stop:
    """SIGTERM (e.g. TPU preemption) asks the loop to checkpoint and exit at the next step."""

    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        self.signal = signum


def _debug_signal(step: int) -> None:
    """JSOFT_DEBUG_SIGNAL_AT_STEP="9:5" sends signal 9 to this process right after step 5 is dispatched
    (tests kill a run at an exact step)."""
    spec = os.environ.get("JSOFT_DEBUG_SIGNAL_AT_STEP")
    if spec:
        sig, at = (int(x) for x in spec.split(":"))
        if at == step:
            os.kill(os.getpid(), sig)
            time.sleep(1)  # let the handler run (SIGTERM) before the next step


def _host(x) -> np.ndarray:
    """A replicated global array as numpy (also on multi-host, where it is not fully addressable)."""
    return np.asarray(x.addressable_data(0)) if not x.is_fully_addressable else np.asarray(x)


def _peak_memory() -> dict:
    stats = jax.local_devices()[0].memory_stats() or {}
    return {"peak_device_bytes": stats.get("peak_bytes_in_use"),
            "peak_host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Runs (or resumes) the training described by `config` in `workdir`; returns the summary."""
    # ---------------------------------------------------------------- setup
    check_config(config)
    workdir = Path(workdir)
    primary = jax.process_index() == 0
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
    t = config.train
    task = config.model.task

    # ---------------------------------------------------------------- data
    # Everything that can be wrong with the data fails here, before a model is loaded.
    train_ds = data.load(config.data.train, key="data.train")
    eval_ds = None if config.data.eval is None else data.load(config.data.eval, key="data.eval")
    tokenizer = load_tokenizer(config)
    feat = featurizer(config, tokenizer).fit(train_ds)
    train_enc = feat(train_ds, key="data.train")
    eval_enc = None if eval_ds is None else feat(eval_ds, key="data.eval")
    batches = data.Batches(train_enc, t.batch_size, train=True, seed=named_seed(t.seed, "data"),
                           process_index=jax.process_index(), process_count=jax.process_count())
    num_steps = t.num_steps or t.num_epochs * batches.steps_per_epoch
    eval_batch_size = t.eval_batch_size or t.batch_size
    num_labels = num_labels_of(config, feat)
    verbalizer_ids = None
    if feat.verbalizer is not None:
        firsts = [ids[0] for ids in feat.verbalizer_token_ids()]
        if len(set(firsts)) != len(firsts):
            raise ValueError(f"data.verbalizer={list(feat.verbalizer)}: the words must start with different "
                             "tokens (classes are scored by their first token)")
        verbalizer_ids = np.asarray(firsts, np.int32)
        num_labels = len(firsts)
    id2label = feat.id2label
    if task == "token_cls" and (id2label is None or not all(isinstance(v, str) for v in id2label.values())):
        log.warning("token_cls without tag names (set data.label_names): entity F1 is not computed")
        id2label = None

    best_metric = t.best_metric or {"seq_cls": "mse" if num_labels == 1 else "accuracy",
                                    "token_cls": "f1" if id2label is not None else "accuracy"}.get(
        task, "accuracy" if verbalizer_ids is not None else "loss")

    # The resolved config (what export rebuilds from): what the data fixed, and the metric that ranks steps.
    with config.unlocked():
        config.train.best_metric = best_metric
        config.model.num_labels = num_labels if task in ("seq_cls", "token_cls") else config.model.num_labels
        if id2label is not None and config.data.label_names is None and task in ("seq_cls", "token_cls"):
            config.data.label_names = [id2label[i] for i in range(len(id2label))]
    if primary:
        saved = workdir / "config.json"
        text = config.to_json_best_effort(indent=2, sort_keys=True)
        if saved.is_file() and json.loads(saved.read_text()) != json.loads(text):
            log.warning("config differs from %s; resuming with the new one", saved)
        saved.write_text(text)
        print(config, flush=True)

    # ---------------------------------------------------------------- mesh and shardings
    mesh = sharding.make_mesh(config.mesh)
    n_batch = sharding.batch_devices(mesh)
    for key, size in (("train.batch_size", t.batch_size // t.grad_accum_steps),
                      ("train.eval_batch_size", eval_batch_size)):
        if size % n_batch or size % jax.process_count():
            raise ValueError(f"{key}={size}{' / grad_accum_steps' if key == 'train.batch_size' else ''} must be "
                             f"a multiple of mesh.data x mesh.fsdp = {n_batch}")

    # ---------------------------------------------------------------- model
    pm = build_model(config, tokenizer, feat)
    if t.remat:
        log.info("rematerialising %d layers", remat_layers(pm.base_model))
    graphdef, trainable, frozen = nnx.split(pm, jsoft.Trainable, ...)
    n_trainable, n_all = pm.get_nb_trainable_parameters()
    log.info("trainable params: %s || all params: %s || trainable%%: %.4f", f"{n_trainable:,d}", f"{n_all:,d}",
             100 * n_trainable / n_all)
    # frozen weights by their logical axes; the trainable state replicated; batches over data x fsdp
    replicated = sharding.replicated(mesh)
    frozen_sh = sharding.state_shardings(frozen, mesh)
    frozen = sharding.put(frozen, frozen_sh)
    batch_sh = sharding.batch_sharding(mesh)

    # ---------------------------------------------------------------- optimizer and train state
    tx, lr_schedule = optim.make(t, num_steps)
    state = jax.jit(functools.partial(initial_state, tx=tx, seed=t.seed), out_shardings=replicated)(trainable)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state)

    # ---------------------------------------------------------------- the train step
    accum = t.grad_accum_steps

    def train_step(state, frozen, batch):
        def loss_fn(params, batch, rng):
            model = nnx.merge(graphdef, params, frozen)
            return model(**model_inputs(batch), labels=batch["labels"], dropout_rng=rng).loss

        step = state["step"]
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step) if t.dropout else None
        batch = {k: v for k, v in batch.items() if k != "weights"}
        grad_fn = jax.value_and_grad(loss_fn)
        if accum == 1:
            loss, grads = grad_fn(state["params"], batch, rng)
        else:
            # row r of device d's slice goes to microbatch r % accum, so microbatches need no communication
            micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1),
                                 batch)

            def one(carry, xs):
                i, mb = xs
                loss, grads = grad_fn(state["params"], mb, None if rng is None else jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, (loss, grads)), None

            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state["params"]))
            (loss, grads), _ = jax.lax.scan(one, zeros, (jnp.arange(accum), micro))
            loss, grads = jax.tree.map(lambda x: x / accum, (loss, grads))
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)]))
        out = {"loss": loss, "grad_norm": optax.global_norm(grads), "learning_rate": lr_schedule(step),
               "params_finite": finite}
        return {"params": params, "opt_state": opt_state, "step": step + 1, "rng": state["rng"]}, out

    train_step = jax.jit(train_step, in_shardings=(replicated, frozen_sh, batch_sh),
                         out_shardings=(replicated, replicated), donate_argnums=(0,))

    # ---------------------------------------------------------------- the eval step
    def eval_step(params, frozen, batch):
        model = nnx.merge(graphdef, params, frozen)
        logits = model(**model_inputs(batch)).logits.astype(jnp.float32)
        labels, w = batch["labels"], batch["weights"]
        out = {}
        if task == "seq_cls" and num_labels == 1:
            se = (logits[:, 0] - labels.astype(jnp.float32)) ** 2
            return {"se_sum": jnp.sum(se * w), "count": jnp.sum(w)}
        if task == "seq_cls":
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            preds = jnp.argmax(logits, -1)
            return {"confusion": jnp.zeros((num_labels, num_labels)).at[labels, preds].add(w),
                    "nll_sum": jnp.sum(ce * w), "count": jnp.sum(w)}
        if task == "token_cls":
            logits = logits[:, logits.shape[1] - labels.shape[1]:]  # prompt-tuning virtual tokens come first
            valid = (labels != IGNORE) & (w[:, None] > 0)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
            preds = jnp.argmax(logits, -1)
            return {"preds": preds, "labels": labels, "weights": w, "nll_sum": jnp.sum(ce * valid),
                    "count": jnp.sum(valid), "correct": jnp.sum((preds == labels) & valid)}
        if task == "causal_lm":
            logits = logits[:, logits.shape[1] - labels.shape[1]:][:, :-1]
            labels = labels[:, 1:]
        valid = (labels != IGNORE) & (w[:, None] > 0)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
        out = {"nll_sum": jnp.sum(ce * valid), "count": jnp.sum(valid)}
        if verbalizer_ids is not None:
            first = jnp.argmax(valid, axis=1)  # each row's first target token
            rows = jnp.arange(labels.shape[0])
            scores = logits[rows, first][:, verbalizer_ids]
            true = jnp.argmax(labels[rows, first][:, None] == verbalizer_ids[None], -1)
            out["confusion"] = jnp.zeros((num_labels, num_labels)).at[true, jnp.argmax(scores, -1)].add(w)
        return out

    eval_step = jax.jit(eval_step, in_shardings=(replicated, frozen_sh, batch_sh), out_shardings=replicated)
    eval_shapes: set = set()

    def evaluate(params) -> dict[str, float]:
        sums: dict[str, Any] = {}
        entity = np.zeros(3, np.int64)
        it = data.Batches(eval_enc, eval_batch_size, train=False, process_index=jax.process_index(),
                          process_count=jax.process_count())
        for host_batch in it:
            eval_shapes.add(host_batch["input_ids"].shape)
            out = {k: _host(v) for k, v in eval_step(params, frozen, sharding.put_batch(host_batch, mesh)).items()}
            if task == "token_cls" and id2label is not None:
                entity += metrics.entity_counts(*metrics.token_tags(out["labels"], out["preds"], id2label,
                                                                    out["weights"]))
            for k, v in out.items():
                if k not in ("preds", "labels", "weights"):
                    sums[k] = sums.get(k, 0) + v.astype(np.float64)
        result = {}
        if "confusion" in sums:
            result.update(metrics.classification(sums["confusion"]))
        if task == "token_cls":
            result["accuracy"] = float(sums["correct"] / max(sums["count"], 1))
            if id2label is not None:
                result.update(metrics.entity_f1(entity))
        if "se_sum" in sums:
            result["mse"] = float(sums["se_sum"] / sums["count"])
        elif task in ("causal_lm", "seq2seq_lm"):
            result.update(metrics.language_model(float(sums["nll_sum"]), float(sums["count"])))
        else:
            result["loss"] = float(sums["nll_sum"] / max(sums["count"], 1))
        return result

    # ---------------------------------------------------------------- restore
    from jsoft.checkpoint import Checkpointer

    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=t.keep_checkpoints,
                        best_metric=best_metric if eval_enc is not None else None,
                        best_mode=metrics.mode(best_metric), async_save=t.async_checkpoints)
    restored = ckpt.restore(to_saveable(abstract))
    meta: dict = {}
    if restored is not None:
        saved_state, meta = restored
        state = from_saveable(saved_state, abstract)
        batches.restore(meta["data"])
        log.info("resumed from step %d in %s", meta["step"], ckpt.directory)
    step = int(meta.get("step", 0))
    tokens_seen = int(meta.get("tokens", 0))
    writer = metrics.Writer(workdir, enabled=primary)

    def save(step, eval_metrics=None, force=False):
        ckpt.save(step, to_saveable(state),
                  {"step": step, "data": batches.state(), "tokens": tokens_seen, "num_steps": num_steps},
                  metrics=eval_metrics, force=force)

    # ---------------------------------------------------------------- loop
    stop = _Stop()
    if jax.process_count() == 1 and hasattr(signal, "SIGTERM"):
        try:
            signal.signal(signal.SIGTERM, stop)
        except ValueError:  # not the main thread
            pass
    from tqdm.auto import tqdm

    bar = tqdm(total=num_steps, initial=step, disable=not (primary and t.progress), dynamic_ncols=True,
               desc="train")
    train_shapes: set = set()
    pending = None  # (step, device metrics, tokens): read after the next step is dispatched
    window: list[dict] = []
    t_start, tokens_start = time.perf_counter(), tokens_seen
    last_train: dict = {}

    def read(p):
        """Host values of a step's metrics; stops the run on a non-finite loss or parameters."""
        s, m, _ = p
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        if not math.isfinite(m["loss"]) or not m["params_finite"]:
            what = f"loss is {m['loss']}" if not math.isfinite(m["loss"]) else "parameters are not finite"
            ckpt.wait()
            good = ckpt.latest_step()
            raise FloatingPointError(
                f"{what} at step {s}; stopping. The last good checkpoint is "
                f"{'step ' + str(good) if good is not None else 'none'} in {ckpt.directory}.")
        return s, m

    def log_train(s, m):
        nonlocal last_train
        window.append(m)
        if s % t.log_every == 0 or s == num_steps:
            mean = {k: float(np.mean([w[k] for w in window])) for k in ("loss", "grad_norm")}
            elapsed = time.perf_counter() - t_start
            mean.update(learning_rate=m["learning_rate"],
                        tokens_per_second=(tokens_seen - tokens_start) / max(elapsed, 1e-9))
            writer.write(s, "train", mean)
            bar.set_postfix(loss=f"{mean['loss']:.4f}", lr=f"{m['learning_rate']:.2e}",
                            tok_s=f"{mean['tokens_per_second']:.0f}", refresh=False)
            window.clear()
            last_train = mean

    try:
        while step < num_steps:
            host_batch = next(batches)
            train_shapes.add(host_batch["input_ids"].shape)
            state, step_metrics = train_step(state, frozen, sharding.put_batch(host_batch, mesh))
            step += 1
            tokens_seen += int(host_batch["attention_mask"].sum()) * jax.process_count()
            if pending is not None:
                log_train(*read(pending))
            pending = (step, step_metrics, tokens_seen)
            bar.update(1)
            _debug_signal(step)
            do_eval = eval_enc is not None and t.eval_every and step % t.eval_every == 0 and step < num_steps
            do_save = step < num_steps and ((t.checkpoint_every and step % t.checkpoint_every == 0) or do_eval
                                            or stop.signal)
            if do_save or do_eval:
                log_train(*read(pending))  # never checkpoint a state whose step went bad
                pending = None
            eval_metrics = None
            if do_eval:
                eval_metrics = evaluate(state["params"])
                writer.write(step, "eval", eval_metrics)
                log.info("step %d eval %s", step, _fmt(eval_metrics))
            if do_save:
                save(step, eval_metrics)
            if stop.signal and step < num_steps:
                ckpt.wait()
                log.warning("stopped by signal %d at step %d; checkpoint saved; rerun to resume", stop.signal, step)
                raise SystemExit(128 + stop.signal)
        if pending is not None:
            log_train(*read(pending))
            pending = None
        bar.close()
        elapsed = time.perf_counter() - t_start

        # ---------------------------------------------------------------- final evaluation and summary
        final_eval = {}
        if eval_enc is not None:
            final_eval = evaluate(state["params"])
            writer.write(step, "eval", final_eval)
            log.info("final eval (step %d): %s", step, _fmt(final_eval))
        save(step, final_eval or None, force=True)  # no-op when a finished run is rerun
        ckpt.wait()
        summary = {
            "eval": final_eval, "step": step, "num_steps": num_steps, "train": last_train,
            "tokens_per_second": (tokens_seen - tokens_start) / max(elapsed, 1e-9),
            "train_seconds": elapsed, "tokens_seen": tokens_seen,
            "trainable_params": n_trainable, "all_params": n_all,
            "best_step": ckpt.best_step(), "best_metric": best_metric,
            "compiled": {"train_shapes": sorted(train_shapes), "eval_shapes": sorted(eval_shapes)},
            "mesh": dict(mesh.shape), "devices": jax.device_count(), **_peak_memory(),
        }
        log.info("compiled %d train and %d eval programs (batch x length: %s)", len(train_shapes),
                 len(eval_shapes), sorted(train_shapes | eval_shapes))
        if primary:
            (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
        return summary
    finally:
        writer.close()
        bar.close()
        ckpt.close()


def _fmt(m: dict) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items())


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, tuple | set):
        return list(x)
    raise TypeError(type(x))


# ============================================================================================ CLI


def main(argv=None) -> int:
    from absl import flags
    from ml_collections import config_flags

    fl = flags.FlagValues()
    config_flag = config_flags.DEFINE_config_file("config", None, "a config file with get_config()",
                                                  flag_values=fl, lock_config=True)
    flags.DEFINE_string("workdir", None, "output directory; rerunning resumes from it", flag_values=fl)
    argv = sys.argv if argv is None else argv
    try:
        fl(argv)
        config = config_flag.value
    except Exception as e:  # absl wraps override errors; show what names the key
        cause = e.__cause__ or e.__context__ or e
        msg = str(cause).strip("\"'").replace("\\n", " ").replace("\\'", "'")
        print(f"config error: {msg or e}", file=sys.stderr)
        return 2
    if config is None or fl.workdir is None:
        print("usage: python -m jsoft.train --config configs/X.py --workdir DIR [--config.key=value ...]",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src", "datasets", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("JSOFT_DISTRIBUTED"):
        jax.distributed.initialize()
    try:
        train(config, fl.workdir)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
