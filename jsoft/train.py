"""Train a soft prompt: `python -m jsoft.train --config configs/X.py [--config.train.learning_rate=3e-2] --workdir DIR`.

One linear loop in commented sections (big_vision style): config -> data -> model -> mesh -> optimizer ->
restore -> steps -> evaluation -> summary. Only the trainable state (`jsoft.Trainable` leaves: prompts,
encoders, heads) has gradients and optimizer state; the frozen backbone is an input of the step, sharded by
logical-axis rules, never donated. Re-running the same command resumes from the workdir bit for bit.

Workdir: `config.json` (the resolved config), `checkpoints/` (Orbax), `metrics.jsonl`, `tb/` (TensorBoard),
`summary.json` (written at the end).
"""

from __future__ import annotations

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
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import jsoft
from jsoft import build, data, metrics, optim, sharding
from jsoft.models.base import token_ids
from jsoft.tuners import losses

log = logging.getLogger("jsoft.train")

IGNORE = data.IGNORE_INDEX


# ============================================================================================ the steps


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "prompt_positions")


def model_inputs(batch) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def program_shape(batch) -> tuple[int, ...]:
    """What a step compiles for: batch x length, and x label slots where the batch has `label_positions`."""
    slots = batch["label_positions"].shape[1:] if "label_positions" in batch else ()
    return batch["input_ids"].shape + slots


def remat_layers(model: nnx.Module, policy: str = "nothing_saveable") -> int:
    """Rematerialise every transformer layer (the outermost `nnx.List`s of modules: each stack's blocks):
    a layer's activations are recomputed in the backward pass instead of kept, except what the
    `jax.checkpoint_policies` `policy` saves (one of build.REMAT_POLICIES; "dots_saveable" keeps the matmul
    outputs and recomputes only elementwise work). Works for every method, prefixes included (a prefix is
    an ordinary input of the layer). Returns the number of layers wrapped."""
    if policy not in build.REMAT_POLICIES:
        raise ValueError(f"remat policy {policy!r} is not valid; choose one of {list(build.REMAT_POLICIES)}")
    lists = [(path, node) for path, node in nnx.iter_graph(model)
             if isinstance(node, nnx.List) and len(node) and all(isinstance(x, nnx.Module) for x in node)]
    done: list[tuple] = []
    for path, node in sorted(lists, key=lambda pn: len(pn[0])):
        if any(path[:len(p)] == p for p in done):
            continue  # inside a layer that is already rematerialised
        done.append(tuple(path))
        for layer in node:
            layer.__class__ = _remat_class(type(layer), policy)
    return sum(len(n) for p, n in lists if tuple(p) in done)


_REMAT_CLASSES: dict[tuple[type, str], type] = {}


def _remat_class(cls: type, policy: str) -> type:
    """A subclass whose `__call__` runs under `jax.checkpoint`. Arrays (and pytrees of arrays) pass through
    the checkpoint; everything else (layer index, None, flags) is closed over. The layers' `DropoutRng`
    travels as its key and counter, so dropout masks are the same as without rematerialisation."""
    from jsoft.models.layers import DropoutRng

    if getattr(cls, "_jsoft_remat", False):
        return cls
    if (cls, policy) in _REMAT_CLASSES:
        return _REMAT_CLASSES[cls, policy]
    original = cls.__call__
    checkpoint_policy = getattr(jax.checkpoint_policies, policy)

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

        out = jax.checkpoint(call, policy=checkpoint_policy)(state, arrays, None if drop is None else drop.key)
        if drop is not None:
            drop.count = used["count"]
        return out

    sub = type(cls.__name__, (cls,), {"__call__": __call__, "_jsoft_remat": True, "__module__": cls.__module__,
                                     "__qualname__": cls.__qualname__})
    _REMAT_CLASSES[cls, policy] = sub
    return sub


def _is_array_tree(v) -> bool:
    leaves = jax.tree.leaves(v)
    return bool(leaves) and all(isinstance(x, jax.Array | np.ndarray) for x in leaves)


def generation_eval(pm, enc, batch_size: int, tokenizer, max_new_tokens: int, options=None) -> dict[str, float]:
    """Generate for every row of `enc` (`data.generation_rows`; greedy, or as `options` say: beams, penalties)
    and score against the labels' text: ROUGE-L, exact match, BLEU. Each process scores its own rows; the
    means are combined across processes by row count."""
    mc = pm.base_model.config
    # stop at the model's EOS and at the tokenizer's (the one the targets end with)
    eos = {*token_ids(mc.eos_token_id), tokenizer.eos_token_id}
    eos = sorted(int(e) for e in eos if e is not None and 0 <= e < mc.vocab_size)
    pad = data.pad_token_id(tokenizer)
    preds, refs = [], []
    it = data.Batches(enc, batch_size, train=False, process_index=jax.process_index(),
                      process_count=jax.process_count())
    for batch in it:
        out = np.asarray(pm.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens,
                                     eos_token_id=eos, pad_token_id=pad, **dict(options or {})))
        new = out[:, -max_new_tokens:]  # after the input (causal) or the decoder start token (seq2seq)
        keep = batch["weights"] > 0
        labels = np.where(batch["labels"] < 0, pad, batch["labels"])
        preds += [tokenizer.decode(_until(row, eos), skip_special_tokens=True) for row in new[keep]]
        refs += [tokenizer.decode(_until(row, eos), skip_special_tokens=True) for row in labels[keep]]
    local = metrics.generation(preds, refs)
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    n = len(refs)
    sums = multihost_utils.process_allgather(np.array([n] + [v * n for v in local.values()]))
    return {k: float(sums[:, i + 1].sum() / max(sums[:, 0].sum(), 1)) for i, k in enumerate(local)}


def _until(ids: np.ndarray, stop: list[int]) -> np.ndarray:
    """`ids` up to (without) the first of `stop`."""
    hits = np.flatnonzero(np.isin(ids, stop))
    return ids if hits.size == 0 else ids[:hits[0]]


def initial_state(params, tx: optax.GradientTransformation, seed: int) -> dict:
    """What a checkpoint holds: trainable parameters, optimizer state, step and the dropout key."""
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(build.named_seed(seed, "dropout")))}


def make_train_step(graphdef, tx: optax.GradientTransformation, lr_schedule, *, grad_accum_steps: int = 1,
                    dropout: bool = True):
    """The training step `(state, frozen, batch) -> (state, metrics)` (not jitted; `train` jits it with its
    shardings and donates `state`). Gradients are taken over `state["params"]` (the trainable leaves) only;
    the model is merged from `graphdef`, those and the frozen state inside the step. Dropout keys are
    `fold_in(state["rng"], step)`, so a resumed run draws the same masks. With `grad_accum_steps` > 1 the
    batch is split into that many microbatches whose gradients are averaged."""
    accum = grad_accum_steps

    def train_step(state, frozen, batch):
        def loss_fn(params, batch, rng):
            model = nnx.merge(graphdef, params, frozen)
            slots = {"label_positions": batch["label_positions"]} if "label_positions" in batch else {}
            return model(**model_inputs(batch), labels=batch["labels"], dropout_rng=rng, **slots).loss

        step = state["step"]
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step) if dropout else None
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
        finite = jax.tree.reduce(jnp.logical_and, jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), params))
        out = {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": lr_schedule(step),
               "params_finite": finite}
        return {"params": params, "opt_state": opt_state, "step": step + 1, "rng": state["rng"]}, out

    return train_step


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
    """SIGTERM (e.g. TPU preemption) asks the loop to checkpoint and exit. With several processes they agree
    every `every` steps (a small all-gather), so all of them save the same step."""

    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        self.signal = signum

    def check(self, step: int, every: int) -> bool:
        if jax.process_count() == 1:
            return self.signal is not None
        if step % every:
            return False
        from jax.experimental import multihost_utils

        got = multihost_utils.process_allgather(np.int32(self.signal or 0))
        self.signal = self.signal or (int(np.max(got)) or None)
        return self.signal is not None


def _debug_signal(step: int) -> None:
    """JSOFT_DEBUG_SIGNAL_AT_STEP="9:5" sends signal 9 to this process once step 5 is dispatched and its
    checkpoint (if any) started saving: tests kill a run at an exact step, possibly mid-save."""
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
    build.check_config(config)
    workdir = Path(workdir).absolute()  # Orbax needs absolute paths
    primary = jax.process_index() == 0
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
    t = config.train
    task = config.model.task

    # ---------------------------------------------------------------- data
    # Everything that can be wrong with the data fails here, before a model is loaded.
    train_ds = data.load(config.data.train, key="data.train")
    eval_ds = None if config.data.eval is None else data.load(config.data.eval, key="data.eval")
    tokenizer = build.load_tokenizer(config)
    feat = build.featurizer(config, tokenizer).fit(train_ds)
    train_enc = feat(train_ds, key="data.train")
    eval_enc = None if eval_ds is None else feat(eval_ds, key="data.eval")
    generate_enc = None
    if eval_enc is not None and t.eval_generate_tokens > 0:
        if task not in ("causal_lm", "seq2seq_lm"):
            raise ValueError(f"train.eval_generate_tokens={t.eval_generate_tokens} needs model.task causal_lm or "
                             f"seq2seq_lm, not {task!r}; set it to 0")
        generate_enc = data.generation_rows(eval_enc)
    batches = data.Batches(train_enc, t.batch_size, train=True, seed=build.named_seed(t.seed, "data"),
                           process_index=jax.process_index(), process_count=jax.process_count())
    num_steps = t.num_steps or t.num_epochs * batches.steps_per_epoch
    eval_batch_size = t.eval_batch_size or t.batch_size
    num_labels = build.num_labels_of(config, feat)
    verbalizer_ids, verbalizer_at = None, 0
    if feat.verbalizer is not None:
        verbalizer_at, firsts = feat.verbalizer_choice()
        verbalizer_ids = np.asarray(firsts, np.int32)
        num_labels = len(firsts)
    id2label = feat.id2label
    if task == "token_cls" and (id2label is None or not all(isinstance(v, str) for v in id2label.values())):
        log.warning("token_cls without tag names (set data.label_names): entity F1 is not computed")
        id2label = None

    multi_label = task == "seq_cls" and train_enc.labels.ndim == 2  # a label column of lists
    problem_type = None
    if task == "seq_cls":
        problem_type = ("regression" if num_labels == 1 else "multi_label_classification" if multi_label
                        else "single_label_classification")
        if config.model.problem_type not in (None, problem_type):
            raise ValueError(f"model.problem_type={config.model.problem_type!r}, but the labels of data.train make "
                             f"it {problem_type!r} (floats or num_labels=1: regression; lists: multi-label)")
    best_metric = t.best_metric or {"seq_cls": "mse" if num_labels == 1 else "micro_f1" if multi_label else "accuracy",
                                    "token_cls": "f1" if id2label is not None else "accuracy"}.get(
        task, "accuracy" if verbalizer_ids is not None else "loss")

    # The resolved config (what export rebuilds from): what the data fixed, and the metric that ranks steps.
    with config.unlocked():
        config.train.best_metric = best_metric
        config.model.num_labels = num_labels if task in ("seq_cls", "token_cls") else config.model.num_labels
        config.model.problem_type = problem_type
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
    pm = build.build_model(config, tokenizer, feat)
    build.check_token_ids(pm, {"data.train": train_enc, "data.eval": eval_enc})
    if t.remat:
        log.info("rematerialising %d layers (%s)", remat_layers(pm.base_model, t.remat_policy), t.remat_policy)
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
    train_step = make_train_step(graphdef, tx, lr_schedule, grad_accum_steps=t.grad_accum_steps, dropout=t.dropout)
    train_step = jax.jit(train_step, in_shardings=(replicated, frozen_sh, batch_sh),
                         out_shardings=(replicated, replicated), donate_argnums=(0,))

    # ---------------------------------------------------------------- the eval step
    def eval_step(params, frozen, batch):
        model = nnx.merge(graphdef, params, frozen)
        labels, w = batch["labels"], batch["weights"]
        extra = {"labels": labels} if task == "seq2seq_lm" else {}  # decoder inputs are the shifted labels
        out = model(**model_inputs(batch), **extra)
        logits = out.logits.astype(jnp.float32)  # unused (so never computed) when the LM head reads label slots
        if task == "seq_cls" and num_labels == 1:  # regression: correlations need every prediction
            return {"preds": logits[:, 0], "labels": labels.astype(jnp.float32), "weights": w}
        if multi_label:  # the loss is transformers' BCE: the mean over rows and labels
            bce = optax.sigmoid_binary_cross_entropy(logits, labels).mean(-1)
            pred, true = (logits > 0).astype(jnp.float32), labels
            return {"tp": (pred * true * w[:, None]).sum(0), "fp": (pred * (1 - true) * w[:, None]).sum(0),
                    "fn": ((1 - pred) * true * w[:, None]).sum(0),
                    "exact": jnp.sum(jnp.all(pred == true, -1) * w), "nll_sum": jnp.sum(bce * w), "count": jnp.sum(w)}
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
        if task == "causal_lm" and "label_positions" in batch:  # the LM head on the labelled tokens only
            h = out.last_hidden_state
            h, labels = losses.label_slot_inputs(h, labels, batch["label_positions"], h.shape[1] - labels.shape[1])
            logits = model.base_model.lm_logits(h)
        elif task == "causal_lm":
            logits = logits[:, logits.shape[1] - labels.shape[1]:][:, :-1]
            labels = labels[:, 1:]
        valid = (labels != IGNORE) & (w[:, None] > 0)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
        out = {"nll_sum": jnp.sum(ce * valid), "count": jnp.sum(valid)}
        if verbalizer_ids is not None:
            first = jnp.argmax(valid, axis=1) + verbalizer_at  # each row's first target token that tells classes apart
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
        scores: list[tuple[np.ndarray, np.ndarray]] = []  # regression: (predictions, targets) of the real rows
        it = data.Batches(eval_enc, eval_batch_size, train=False, process_index=jax.process_index(),
                          process_count=jax.process_count())
        for host_batch in it:
            eval_shapes.add(program_shape(host_batch))
            out = {k: _host(v) for k, v in eval_step(params, frozen, sharding.put_batch(host_batch, mesh)).items()}
            if task == "token_cls" and id2label is not None:
                entity += metrics.entity_counts(*metrics.token_tags(out["labels"], out["preds"], id2label,
                                                                    out["weights"]))
            if task == "seq_cls" and num_labels == 1:
                keep = out["weights"] > 0
                scores.append((out["preds"][keep], out["labels"][keep]))
            for k, v in out.items():
                if k not in ("preds", "labels", "weights"):
                    sums[k] = sums.get(k, 0) + v.astype(np.float64)
        result = {}
        if "confusion" in sums:
            result.update(metrics.classification(sums["confusion"]))
        if "tp" in sums:
            result.update(metrics.multi_label(sums["tp"], sums["fp"], sums["fn"], sums["exact"], sums["count"]))
        if task == "token_cls":
            result["accuracy"] = float(sums["correct"] / max(sums["count"], 1))
            if id2label is not None:
                result.update(metrics.entity_f1(entity))
        if scores:
            result.update(metrics.regression(*(np.concatenate(x) for x in zip(*scores))))
            result["loss"] = result["mse"]  # transformers' regression loss
        elif task in ("causal_lm", "seq2seq_lm"):
            result.update(metrics.language_model(float(sums["nll_sum"]), float(sums["count"])))
        if "loss" not in result:
            result["loss"] = float(sums["nll_sum"] / max(sums["count"], 1))
        if generate_enc is not None:
            result.update(generation_eval(nnx.merge(graphdef, params, frozen), generate_enc, eval_batch_size,
                                          tokenizer, t.eval_generate_tokens, t.eval_generate_options.to_dict()))
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

    saved_step = None

    def save(step, eval_metrics=None, force=False):
        nonlocal saved_step
        saved_step = step
        ckpt.save(step, to_saveable(state),
                  {"step": step, "data": batches.state(), "tokens": tokens_seen, "num_steps": num_steps},
                  metrics=eval_metrics, force=force)

    # ---------------------------------------------------------------- loop
    stop, previous_handler = _Stop(), None
    try:
        previous_handler = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: no preemption handling
        pass
    from tqdm.auto import tqdm

    bar = tqdm(total=num_steps, initial=step, disable=not (primary and t.progress), dynamic_ncols=True,
               desc="train")
    train_shapes: set = set()
    pending = None  # (step, device metrics): read after the next step is dispatched
    window: list[dict] = []
    t_start, tokens_start = time.perf_counter(), tokens_seen
    last_train: dict = {}

    def read(p):
        """Host values of a step's metrics; stops the run on a non-finite loss or parameters."""
        s, m = p
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
            shape = program_shape(host_batch)
            if shape not in train_shapes:
                train_shapes.add(shape)
                log.info("train step for batch shape %s (program %d)", shape, len(train_shapes))
            state, step_metrics = train_step(state, frozen, sharding.put_batch(host_batch, mesh))
            step += 1
            tokens_seen += int(host_batch["attention_mask"].sum()) * jax.process_count()
            if pending is not None:
                log_train(*read(pending))
            pending = (step, step_metrics)
            bar.update(1)
            do_eval = eval_enc is not None and t.eval_every and step % t.eval_every == 0 and step < num_steps
            do_save = step < num_steps and ((t.checkpoint_every and step % t.checkpoint_every == 0) or do_eval)
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
            _debug_signal(step)
            if stop.check(step, t.log_every) and step < num_steps:
                if pending is not None:
                    log_train(*read(pending))
                    pending = None
                if saved_step != step:
                    save(step)
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
        log.info("compiled %d train and %d eval programs (batch x length [x label slots]: %s)", len(train_shapes),
                 len(eval_shapes), sorted(train_shapes | eval_shapes))
        if primary:
            (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
        return summary
    finally:
        writer.close()
        bar.close()
        ckpt.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _fmt(m: dict) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items())


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, tuple | set):
        return list(x)
    raise TypeError(type(x))


# ============================================================================================ CLI


def _unknown_override(argv) -> str | None:
    """"--config.train.learnig_rate: unknown config key train.learnig_rate; did you mean train.learning_rate?"
    for the first override that names no key of the config file (None if all exist or the file fails)."""
    path = next((a.split("=", 1)[1] if "=" in a else argv[i + 1] for i, a in enumerate(argv)
                 if a == "--config" or a.startswith("--config=")), None)
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("_jsoft_config", path.split(":")[0])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
    except Exception:
        return None
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        dotted = arg[len("--config."):].split("=", 1)[0]
        section, parts = config, dotted.split(".")
        for i, part in enumerate(parts):
            if not hasattr(section, "keys") or part not in section.keys():
                where = ".".join(parts[:i])
                keys = list(section.keys()) if hasattr(section, "keys") else []
                close = difflib.get_close_matches(part, keys, n=1)
                hint = (f"; did you mean {'.'.join([*parts[:i], close[0]])}?" if close
                        else f"; {where or 'the config'} has keys {sorted(keys)}")
                return f"--config.{dotted}: unknown config key {dotted}{hint}"
            section = section[part]
    return None


def _own_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str | None, str, Any]]]:
    """Splits off the overrides ml_collections' flags cannot apply: keys of free-form sections
    (`--config.peft.prompt_tuning_init=TEXT`, `--config.data.eval.split=test`), which the config file may not
    have set, and `--config.KEY=None` (unsetting train.num_steps for train.num_epochs). Returns the other
    arguments and (free-form section or None, key, value), values read as Python literals (20, 0.5, True,
    None, [1, 2]) or else as strings."""
    import ast

    rest, own = [], []
    for arg in argv:
        name, eq, text = arg.partition("=")
        section = next((f for f in build.FREE_FORM if name.startswith(f"--config.{f}.")), None)
        if not eq or not name.startswith("--config.") or (section is None and text != "None"):
            rest.append(arg)
            continue
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        own.append((section, name[len(f"--config.{section}." if section else "--config."):], value))
    return rest, own


def _apply_own(config: ml_collections.ConfigDict, overrides: list[tuple[str | None, str, Any]]) -> None:
    with config.unlocked():
        for section, key, value in overrides:
            *parents, last = (section or key).split(".")
            parent = config
            for part in parents:
                if not isinstance(parent, ml_collections.ConfigDict) or part not in parent:
                    raise ValueError(f"--config.{section + '.' if section else ''}{key}: unknown config key "
                                     f"{section or key}")
                parent = parent[part]
            if section is None:  # KEY=None
                if last not in parent:
                    raise ValueError(f"--config.{key}: unknown config key {key}")
                parent[last] = None
                continue
            current = parent[last]
            entries = {} if current is None else current.to_dict()
            entries[key] = value
            parent[last] = ml_collections.ConfigDict(entries)


def main(argv=None) -> int:
    from absl import flags
    from ml_collections import config_flags

    argv, own = _own_overrides(list(sys.argv if argv is None else argv))
    fl = flags.FlagValues()
    config_flag = config_flags.DEFINE_config_file("config", None, "a config file with get_config()",
                                                  flag_values=fl, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "output directory; rerunning resumes from it", flag_values=fl)
    try:
        fl(argv)
        config = config_flag.value
        if config is not None:
            config.keys()  # a file that failed to load raises here, not at first use
            _apply_own(config, own)
    except Exception as e:  # absl wraps override errors; show what names the key
        cause = e.__cause__ or e.__context__ or e
        msg = _unknown_override(argv) or (str(e) if str(e).startswith("flag --") else
                                          str(cause).strip("\"'").replace("\\n", " "))
        print(f"config error: {msg or e}", file=sys.stderr)
        return 2
    if config is None or fl.workdir is None:
        print("usage: python -m jsoft.train --config configs/X.py --workdir DIR [--config.key=value ...]",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src", "datasets", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Orbax warns about every checkpoint saved between evaluations (they carry no metrics): expected here.
    logging.getLogger("absl").addFilter(lambda r: "did not provide metrics" not in r.getMessage())
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):  # several processes (hosts); TPU pods are detected by JAX
        n, i = os.environ.get("JSOFT_NUM_PROCESSES"), os.environ.get("JSOFT_PROCESS_ID")
        jax.distributed.initialize(num_processes=None if n is None else int(n),
                                   process_id=None if i is None else int(i))
    try:
        train(config, fl.workdir)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
