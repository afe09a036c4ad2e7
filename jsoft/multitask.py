"""Multi-task inference: many soft-prompt adapters on one frozen backbone, mixed in every batch.

Each adapter is reduced once, when it is loaded, to what the backbone consumes (DESIGN.md
section 1) and written into a fixed-size slot of a table that holds every registered adapter:

  * decoder-only models (GPT-2, Llama): every adapter becomes a key/value prefix
    (`PeftModel.prompt_cache`: an embedding prompt's keys and values do not depend on the input),
    left-padded to the longest in `prefix_kv [L, 2, S, V, G, K]` with `prefix_mask [S, V]`;
    batches are left-padded, so classification and generation share one layout;
  * encoders (BERT) and encoder-decoders (T5): embedding prompts go to `embeds [S, Ve, D]`
    (`n_embeds [S]` valid rows each) and are packed in front of each row's tokens, so a row's
    first virtual token sits at index 0 (BERT pools there) and its tokens follow without a gap;
    prefixes go to `prefix_kv` as above (T5: the decoder layers PEFT maps them to);
  * classification heads go to `head_kernel [S, D, C]` / `head_bias [S, C]`, C the most labels of any
    adapter: each adapter may classify into its own label set (`jsoft_labels.json` names them and says
    whether it is single-label, multi-label or regression), and its rows read their first C_a logits.

A batch passes one slot index per row as data, and batch sizes are bucketed to powers of two,
lengths to powers of two and 1.5 x powers of two (`length_bucket`), so the compiled programs are
few and fixed: loading an adapter or changing the mix of adapters in a batch never recompiles.
Each row gives what `PeftModel` gives for that row alone (greedy decoding: `PeftModel.generate`).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Sequence
from functools import partial, wraps
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jsoft import generate as gen
from jsoft import interop
from jsoft.models import from_pretrained
from jsoft.models.base import compute_dtype, token_ids
from jsoft.models.hub import DECODER_ONLY, resolve  # decoder-only: every adapter can be a key/value prefix
from jsoft.models.layers import KVCache
from jsoft.tuners.config import TASK_OF, PeftType, PromptLearningConfig
from jsoft.tuners.peft_model import Head, PeftModel, apply_head, token_embeds
from jsoft.tuners.prefix_tuning import to_prefix_kv

Array = jax.Array
MIN_LENGTH_BUCKET = 8
CLASSIFY_TASKS = ("seq_cls", "token_cls")
GENERATE_TASKS = ("causal_lm", "seq2seq_lm")


class UnknownAdapter(KeyError):
    def __init__(self, name: str, known: Sequence[str]):
        super().__init__(name)
        self.name, self.known = name, list(known)

    def __str__(self) -> str:
        return f"unknown adapter {self.name!r}; registered adapters: {self.known}"


class AdapterLoadError(RuntimeError):
    """The adapter's directory could not be loaded for this model (the message says why)."""


def bucket(n: int, top: int | None = None, bottom: int = 1) -> int:
    """The power of two >= n (at least `bottom`), or `top` when that is smaller."""
    b = max(bottom, 1 << max(n - 1, 0).bit_length())
    return b if top is None else min(b, top)


def length_bucket(n: int, top: int) -> int:
    """The padded length of a batch whose longest row has n tokens: the smallest power of two or
    1.5 x power of two >= n (at least MIN_LENGTH_BUCKET, at most `top`). Twice the programs of
    powers of two alone, and at most a third of a batch's slots are padding instead of half."""
    b = bucket(n, bottom=MIN_LENGTH_BUCKET)
    b = 3 * b // 4 if 3 * b // 4 >= max(n, MIN_LENGTH_BUCKET) else b
    return min(b, top)


@flax.struct.dataclass
class Tables:
    """Every registered adapter, one slot each (see the module docstring)."""

    prefix_kv: Array | None = None  # [N, 2, S, Vk, G, K], left-padded
    prefix_mask: Array | None = None  # [S, Vk] bool
    embeds: Array | None = None  # [S, Ve, D] f32, right-padded
    n_embeds: Array | None = None  # [S] int32
    head_kernel: Array | None = None  # [S, D, C] f32
    head_bias: Array | None = None  # [S, C] f32
    head_dense_kernel: Array | None = None  # [S, D, D] f32: RoBERTa's head has a dense layer before
    head_dense_bias: Array | None = None  # [S, D] f32


@dataclasses.dataclass(frozen=True)
class Sampling:
    """The sampling part of a generate call (rows that share it can share a batch; each row has
    its own seed)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # transformers' logits processors (jsoft.generate.constrain)
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class Labels:
    """An adapter's label names and what its outputs mean."""

    names: list[str]
    problem_type: str  # single_label_classification | multi_label_classification | regression

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """Logits `[..., C]` -> probabilities (softmax; sigmoids for multi-label), or the values (regression)."""
        logits = np.asarray(logits, np.float64)
        if self.problem_type == "regression":
            return logits.astype(np.float32)
        if self.problem_type == "multi_label_classification":
            return (1 / (1 + np.exp(-logits))).astype(np.float32)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)

    def predicted(self, scores: np.ndarray):
        """A row's answer: the top label's name; the names above 0.5 (multi-label); the value (regression)."""
        if self.problem_type == "regression":
            return float(scores[0]) if scores.size == 1 else [float(v) for v in scores]
        if self.problem_type == "multi_label_classification":
            return [self.names[i] for i in np.flatnonzero(scores > 0.5)]
        return self.names[int(np.argmax(scores))]


@dataclasses.dataclass
class _Registered:
    slot: int
    path: Path
    config: PromptLearningConfig | None
    error: str | None = None  # why it cannot be loaded (set at registration or on the first load)
    num_labels: int | None = None  # its head's (classification), from the weights file's header
    labels: Labels | None = None  # classification: set when it loads
    loaded: bool = False
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def _read_config(path: Path) -> tuple[PromptLearningConfig | None, str | None]:
    try:
        return PromptLearningConfig.from_pretrained(path), None
    except Exception as e:  # any unreadable config marks this adapter only
        return None, f"{type(e).__name__}: {e}"


class MultiTaskModel:
    """A frozen backbone, its tokenizer, and lazily loaded adapters from `adapters_dir/<name>/`.

    `classify` and `generate` take any number of rows and run them `max_batch_size` at a time (each compiled
    program's batch is a bucket up to that size)."""

    def __init__(self, model: str | Path, adapters_dir: str | Path, task: str | None = None,
                 dtype: str = "float32", max_batch_size: int = 16):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be >= 1")
        self.max_batch_size = max_batch_size
        adapters_dir = Path(adapters_dir)
        if not adapters_dir.is_dir():
            raise FileNotFoundError(f"adapters directory {str(adapters_dir)!r} does not exist")
        subdirs = sorted(p for p in adapters_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        self._adapters = {p.name: _Registered(i, p, *_read_config(p)) for i, p in enumerate(subdirs)}
        self.task = task or self._infer_task()
        model_dir = resolve(model)
        self.base = from_pretrained(model, task=self.task, dtype=dtype)
        self.pm = PeftModel(self.base, None)
        mc = self.config = self.base.config
        self.decoder_only = mc.model_type in DECODER_ONLY
        # decoder-only adapters are key/value prefixes, but where recurrent layers (linear attention) read the prompt
        # itself: then, as on encoders, embedding prompts sit in `embeds`
        self.prefix_prompts = self.decoder_only and not mc.keeps_recurrent_state
        self.tokenizer = _load_tokenizer(model_dir)
        self.eos_token_ids = token_ids(mc.eos_token_id)
        self.forced_token_ids = (token_ids(mc.forced_bos_token_id), token_ids(mc.forced_eos_token_id))
        # what PeftModel.generate emits after EOS; also fills pads (masked, but must index the vocabulary)
        pad = next((v for v in (mc.pad_token_id, *self.eos_token_ids[:1], self.tokenizer.pad_token_id)
                    if v is not None), 0)
        self.pad_token_id = pad if 0 <= pad < mc.vocab_size else 0
        hf = json.loads((model_dir / "config.json").read_text())
        self.max_positions = (mc.position_table_size or getattr(mc, "max_positions", None)
                              or _sane(self.tokenizer.model_max_length) or 512)
        self.id2label = {int(k): v for k, v in (hf.get("id2label") or {}).items()}
        self.head_name = getattr(self.base, "head_name", None)
        for a in self._adapters.values():
            a.num_labels = interop.head_num_labels(a.path, self.head_name) if self.head_name else None
        self._lock = threading.Lock()
        self._tables = self._empty_tables()
        self._graphdef, self._state = nnx.split(self.base)
        self._kv_of_prompt = jax.jit(partial(_kv_of_prompt, self._graphdef))
        self._traces = 0  # of _forward and _generate: a jitted function traces once per program it compiles
        self._forward = jax.jit(self._counted(partial(_forward, self._graphdef, self.decoder_only)))
        self._generate = jax.jit(self._counted(partial(_generate, self._graphdef, self.decoder_only)),
                                 static_argnames="cfg")
        self.stats = {"model_calls": 0, "rows": 0, "padded_rows": 0, "rows_per_call": {}}
        self.shapes: set[tuple] = set()

    # ------------------------------------------------------------------ registry

    def _infer_task(self) -> str:
        tasks = [TASK_OF[a.config.task_type] for a in self._adapters.values() if a.config and a.config.task_type]
        if not tasks:
            raise ValueError("cannot tell the model's task from the adapters (none has a readable task_type); "
                             f"pass task= (one of {[*GENERATE_TASKS, *CLASSIFY_TASKS]})")
        return max(set(tasks), key=tasks.count)

    @property
    def registered(self) -> list[str]:
        return list(self._adapters)

    @property
    def loaded(self) -> list[str]:
        return [n for n, a in self._adapters.items() if a.loaded]

    @property
    def failed(self) -> dict[str, str]:
        return {n: a.error for n, a in self._adapters.items() if a.error}

    def check_known(self, name: str) -> None:
        if name not in self._adapters:
            raise UnknownAdapter(name, self.registered)

    def virtual_tokens(self, name: str) -> int:
        self.check_known(name)
        config = self._adapters[name].config
        return config.num_virtual_tokens if config else 0

    def max_input_tokens(self, name: str, max_new_tokens: int = 0) -> int:
        """The longest tokenized input this adapter accepts (positions left for real tokens)."""
        new = max_new_tokens if self.task == "causal_lm" else 0
        return self.max_positions - self.virtual_tokens(name) - new

    def ensure_loaded(self, name: str) -> None:
        """Load the adapter into its slot on first use (thread-safe, once; a failure is kept)."""
        self.check_known(name)
        a = self._adapters[name]
        if a.loaded:
            return
        with a.lock:
            if not a.loaded and a.error is None:
                try:
                    self._load(name, a)
                    a.loaded = True
                except Exception as e:  # a bad adapter must not take the others down
                    a.error = f"{type(e).__name__}: {e}"
            if a.error is not None:
                raise AdapterLoadError(f"adapter {name!r} ({a.path}) could not be loaded: {a.error}")

    def _empty_tables(self) -> Tables:
        mc, S = self.config, max(len(self._adapters), 1)
        configs = [a.config for a in self._adapters.values() if a.config is not None]
        is_prefix = [c.peft_type == PeftType.PREFIX_TUNING for c in configs]
        dtype = compute_dtype(self.base)
        kw = {}
        Vk = max((c.num_virtual_tokens for c, p in zip(configs, is_prefix) if p or self.prefix_prompts), default=0)
        Ve = 0 if self.prefix_prompts else max((c.num_virtual_tokens for c, p in zip(configs, is_prefix) if not p),
                                               default=0)
        if Vk:
            N = mc.num_decoder_layers if mc.is_encoder_decoder else mc.num_layers
            kw["prefix_kv"] = jnp.zeros((N, 2, S, Vk, *mc.cache_layout), dtype)
            kw["prefix_mask"] = jnp.zeros((S, Vk), bool)
        if Ve:
            kw["embeds"] = jnp.zeros((S, Ve, self.base.word_embeddings.features), jnp.float32)
            kw["n_embeds"] = jnp.zeros((S,), jnp.int32)
        if self.head_name:
            kernel, bias, dense_kernel, dense_bias = Head.copy_of(getattr(self.base, self.head_name)).arrays()
            D, C = kernel.shape
            C = max([C] + [a.num_labels for a in self._adapters.values() if a.num_labels])
            kw["head_kernel"] = jnp.zeros((S, D, C), jnp.float32)
            if bias is not None:
                kw["head_bias"] = jnp.zeros((S, C), jnp.float32)
            if dense_kernel is not None:
                kw["head_dense_kernel"] = jnp.zeros((S, *dense_kernel.shape), jnp.float32)
                kw["head_dense_bias"] = None if dense_bias is None else jnp.zeros((S, *dense_bias.shape), jnp.float32)
        return Tables(**kw)

    def _load(self, name: str, a: _Registered) -> None:
        config = a.config
        if getattr(config, "template", None):
            raise ValueError("P-Tuning templates (virtual tokens inside the input) are not supported by the server")
        if getattr(config, "prefix_targets", "decoder") != "decoder":
            raise ValueError("prefix_targets='all' adapters are not supported by the server")
        with self._lock:  # PeftModel.adapters is not safe to grow from two threads
            if name not in self.pm.adapters:
                self.pm.load_adapter(a.path, name, any_num_labels=True)
        adapter = self.pm.adapters[name]
        V = adapter.config.num_virtual_tokens
        if V != config.num_virtual_tokens:
            raise ValueError(f"num_virtual_tokens changed on disk since the server started ({config.num_virtual_tokens}"
                             f" -> {V}); restart the server")
        updates: dict[str, Array] = {}
        if self.prefix_prompts:
            updates["prefix"] = _prompt_kv(self.pm, name, self._tables.prefix_kv.shape[3],
                                           partial(self._kv_of_prompt, self._state))
        else:
            p = self.pm._prompts((name,), None, 1, None)
            if p.embeds is not None:
                updates["embeds"] = p.embeds[0, -V:]
            if p.prefix is not None:
                updates["prefix"] = self.pm._split_prefix(p.prefix, adapter.config)["prefix_kv"][:, :, 0]
        head = adapter.head
        with self._lock:
            t = self._tables
            s = a.slot
            if "prefix" in updates:
                Vk = t.prefix_kv.shape[3]
                kv = jnp.zeros(t.prefix_kv.shape[:2] + t.prefix_kv.shape[3:], t.prefix_kv.dtype)
                kv = kv.at[:, :, Vk - V:].set(updates["prefix"].astype(kv.dtype))
                t = t.replace(prefix_kv=t.prefix_kv.at[:, :, s].set(kv),
                              prefix_mask=t.prefix_mask.at[s].set(jnp.arange(Vk) >= Vk - V))
            if "embeds" in updates:
                t = t.replace(embeds=t.embeds.at[s].set(0).at[s, :V].set(updates["embeds"].astype(jnp.float32)),
                              n_embeds=t.n_embeds.at[s].set(V))
            if head is not None:
                C = head.num_labels
                if C > t.head_kernel.shape[2]:
                    raise ValueError(f"its head has {C} labels, more than the {t.head_kernel.shape[2]} the server "
                                     "sized its tables for at start (adapter weights in a .bin file?); restart it")
                t = t.replace(head_kernel=t.head_kernel.at[s].set(0).at[s, :, :C].set(head.kernel[...]))
                if t.head_bias is not None:
                    t = t.replace(head_bias=t.head_bias.at[s].set(0).at[s, :C].set(head.bias[...]))
                if t.head_dense_kernel is not None:
                    t = t.replace(head_dense_kernel=t.head_dense_kernel.at[s].set(head.dense_kernel[...]))
                if t.head_dense_bias is not None:
                    t = t.replace(head_dense_bias=t.head_dense_bias.at[s].set(head.dense_bias[...]))
                a.num_labels = C
                a.labels = self._labels_of(a)
            self._tables = t

    # ------------------------------------------------------------------ batches

    def _slots(self, names: Sequence[str]) -> list[int]:
        for n in dict.fromkeys(names):  # the server loads each before batching; direct calls load here
            self.ensure_loaded(n)
        return [self._adapters[n].slot for n in names]

    @staticmethod
    def _rows_of(names: Sequence[str], ids: Sequence[Sequence[int]]) -> tuple[list[str], list[Sequence[int]]]:
        names, ids = list(names), list(ids)
        if len(names) != len(ids):
            raise ValueError(f"{len(ids)} rows of ids need one adapter name each, not {len(names)}")
        return names, ids

    def _chunks(self, n: int) -> list[slice]:
        """Rows 0..n-1 in calls of at most max_batch_size rows."""
        return [slice(i, i + self.max_batch_size) for i in range(0, n, self.max_batch_size)]

    def _batch(self, names: Sequence[str], ids: Sequence[Sequence[int]], left: bool):
        """Bucketed arrays: ids/mask [Bb, Tb] padded on the left or right, slots [Bb]; rows past
        the real ones repeat row 0 (they are computed and dropped)."""
        if not ids or any(len(x) == 0 for x in ids):
            raise ValueError("every row needs at least one token")
        B = len(ids)
        Bb = bucket(B, self.max_batch_size)
        Tb = length_bucket(max(map(len, ids)), self.max_positions)
        arr = np.full((Bb, Tb), self.pad_token_id, np.int32)
        mask = np.zeros((Bb, Tb), np.int32)
        slots = self._slots(names)
        slots = np.asarray(slots + [slots[0]] * (Bb - B), np.int32)
        for b in range(Bb):
            x = ids[b] if b < B else ids[0]
            if left:
                arr[b, Tb - len(x):], mask[b, Tb - len(x):] = x, 1
            else:
                arr[b, :len(x)], mask[b, :len(x)] = x, 1
        with self._lock:
            self.stats["model_calls"] += 1
            self.stats["rows"] += B
            self.stats["padded_rows"] += Bb
            hist = self.stats["rows_per_call"]
            hist[B] = hist.get(B, 0) + 1
        return arr, mask, slots

    def labels(self, name: str) -> Labels:
        """How to read a loaded classification adapter's outputs."""
        return self._adapters[name].labels

    def _labels_of(self, a: _Registered) -> Labels:
        """The adapter's `jsoft_labels.json`, else the base model's label names when the label counts agree, and
        regression for one output."""
        saved = interop.read_labels(a.path)
        n = a.num_labels
        id2label = saved.get("id2label") or (self.id2label if len(self.id2label) == n else {})
        problem = saved.get("problem_type") or ("regression" if n == 1 and self.task == "seq_cls"
                                                else "single_label_classification")
        return Labels([id2label.get(i, str(i)) for i in range(n)], problem)

    def classify(self, names: Sequence[str], ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Per row, over the adapter's own labels: class probabilities `[C]` (seq_cls: softmax; sigmoids for
        multi-label; the predicted value `[1]` for regression) or `[tokens, C]` (token_cls)."""
        if self.task not in CLASSIFY_TASKS:
            raise ValueError(f"classify needs a seq_cls or token_cls model, not task={self.task!r}")
        names, ids = self._rows_of(names, ids)
        if len(ids) > self.max_batch_size:
            return [r for s in self._chunks(len(ids)) for r in self.classify(names[s], ids[s])]
        arr, mask, slots = self._batch(names, ids, left=self.decoder_only)
        self.shapes.add(("classify", *arr.shape))
        logits = np.asarray(self._forward(self._state, self._tables, arr, mask, slots))
        T = arr.shape[1]
        out = []
        for b, (name, x) in enumerate(zip(names, ids)):
            row = logits[b] if self.task == "seq_cls" else logits[b, T - len(x):] if self.decoder_only \
                else logits[b, :len(x)]
            a = self._adapters[name]
            out.append(a.labels.scores(row[..., :a.num_labels]))
        return out

    def generate(self, names: Sequence[str], ids: Sequence[Sequence[int]], max_new_tokens: Sequence[int],
                 sampling: Sampling = Sampling(), seeds: Sequence[tuple[int, int]] | None = None) -> list[np.ndarray]:
        """New tokens per row (`max_new_tokens[b]` of them; `pad_token_id` after an EOS). When
        sampling, row b draws from `seeds[b] = (seed, index)` (`jsoft.generate.row_keys`; default
        (0, b)), so what it draws does not depend on the rows batched with it."""
        if self.task not in GENERATE_TASKS:
            raise ValueError(f"generate needs a causal_lm or seq2seq_lm model, not task={self.task!r}")
        names, ids = self._rows_of(names, ids)
        max_new_tokens = list(max_new_tokens)
        seeds = [(0, b) for b in range(len(ids))] if seeds is None else [tuple(x) for x in seeds]
        if len(max_new_tokens) != len(ids) or len(seeds) != len(ids):
            raise ValueError(f"{len(ids)} rows need as many max_new_tokens and seeds, not {len(max_new_tokens)} "
                             f"and {len(seeds)}")
        if len(ids) > self.max_batch_size:  # in chunks: each row's tokens do not depend on the rows beside it
            return [r for s in self._chunks(len(ids))
                    for r in self.generate(names[s], ids[s], max_new_tokens[s], sampling, seeds[s])]
        arr, mask, slots = self._batch(names, ids, left=self.decoder_only)
        N = bucket(max(max_new_tokens))
        if self.task == "causal_lm":  # stay inside the position table for every row's real tokens
            room = min(self.max_positions - self.virtual_tokens(n) - len(x) for n, x in zip(names, ids))
            N = N if N <= room else max(max_new_tokens)
        if not 0 < sampling.top_k < self.config.vocab_size:  # top_k >= vocabulary filters nothing
            sampling = dataclasses.replace(sampling, top_k=0)
        last = [n - 1 for n in max_new_tokens] + [N - 1] * (arr.shape[0] - len(ids))  # each row's forced EOS
        cfg, knobs = _decoding(N, sampling, self.eos_token_ids, self.pad_token_id, self.forced_token_ids, last)
        self.shapes.add(("generate", *arr.shape, cfg))
        seeds = np.asarray(seeds + seeds[:1] * (arr.shape[0] - len(seeds)), np.int64)  # like _batch's extra rows
        keys = gen.row_keys(seeds[:, 0], seeds[:, 1])
        new = np.asarray(self._generate(self._state, self._tables, arr, mask, slots, keys, knobs, cfg=cfg))
        return [new[b, :n] for b, n in enumerate(max_new_tokens)]

    def compiled_programs(self) -> int:
        """The programs compiled for forward passes and generation: their traces (jit's own cache sizes undercount,
        as its cache is one process-wide LRU whose entries other functions evict)."""
        return self._traces

    def _counted(self, fn):
        """fn, counting its calls (under jit: its traces) in `_traces`."""
        @wraps(fn)
        def counted(*args, **kwargs):
            self._traces += 1
            return fn(*args, **kwargs)
        return counted


# --------------------------------------------------------------------------- compiled functions


def _rows(t: Tables, slots: Array) -> dict:
    """The backbone's prefix arguments for each row's adapter."""
    if t.prefix_kv is None:
        return {}
    return {"prefix_kv": jnp.take(t.prefix_kv, slots, axis=2, mode="clip"), "prefix_mask": t.prefix_mask[slots]}


def _prompt_block(base, t: Tables, ids: Array, mask: Array, slots: Array) -> tuple[Array, Array]:
    """Each row's embedding prompt (right-padded) then its tokens' embeddings, `[B, Ve + T, D]`, and their mask."""
    n = t.n_embeds[slots]
    x = token_embeds(base, ids, n)
    prompts = t.embeds[slots].astype(x.dtype)
    return (jnp.concatenate([prompts, x], 1),
            jnp.concatenate([jnp.arange(prompts.shape[1])[None] < n[:, None], mask.astype(bool)], 1))


def _packed(base, t: Tables, ids: Array, mask: Array, slots: Array):
    """Right-padded tokens with each row's embedding prompt packed in front:
    `[p_1 .. p_n, x_1 .. x_m, pad ..]`, width Ve + T. Returns (embeds, mask, n_embeds)."""
    n = jnp.zeros(ids.shape[:1], jnp.int32) if t.embeds is None else t.n_embeds[slots]
    if t.embeds is None:
        return token_embeds(base, ids, n), mask, n
    B, T = ids.shape
    Ve = t.embeds.shape[1]
    both, both_mask = _prompt_block(base, t, ids, mask, slots)
    j = jnp.arange(Ve + T)[None]
    src = jnp.where(j < n[:, None], j, Ve + j - n[:, None])
    valid = src < Ve + T
    src = jnp.minimum(src, Ve + T - 1)
    embeds = jnp.take_along_axis(both, src[..., None], 1)
    return embeds, jnp.take_along_axis(both_mask, src, 1) & valid, n


def _head(t: Tables, slots: Array, base):
    """Each row's adapter head (`peft_model.apply_head`, with the activation of the base model's head), or None
    without heads."""
    if t.head_kernel is None:
        return None
    arrays = tuple(None if a is None else a[slots] for a in (t.head_kernel, t.head_bias, t.head_dense_kernel,
                                                              t.head_dense_bias))
    act = getattr(getattr(base, base.head_name), "activation", "tanh")
    return lambda x, drop=None, rate=0.0: apply_head(x, arrays, drop, rate, per_row=True, activation=act)


def _left_positions(mask: Array, n_prefix: Array) -> Array:
    """Left padding: a row's real tokens take positions n_prefix, n_prefix + 1, ...; pads clip to 0."""
    T = mask.shape[1]
    start = n_prefix - (T - mask.sum(-1, dtype=jnp.int32))
    return jnp.maximum(start[:, None] + jnp.arange(T, dtype=jnp.int32)[None], 0)


def _forward(graphdef, decoder_only: bool, state, t: Tables, ids, mask, slots) -> Array:
    base = nnx.merge(graphdef, state)
    prefix = _rows(t, slots)
    n_prefix = prefix["prefix_mask"].sum(-1, dtype=jnp.int32) if prefix else jnp.zeros(ids.shape[:1], jnp.int32)
    if decoder_only and t.embeds is not None:  # recurrent layers: [pads, prompt, tokens], as generation reads them
        embeds, full_mask = gen.pads_first(*_prompt_block(base, t, ids, mask, slots))
        positions = jnp.maximum(jnp.cumsum(full_mask, axis=1, dtype=jnp.int32) - 1, 0)
        out = base(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions, head=_head(t, slots, base))
        logits = out.logits.astype(jnp.float32)
        return logits if logits.ndim == 2 else logits[:, -ids.shape[1]:]  # token_cls: the tokens' slots
    if decoder_only:
        out = base(input_ids=ids, attention_mask=mask, position_ids=_left_positions(mask, n_prefix),
                   head=_head(t, slots, base), **prefix)
        return out.logits.astype(jnp.float32)
    embeds, full_mask, n = _packed(base, t, ids, mask, slots)
    W = embeds.shape[1]
    positions = jnp.arange(W, dtype=jnp.int32)[None] + n_prefix[:, None]
    if base.config.position_table_size is not None:  # learned positions (BERT, RoBERTa): pads clip into the table
        positions = jnp.minimum(positions, base.config.position_table_size - 1)
    out = base(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions, head=_head(t, slots, base),
               **prefix)
    logits = out.logits.astype(jnp.float32)
    if logits.ndim == 3:  # token_cls: each row's tokens start after its n virtual tokens
        idx = n[:, None] + jnp.arange(ids.shape[1])[None]
        logits = jnp.take_along_axis(logits, jnp.minimum(idx, W - 1)[..., None], 1)
    return logits


def _decoding(N: int, s: Sampling, eos: tuple[int, ...], pad: int, forced: tuple[tuple[int, ...], ...],
              forced_eos_step: list[int]) -> tuple[gen.GenerationConfig, dict]:
    """jsoft.generate's static config and dynamic knobs for one batch; `forced`: the model's forced BOS and EOS
    ids, the EOS forced at each row's `forced_eos_step` (its last new token)."""
    cfg = gen.GenerationConfig(max_new_tokens=N, do_sample=s.do_sample, top_k=s.top_k if s.do_sample else 0,
                               top_p=s.do_sample and s.top_p < 1.0, num_eos=len(eos),
                               repetition_penalty=s.repetition_penalty != 1.0,
                               no_repeat_ngram_size=s.no_repeat_ngram_size,
                               min_new_tokens=s.min_new_tokens if eos else 0, forced_bos=bool(forced[0]),
                               forced_eos=bool(forced[1]))
    return cfg, gen.knobs(temperature=s.temperature, top_p=s.top_p, eos_token_ids=eos, pad_token_id=pad,
                          repetition_penalty=s.repetition_penalty, forced_bos_token_ids=forced[0],
                          forced_eos_token_ids=forced[1], forced_eos_step=forced_eos_step)


def _generate(graphdef, decoder_only: bool, state, t: Tables, ids, mask, slots, keys, knobs, cfg) -> Array:
    base = nnx.merge(graphdef, state)
    if decoder_only and t.embeds is not None:  # recurrent layers read the prompt in the first pass
        inputs = {"input_ids": ids, "attention_mask": mask, "prompt_embeds": t.embeds[slots],
                  "prompt_mask": (jnp.arange(t.embeds.shape[1])[None] < t.n_embeds[slots][:, None]).astype(jnp.int32)}
    elif decoder_only:
        inputs = {"input_ids": ids, "attention_mask": mask, **_rows(t, slots)}
    else:
        embeds, full_mask, _ = _packed(base, t, ids, mask, slots)
        inputs = {"inputs_embeds": embeds, "attention_mask": full_mask.astype(jnp.int32), **_rows(t, slots)}
    return gen.decode(base, inputs, keys, knobs, cfg)[0]


# --------------------------------------------------------------------------- helpers


def _prompt_kv(pm: PeftModel, name: str, width: int, kv_fn) -> Array:
    """A decoder-only adapter as a key/value prefix `[L, 2, V, G, K]`, what `PeftModel.prompt_cache`
    gives (for causal LMs only; the prompt's keys and values do not depend on the head either).
    The prompt is right-padded to the table's `width`, so one compiled `kv_fn` serves every V:
    under causal attention the pads after it change nothing."""
    a, mc = pm.adapters[name], pm.base_model.config
    V = a.config.num_virtual_tokens
    if a.is_prefix:
        return to_prefix_kv(a.prompt(), mc.num_layers, mc.num_kv_heads, mc.head_dim)
    prompt = jnp.zeros((1, width, pm.base_model.word_embeddings.features), jnp.float32).at[0, :V].set(a.prompt()[:V])
    return kv_fn(prompt)[:, :, :V]


def _kv_of_prompt(graphdef, state, prompt_1xVxD: Array) -> Array:
    base = nnx.merge(graphdef, state)
    mc, V = base.config, prompt_1xVxD.shape[1]
    dtype = compute_dtype(base)
    cache = KVCache.zeros(mc.num_layers, 1, V, *mc.cache_layout, dtype, values=mc.cache_values)
    out = base(inputs_embeds=prompt_1xVxD.astype(dtype), position_ids=jnp.arange(V)[None], cache=cache)
    return out.cache.as_prefix()[:, :, 0]


def _load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        raise ValueError(f"no usable tokenizer in {model_dir} ({type(e).__name__}: {e}); the server needs the "
                         "base model's tokenizer saved next to it (tokenizer.save_pretrained)") from None


def _sane(n) -> int | None:
    return int(n) if isinstance(n, int) and 0 < n < 1_000_000 else None
