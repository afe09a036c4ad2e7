"""PeftModel: a frozen backbone, one or more soft-prompt adapters, and their task heads.

Every method reduces to (DESIGN.md section 1) extra input embeddings and/or per-layer key/value
prefixes. A batch may mix adapters (`adapter_names`, one per row): each adapter's prompt is
computed once, the prompts are stacked (left-padded to the longest, with a mask) and gathered per row;
positions are passed explicitly so each row sees exactly what it would see alone. Each row's
prompt ends where its tokens begin (T5's relative position bias sees slot distances), and a
classifier is told which slot each row pools (`cls_index`).
"""

from __future__ import annotations

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jsoft.models import layers
from jsoft.models.base import check_position_count, compute_dtype
from jsoft.models.heads import last_token_index
from jsoft.models.layers import KVCache, ModelOutput
from jsoft.tuners import losses
from jsoft.tuners.config import (
    TASK_OF,
    PeftType,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptLearningConfig,
    PromptTuningConfig,
    TaskType,
)
from jsoft.tuners.p_tuning import PromptEncoder
from jsoft.tuners.prefix_tuning import PrefixEncoder, peft_decoder_layers, to_prefix_kv
from jsoft.tuners.prompt_tuning import PromptEmbedding
from jsoft.tuners.variables import Trainable, trainable


class Head(nnx.Module):
    """The adapter's trainable copy of the backbone's classification head (PEFT's `modules_to_save`): a
    Linear, or a dense layer and an activation before the output projection (RoBERTa's tanh, ELECTRA's GELU,
    DistilBERT's ReLU). The backbone's own head stays frozen."""

    def __init__(self, kernel, bias=None, dense_kernel=None, dense_bias=None, activation: str = "tanh",
                 peft_names: tuple[str, str] | None = None):
        """`kernel [D, C]`, `bias [C]`; `dense_kernel [D, D]`, `dense_bias [D]` (each may be None); `activation`
        between the two layers; `peft_names`: the two layers' transformers names (default: RoBERTa's)."""
        as_var = lambda x: nnx.data(None) if x is None else trainable(jnp.asarray(x, jnp.float32))
        self.kernel, self.bias = as_var(kernel), as_var(bias)
        self.dense_kernel, self.dense_bias = as_var(dense_kernel), as_var(dense_bias)
        self.activation, self.peft_names = activation, peft_names

    @classmethod
    def copy_of(cls, base_head: nnx.Module) -> Head:
        value = lambda layer, name: None if getattr(layer, name, None) is None else getattr(layer, name)[...]
        if hasattr(base_head, "out_proj"):  # dense -> activation -> out_proj
            d, o = base_head.dense, base_head.out_proj
            return cls(o.kernel[...], value(o, "bias"), d.kernel[...], value(d, "bias"), base_head.activation,
                       base_head.peft_names)
        return cls(base_head.kernel[...], value(base_head, "bias"))

    def like(self, arrays) -> Head:
        """A head of this one's kind holding `arrays` (as `arrays()` gives them)."""
        return Head(*arrays, activation=self.activation, peft_names=self.peft_names)

    @property
    def num_labels(self) -> int:
        return self.kernel.shape[1]

    def arrays(self) -> tuple:
        """(kernel, bias, dense_kernel, dense_bias), None where absent."""
        return tuple(None if v is None else v[...] for v in (self.kernel, self.bias, self.dense_kernel,
                                                             self.dense_bias))

    def __call__(self, x: jax.Array, drop=None, rate: float = 0.0) -> jax.Array:
        return apply_head(x, self.arrays(), drop, rate, activation=self.activation)


def apply_head(x: jax.Array, arrays: tuple, drop=None, rate: float = 0.0, per_row: bool = False,
               activation: str = "tanh") -> jax.Array:
    """A head's `arrays` (`Head.arrays`) on `x [B, ..., D]` in fp32; `per_row`: each array has a leading
    batch axis (one head per row: a mixed-adapter batch). `drop` applies between the two layers."""
    kernel, bias, dense_kernel, dense_bias = arrays
    x = x.astype(jnp.float32)
    if dense_kernel is not None:
        x = layers.activation(activation)(_affine(x, dense_kernel, dense_bias, per_row))
        x = x if drop is None else drop(x, rate)
    return _affine(x, kernel, bias, per_row)


def _affine(x, kernel, bias, per_row: bool):
    y = jnp.einsum("b...d,bdc->b...c", x, kernel) if per_row else x @ kernel
    if bias is None:
        return y
    return y + (bias.reshape(bias.shape[:1] + (1,) * (y.ndim - 2) + bias.shape[1:]) if per_row else bias)


def prefix_layer_count(config: PrefixTuningConfig, mc) -> int:
    """How many attention layers the stored prefix table covers."""
    if mc.is_encoder_decoder and config.prefix_targets == "all":
        return mc.num_layers + 2 * mc.num_decoder_layers
    return config.num_layers


def prepare_config(config: PromptLearningConfig, model: nnx.Module) -> PromptLearningConfig:
    """Fill what PEFT derives from the base model; check what an adapter file already states."""
    config = copy.deepcopy(config)
    mc = model.config
    task = TASK_OF.get(config.task_type) if config.task_type else model.task
    if config.task_type is None:
        config.task_type = next(t for t, v in TASK_OF.items() if v == model.task) if model.task else None
    if task != model.task:
        raise ValueError(f"task_type={config.task_type.value!r} needs a model loaded with task={task!r}, "
                         f"but this {mc.model_type} model has task={model.task!r}")
    if task is None:
        raise ValueError("the model has no task head; load it with task=... "
                         f"(one of {[v for v in TASK_OF.values()]})")
    if config.peft_type == PeftType.PREFIX_TUNING and mc.no_prefix_reason:
        raise ValueError(f"peft_type=PREFIX_TUNING does not fit this model: {mc.no_prefix_reason}; use PROMPT_TUNING "
                         "or P_TUNING, whose virtual tokens are input embeddings")
    # A prefix holds keys and values, so it is as wide as they are where that differs from the hidden size:
    # grouped-query attention and Llama's `head_dim` (as PEFT derives it), and T5 with d_kv * num_heads !=
    # d_model (T5-3B / 11B; PEFT derives d_model there and fails, but runs the adapter jsoft saves)
    kv_prefix = config.peft_type == PeftType.PREFIX_TUNING and (mc.kv_width != mc.hidden_size
                                                                or mc.num_kv_heads != mc.num_heads)
    # An embedding prompt is as wide as the word embeddings, which OPT-350m projects up to its hidden size (PEFT
    # derives the hidden size there and fails; it runs the adapter jsoft saves)
    embedding_prompt = config.peft_type != PeftType.PREFIX_TUNING
    derived = {
        "num_layers": mc.num_layers,
        "token_dim": mc.kv_width if kv_prefix else model.word_embeddings.features if embedding_prompt
        else mc.hidden_size,
        "num_attention_heads": mc.num_kv_heads if kv_prefix else mc.num_heads,
        "num_transformer_submodules": 2 if config.task_type == TaskType.SEQ_2_SEQ_LM else 1,
    }
    for field, value in derived.items():
        given = getattr(config, field)
        if given is None:
            setattr(config, field, value)
        elif given != value:
            raise ValueError(f"adapter was made for another base model: {field}={given} in the adapter config "
                             f"but {value} for this {mc.model_type} model ({mc.name_or_path or 'unnamed'})")
    if config.peft_type == PeftType.PREFIX_TUNING and config.token_dim != mc.kv_width:
        raise ValueError(f"prefix tuning needs token_dim == key/value width; this model has attention width "
                         f"{mc.kv_width} but token_dim={config.token_dim}")
    if getattr(config, "encoder_hidden_size", "absent") is None:
        config.encoder_hidden_size = config.token_dim
    if getattr(config, "prefix_targets", "decoder") == "all" and not mc.is_encoder_decoder:
        raise ValueError("prefix_targets='all' is for encoder-decoder models; use 'decoder' (the default)")
    if config.peft_type == PeftType.PREFIX_TUNING and mc.is_encoder_decoder and config.prefix_targets == "decoder":
        peft_decoder_layers(config.num_layers, mc.num_decoder_layers)  # refuses a decoder deeper than the encoder
    if isinstance(config, PromptEncoderConfig) and config.template and mc.is_encoder_decoder:
        raise ValueError("PromptEncoderConfig.template is supported for encoder-only and decoder-only models")
    head = getattr(model, "head_name", None)
    if head and not config.modules_to_save:
        config.modules_to_save = [head]
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = mc.name_or_path or None
    return config


class Adapter(nnx.Module):
    """One named adapter: its prompt module and, for classification, its head."""

    def __init__(self, config: PromptLearningConfig, model: nnx.Module, key: jax.Array, tokenizer=None):
        self.config = config
        k_prompt, _ = jax.random.split(key)
        if isinstance(config, PromptTuningConfig):
            self.prompt = PromptEmbedding(config, model.word_embeddings, k_prompt, tokenizer)
        elif isinstance(config, PromptEncoderConfig):
            self.prompt = PromptEncoder(config, k_prompt)
        else:
            self.prompt = PrefixEncoder(config, prefix_layer_count(config, model.config), k_prompt)
        head = getattr(model, "head_name", None)
        self.head = Head.copy_of(getattr(model, head)) if head else None

    @property
    def is_prefix(self) -> bool:
        return self.config.peft_type == PeftType.PREFIX_TUNING


@dataclasses.dataclass
class _Prompts:
    """Per-row prompt pieces of one batch (any of them may be absent)."""

    embeds: jax.Array | None = None  # [B, Ve, D]
    embeds_mask: jax.Array | None = None  # [B, Ve]
    prefix: jax.Array | None = None  # [N, 2, B, Vk, G, K] over all prefixed layers
    prefix_mask: jax.Array | None = None  # [B, Vk]


def _left_pad(x: jax.Array, n: int, axis: int) -> jax.Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (n - x.shape[axis], 0)
    return jnp.pad(x, pad)


def _left_valid(lengths: list[int], n: int) -> jax.Array:
    """[len(lengths), n] mask of the slots `_left_pad` filled with values."""
    return jnp.asarray(np.arange(n)[None] >= n - np.asarray(lengths)[:, None])


def _rows(stack: jax.Array, rows: jax.Array | None, B: int, axis: int = 0) -> jax.Array:
    """Per-row gather of stacked per-adapter values (broadcast when there is one adapter)."""
    if rows is None:
        x = jnp.squeeze(stack, axis)
        return jnp.broadcast_to(jnp.expand_dims(x, axis), x.shape[:axis] + (B,) + x.shape[axis:])
    return jnp.take(stack, rows, axis=axis, mode="clip")  # rows are valid: no fill-value select


class PeftModel(nnx.Module):
    """Named like PEFT: `get_peft_model(model, config)`, `print_trainable_parameters()`,
    `save_pretrained(dir)`, `PeftModel.from_pretrained(model, dir)`, `load_adapter`,
    `set_adapter`, and `adapter_names=[...]` (one per row) on `__call__`."""

    def __init__(self, model: nnx.Module, peft_config: PromptLearningConfig | None, adapter_name: str = "default",
                 *, seed: int = 0, tokenizer=None):
        self.base_model = model
        self.adapters = nnx.Dict()
        self.active_adapter = adapter_name
        if peft_config is not None:
            self.add_adapter(adapter_name, peft_config, seed=seed, tokenizer=tokenizer)

    # ------------------------------------------------------------------ files (jsoft.interop)

    def save_pretrained(self, save_directory, adapter_name: str | None = None, format: str | None = None) -> str:
        """Write the adapter as PEFT does (or in jsoft's format for jsoft-only forms, or with
        format="jsoft" to keep encoders for further training). Returns the format written."""
        from jsoft import interop

        return interop.save_adapter(self, save_directory, adapter_name, format)

    @classmethod
    def from_pretrained(cls, model: nnx.Module, model_id, adapter_name: str = "default") -> PeftModel:
        """Load an adapter directory written by PEFT or jsoft onto `model`."""
        pm = cls(model, None, adapter_name)
        pm.load_adapter(model_id, adapter_name)
        return pm

    def load_adapter(self, model_id, adapter_name: str = "default", *, any_num_labels: bool = False) -> None:
        """Load another adapter next to the loaded ones (it is complete before it is attached).
        `any_num_labels`: accept a classification head trained for another number of labels than the base
        model's (PEFT refuses it); such an adapter batches only with adapters of its own label count."""
        from jsoft import interop

        if adapter_name in self.adapters:
            raise ValueError(f"adapter_name={adapter_name!r} is already loaded; loaded: {list(self.adapters)}")
        self.adapters[adapter_name] = interop.build_adapter(self, model_id, any_num_labels=any_num_labels)
        if self.active_adapter not in self.adapters:
            self.active_adapter = adapter_name

    # ------------------------------------------------------------------ adapters

    @property
    def peft_config(self) -> dict[str, PromptLearningConfig]:
        return {name: a.config for name, a in self.adapters.items()}

    @property
    def active_peft_config(self) -> PromptLearningConfig:
        return self.adapters[self.active_adapter].config

    def add_adapter(self, adapter_name: str, peft_config: PromptLearningConfig, *, seed: int = 0,
                    tokenizer=None) -> None:
        if adapter_name in self.adapters:
            raise ValueError(f"adapter_name={adapter_name!r} is already loaded; loaded: {list(self.adapters)}")
        config = prepare_config(peft_config, self.base_model)
        self.adapters[adapter_name] = Adapter(config, self.base_model, jax.random.key(seed), tokenizer)

    def set_adapter(self, adapter_name: str) -> None:
        self._check_names([adapter_name])
        self.active_adapter = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        self._check_names([adapter_name])
        del self.adapters[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = next(iter(self.adapters), None)

    def _check_names(self, names) -> None:
        unknown = sorted({n for n in names if n not in self.adapters})
        if unknown:
            raise ValueError(f"unknown adapter(s) {unknown}; loaded adapters: {list(self.adapters)}")

    def fold(self) -> None:
        """Evaluate every prompt encoder (LSTM/MLP, prefix MLP) once and keep only its output:
        inference then carries no encoder and gives identical outputs."""
        for a in self.adapters.values():
            a.prompt.fold()
            a.config = dataclasses.replace(a.config, inference_mode=True)

    # ------------------------------------------------------------------ parameters

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) counted as PEFT counts them (its head copy included in `all`, a multimodal
        checkpoint's other towers, which jsoft does not run, and tables it computes, Marian's sinusoids)."""
        count = lambda state: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
        trainable_n = count(nnx.state(self, Trainable))
        outside = getattr(self.base_model, "outside_params", 0) + getattr(self.base_model, "computed_params", 0)
        return trainable_n, count(nnx.state(self, nnx.Param)) + outside

    def print_trainable_parameters(self) -> None:
        t, n = self.get_nb_trainable_parameters()
        print(f"trainable params: {t:,d} || all params: {n:,d} || trainable%: {100 * t / n:.4f}")

    # ------------------------------------------------------------------ forward

    def _prompts(self, names: tuple[str, ...], rows: jax.Array | None, B: int,
                 dropout_rng: jax.Array | None) -> _Prompts:
        adapters = [self.adapters[n] for n in names]
        mc = self.base_model.config
        keys = [None] * len(names) if dropout_rng is None else list(jax.random.split(dropout_rng, len(names)))
        out = _Prompts()
        embeds = [(a.prompt(k)[:a.config.num_virtual_tokens], a.config.num_virtual_tokens) if not a.is_prefix
                  else (None, 0) for a, k in zip(adapters, keys)]
        Ve = max(v for _, v in embeds)
        if Ve:
            D = self.base_model.word_embeddings.features  # a prompt's width (narrower than the stack on ALBERT)
            stack = jnp.stack([_left_pad(jnp.zeros((0, D)) if e is None else e, Ve, 0) for e, _ in embeds])
            valid = _left_valid([v for _, v in embeds], Ve)
            out.embeds, out.embeds_mask = _rows(stack, rows, B), _rows(valid, rows, B)
        tables = [(a.prompt(k), a.config.num_virtual_tokens) if a.is_prefix else (None, 0)
                  for a, k in zip(adapters, keys)]
        Vk = max(v for _, v in tables)
        if Vk:
            N = max(t.shape[1] for t, _ in tables if t is not None) // (2 * mc.kv_width)
            kvs = [to_prefix_kv(_left_pad(jnp.zeros((0, N * 2 * mc.kv_width)) if t is None else t, Vk, 0),
                                N, mc.num_kv_heads, mc.head_dim) for t, _ in tables]
            valid = _left_valid([v for _, v in tables], Vk)
            out.prefix = _rows(jnp.stack(kvs, axis=2), rows, B, axis=2)
            out.prefix_mask = _rows(valid, rows, B)
        return out

    def _split_prefix(self, prefix: jax.Array | None, config: PromptLearningConfig) -> dict:
        """Route the stored layers to the backbone's prefix arguments."""
        mc = self.base_model.config
        if prefix is None:
            return {}
        if not mc.is_encoder_decoder:
            return {"prefix_kv": prefix}
        if getattr(config, "prefix_targets", "decoder") == "all":
            Le, Ld = mc.num_layers, mc.num_decoder_layers
            return {"encoder_prefix_kv": prefix[:Le], "prefix_kv": prefix[Le:Le + Ld],
                    "cross_prefix_kv": prefix[Le + Ld:]}
        return {"prefix_kv": prefix[np.asarray(peft_decoder_layers(prefix.shape[0], mc.num_decoder_layers))]}

    def _head(self, names, rows):
        heads = [self.adapters[n].head for n in names]
        if heads[0] is None:
            return None
        if rows is None:
            return heads[0]
        if len({h.num_labels for h in heads}) > 1:
            raise ValueError(f"adapters {sorted(set(names))} have heads for different numbers of labels "
                             f"{sorted({h.num_labels for h in heads})}; run them in separate batches")
        arrays = [h.arrays() for h in heads]
        stacked = tuple(None if a is None else jnp.stack([x[i] for x in arrays])[rows]
                        for i, a in enumerate(arrays[0]))
        act = heads[0].activation
        return lambda x, drop=None, rate=0.0: apply_head(x, stacked, drop, rate, per_row=True, activation=act)

    def _names_and_rows(self, adapter_names, B: int):
        if adapter_names is None:
            return (self.active_adapter,), None
        if isinstance(adapter_names, str) or len(adapter_names) != B:
            raise ValueError(f"adapter_names must list one adapter per row ({B} rows), got {adapter_names!r}")
        self._check_names(adapter_names)
        names = tuple(dict.fromkeys(adapter_names))
        configs = [self.adapters[n].config for n in names]
        if len({getattr(c, "prefix_targets", "decoder") for c in configs}) > 1:
            raise ValueError("adapter_names mixes prefix_targets='all' and 'decoder' adapters in one batch")
        if len(names) == 1:
            return names, None
        return names, jnp.asarray([names.index(n) for n in adapter_names], jnp.int32)

    def _cls_index(self, names, rows, input_ids, embeds_mask) -> jax.Array:
        """The slot a classifier pools in each row of a mixed batch, as each row alone would.
        Rows of shorter prompts (or none: prefix rows) start later in the left-padded prompt block.
        BERT pools the first slot; a decoder-only model the last one for a prompt row (PEFT passes
        it as embeddings) and the last non-pad token for a prefix row (passed as ids)."""
        base, Ve = self.base_model, embeds_mask.shape[1]
        if base.cls_token == "first":
            return Ve - embeds_mask.sum(-1, dtype=jnp.int32)
        T = input_ids.shape[1]
        by_ids = last_token_index(jnp.asarray(input_ids), base.config.pad_token_id, T)
        embed_row = jnp.asarray([not self.adapters[n].is_prefix for n in names])[rows]
        return Ve + jnp.where(embed_row, T - 1, by_ids)

    def __call__(self, input_ids=None, attention_mask=None, inputs_embeds=None, token_type_ids=None,
                 position_ids=None, decoder_input_ids=None, decoder_attention_mask=None, labels=None,
                 prompt_positions=None, adapter_names: list[str] | None = None,
                 dropout_rng: jax.Array | None = None, label_positions=None) -> ModelOutput:
        """Like PEFT's forward. `prompt_positions [B, V]` places P-Tuning virtual tokens inside the
        input (templates) instead of in front. `dropout_rng` switches on training-mode dropout.
        `label_positions [B, K]` (causal LM, -1 padded): the token indices whose labels are not -100,
        all of them; the loss then computes the LM head on those K slots only (a verbalizer or a target
        after a prompt), with the same value."""
        base = self.base_model
        B, T = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        names, rows = self._names_and_rows(adapter_names, B)
        config = self.adapters[names[0]].config
        k_prompt = k_model = None
        if dropout_rng is not None:
            k_prompt, k_model = jax.random.split(dropout_rng)
        p = self._prompts(names, rows, B, k_prompt)
        if attention_mask is None:
            attention_mask = jnp.ones((B, T), jnp.int32)
        attention_mask = jnp.asarray(attention_mask)
        kw = self._split_prefix(p.prefix, config)
        if p.prefix is not None:
            kw["prefix_mask"] = p.prefix_mask
        n_prefix = 0 if p.prefix_mask is None else p.prefix_mask.sum(-1, dtype=jnp.int32)
        Ve = 0
        if p.embeds is not None:
            if inputs_embeds is None:
                inputs_embeds = token_embeds(base, input_ids, p.embeds_mask.sum(-1))
            if prompt_positions is not None:
                inputs_embeds = _scatter_prompt(inputs_embeds, p.embeds, prompt_positions)
            elif getattr(config, "template", None):
                raise ValueError(f"adapter {names[0]!r} places its virtual tokens inside the template "
                                 f"{config.template!r}: pass prompt_positions (jsoft.tuners.p_tuning.apply_template "
                                 "builds the inputs and them)")
            else:
                Ve = p.embeds.shape[1]
                inputs_embeds = jnp.concatenate([p.embeds.astype(inputs_embeds.dtype), inputs_embeds], axis=1)
                attention_mask = jnp.concatenate([p.embeds_mask.astype(attention_mask.dtype), attention_mask], 1)
                if token_type_ids is not None:
                    token_type_ids = jnp.concatenate([jnp.zeros((B, Ve), jnp.int32), jnp.asarray(token_type_ids)], 1)
            kw["inputs_embeds"] = inputs_embeds
        elif inputs_embeds is not None:
            kw["inputs_embeds"] = inputs_embeds
        else:
            kw["input_ids"] = input_ids
        kw["attention_mask"] = attention_mask
        if base.config.is_encoder_decoder:
            if decoder_input_ids is None and labels is not None:
                decoder_input_ids = base.shift_right(labels)
            kw.update(decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                      **_encoder_positions(base, B, T, p.embeds_mask))
        else:
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            if position_ids is None:
                check_position_count(base.config, Ve + T + (0 if p.prefix_mask is None else p.prefix_mask.shape[-1]))
            kw["position_ids"] = _positions(B, T, Ve, p.embeds_mask, n_prefix, position_ids)
        head = self._head(names, rows)
        if head is not None:
            kw["head"] = head
        if base.task == "seq_cls" and rows is not None and Ve and (input_ids is not None or base.cls_token == "first"):
            kw["cls_index"] = self._cls_index(names, rows, input_ids, p.embeds_mask)
        out = base(**kw, dropout_rng=k_model)
        if labels is None:
            return out
        labels = jnp.asarray(labels)
        if label_positions is not None and base.task != "causal_lm":
            raise ValueError(f"label_positions applies to a causal_lm model, not task={base.task!r}")
        if base.task == "causal_lm":
            # the loss's own LM head reads only the positions that predict a label (not the virtual
            # tokens before the last one, nor the last position); under jit the full `logits`, when
            # unused (a training step), are never computed
            if label_positions is not None:
                h, slot_labels = losses.label_slot_inputs(out.last_hidden_state, labels,
                                                          jnp.asarray(label_positions), Ve)
                return out.replace(loss=losses.masked_cross_entropy(base.lm_logits(h), slot_labels))
            start, h = losses.causal_loss_positions(out.last_hidden_state, Ve)
            return out.replace(loss=losses.causal_lm_loss(base.lm_logits(h), labels, start, Ve))
        return out.replace(loss=losses.task_loss(base.task, out.logits, labels, Ve, getattr(base, "num_labels", None),
                                                 base.config.problem_type))


    # ------------------------------------------------------------------ generation (jsoft.generate)

    def generate(self, input_ids, attention_mask=None, **kwargs) -> jax.Array:
        """Like transformers' `generate`: greedy, sampling or beam search with a preallocated KV
        cache in one jit-compiled loop; see `jsoft.generate.generate` for the arguments."""
        from jsoft import generate

        return generate.generate(self, input_ids, attention_mask, **kwargs)

    def prompt_cache(self, adapter_name: str | None = None) -> jax.Array:
        """The adapter's prompt as a key/value prefix `[L, 2, 1, V, G, K]` for a decoder-only model.

        Prefix methods return their prefix. An embedding prompt (Prompt Tuning, P-Tuning) precedes
        every token, so its keys and values do not depend on the input: the backbone runs once over
        the prompt alone (positions 0..V-1) and decoding from this prefix, real tokens at positions
        V.., equals the embedding path."""
        name = adapter_name or self.active_adapter
        self._check_names([name])
        a, base = self.adapters[name], self.base_model
        mc = base.config
        if mc.is_encoder_decoder or base.task != "causal_lm":
            raise ValueError(f"prompt_cache is for decoder-only causal LMs, not this {mc.model_type} model with "
                             f"task={base.task!r}")
        if a.is_prefix:
            return to_prefix_kv(a.prompt(), mc.num_layers, mc.num_kv_heads, mc.head_dim)[:, :, None]
        if mc.keeps_recurrent_state:
            raise ValueError(f"this {mc.model_type} model's recurrent layers (linear attention, Mamba-2) keep a "
                             "recurrent state, which no key/value prompt cache holds; generate reads the prompt's "
                             "embeddings instead")
        self._check_cacheable(name)
        V = a.config.num_virtual_tokens
        dtype = compute_dtype(base)
        cache = KVCache.zeros(mc.num_layers, 1, V, *mc.cache_layout, dtype, values=mc.cache_values)
        out = base(inputs_embeds=a.prompt()[None, :V].astype(dtype), position_ids=jnp.arange(V)[None],
                   cache=cache)
        return out.cache.as_prefix()

    def _check_cacheable(self, name: str) -> None:
        """Refuses an adapter whose prompt depends on the input (virtual tokens inside a template): decoding reads
        a prompt that precedes every token."""
        if getattr(self.adapters[name].config, "template", None):
            raise ValueError(f"adapter {name!r} places its virtual tokens inside a template, so its prompt "
                             "depends on the input and has no prompt cache")

    def prepare_generation(self, input_ids: jax.Array, attention_mask: jax.Array, names: tuple[str, ...],
                           rows: jax.Array | None) -> dict[str, jax.Array]:
        """Backbone inputs for decoding a batch whose row b uses adapter `names[rows[b]]` (rows None:
        all use `names[0]`; no names: the backbone alone). Decoder-only: every adapter becomes a
        key/value prefix (`prompt_cache`), left-padded to the longest with `prefix_mask`; with recurrent layers
        (linear attention), `prompt_embeds` left-padded with `prompt_mask`, which decoding reads first.
        Encoder-decoder: the encoder gets the prompt embeddings in front (mask extended), the
        decoder the prefixes (`_split_prefix`)."""
        base = self.base_model
        B = input_ids.shape[0]
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        if not names:  # no adapter loaded: the frozen backbone alone
            return out
        if base.config.keeps_recurrent_state:  # the prompts' embeddings, read in the first pass
            for n in names:
                self._check_cacheable(n)
            p = self._prompts(names, rows, B, None)
            return out | {"prompt_embeds": p.embeds, "prompt_mask": p.embeds_mask}
        if not base.config.is_encoder_decoder:
            kvs = [self.prompt_cache(n)[:, :, 0] for n in names]  # [L, 2, V, G, K] each
            Vk, dtype = max(kv.shape[2] for kv in kvs), jnp.result_type(*kvs)
            stack = jnp.stack([_left_pad(kv.astype(dtype), Vk, 2) for kv in kvs], axis=2)
            valid = _left_valid([kv.shape[2] for kv in kvs], Vk)
            return out | {"prefix_kv": _rows(stack, rows, B, axis=2), "prefix_mask": _rows(valid, rows, B)}
        p = self._prompts(names, rows, B, None)
        if p.embeds is not None:
            embeds = token_embeds(base, input_ids, p.embeds_mask.sum(-1))
            out = {"inputs_embeds": jnp.concatenate([p.embeds.astype(embeds.dtype), embeds], axis=1),
                   "attention_mask": jnp.concatenate([p.embeds_mask.astype(attention_mask.dtype), attention_mask], 1),
                   **_encoder_positions(base, B, input_ids.shape[1], p.embeds_mask)}
        if p.prefix is not None:
            out |= self._split_prefix(p.prefix, self.adapters[names[0]].config) | {"prefix_mask": p.prefix_mask}
        return out


def _positions(B: int, T: int, Ve: int, embeds_mask, n_prefix, position_ids):
    """Absolute positions of [prompt block | tokens]: a row's prompt of n virtual tokens takes
    positions 0..n-1 (pads before it are clipped to 0 and masked), its tokens n.., both after the
    row's n_prefix key/value prefix tokens (PEFT: the prefix counts as past length)."""
    n_embed = 0 if embeds_mask is None else embeds_mask.sum(-1, dtype=jnp.int32)[:, None]
    tokens = jnp.arange(T, dtype=jnp.int32)[None] if position_ids is None else jnp.asarray(position_ids, jnp.int32)
    tokens = jnp.broadcast_to(tokens + n_embed, (B, T))
    if Ve:
        prompt = jnp.maximum(jnp.arange(Ve, dtype=jnp.int32)[None] - (Ve - n_embed), 0)
        tokens = jnp.concatenate([jnp.broadcast_to(prompt, (B, Ve)), tokens], axis=1)
    return tokens + (n_prefix[:, None] if not isinstance(n_prefix, int) else n_prefix)


def _encoder_positions(base, B: int, T: int, embeds_mask) -> dict:
    """`position_ids` for an encoder with learned absolute positions (BART) behind a prompt block: each row's
    prompt takes 0..n-1 whatever the block's left padding in a mixed batch (alone: 0..Ve+T-1, as PEFT). None
    needed without a prompt, or where positions are relative (T5)."""
    if embeds_mask is None or base.config.position_table_size is None:
        return {}
    check_position_count(base.config, embeds_mask.shape[1] + T)
    return {"position_ids": _positions(B, T, embeds_mask.shape[1], embeds_mask, 0, None)}


def token_embeds(base, input_ids, n_virtual_B):
    """The tokens' embeddings behind a prompt block: the model's word embeddings (what PEFT reads) for a row with
    `n_virtual` > 0 embedding-prompt tokens; for a row without any (a prefix adapter's, in a mixed batch), what the
    model makes of its input ids alone. They differ where a model scales its own lookups but not given embeddings
    (`lookup_scale`: Marian's and Pegasus's encoders)."""
    x = base.word_embeddings(input_ids)
    scale = getattr(base, "lookup_scale", 1.0)
    if scale == 1.0:
        return x
    return x * jnp.where(n_virtual_B == 0, scale, 1.0)[:, None, None].astype(x.dtype)


def _scatter_prompt(embeds_BxTxD, prompt_BxVxD, positions_BxV):
    b = jnp.arange(embeds_BxTxD.shape[0])[:, None]
    return embeds_BxTxD.at[b, jnp.asarray(positions_BxV)].set(prompt_BxVxD.astype(embeds_BxTxD.dtype))


def get_peft_model(model: nnx.Module, peft_config: PromptLearningConfig, adapter_name: str = "default", *,
                   seed: int = 0, tokenizer=None) -> PeftModel:
    """Wrap a jsoft model (from `jsoft.from_pretrained`) with a soft-prompt adapter."""
    return PeftModel(model, peft_config, adapter_name, seed=seed, tokenizer=tokenizer)
