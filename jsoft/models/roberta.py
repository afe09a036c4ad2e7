"""RoBERTa (and XLM-RoBERTa): BERT's encoder with three differences: positions count from the pad id + 1
(pads take the pad id's row), one token type, and for seq_cls a two-layer head on `<s>` (dense, tanh,
out_proj) instead of a pooler.

Module tree mirrors transformers' (`roberta.encoder.layer.0.attention.self.query`, `classifier.dense`,
`classifier.out_proj`) so checkpoint names map one to one. `position_ids`, as for every jsoft backbone,
count from 0 (after a prefix); the embedding adds the offset: for input ids as transformers' rule does
(each row counts its non-pad tokens, whatever the padding side), for embeddings sequentially."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jsoft.models import bert, layers
from jsoft.models.base import check_position_count, hf_name, is_kernel, past_length
from jsoft.models.layers import DropoutRng, ModelOutput, Precision, attention_mask_4d, dense

TASKS = (None, "seq_cls", "token_cls")
BASE_PREFIX = "roberta"
MODEL_TYPES = ("roberta", "xlm-roberta", "camembert")


@dataclasses.dataclass
class Config(bert.Config):
    max_positions: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5

    @property
    def position_offset(self) -> int:
        """The table row of position 0: the rows up to the pad id's are not positions."""
        return (self.pad_token_id or 0) + 1

    @property
    def position_table_size(self) -> int:
        return self.max_positions - self.position_offset

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        if hf.get("model_type", "roberta") not in MODEL_TYPES:
            raise ValueError(f"model_type={hf.get('model_type')!r} is not RoBERTa; jsoft.models.roberta reads "
                             f"{MODEL_TYPES}")
        c = super().from_hf({"pad_token_id": 1, "layer_norm_eps": 1e-5, "max_position_embeddings": 514, **hf})
        c.model_type = hf.get("model_type", "roberta")
        return c


class Embeddings(bert.Embeddings):
    def __call__(self, inputs_embeds, position_ids, token_type_ids, drop: DropoutRng, input_ids=None):
        """`position_ids` from 0; with `input_ids`, transformers' rule: a row's k-th non-pad token takes row
        pad + k (+ the prefix), its pads the pad row."""
        offset = self.c.position_offset
        rows = position_ids + offset
        if input_ids is not None:
            real = (input_ids != self.c.pad_token_id).astype(jnp.int32)
            past = position_ids[:, :1]  # a prefix's length: where the row's positions start
            rows = (jnp.cumsum(real, axis=1) + past) * real + offset - 1
        return super().__call__(inputs_embeds, rows, token_type_ids, drop)


class ClassificationHead(nnx.Module):
    """transformers' RobertaClassificationHead: (dropout,) dense, tanh, dropout, out_proj. Other two-layer heads
    take another `activation` (DistilBERT: ReLU) and their own transformers names (`peft_names`: the dense and
    the output layer's, as a PEFT adapter stores them)."""

    def __init__(self, c, num_labels: int, p: Precision, rngs: nnx.Rngs, activation: str = "tanh",
                 peft_names: tuple[str, str] = ("classifier.dense", "classifier.out_proj")):
        self.activation, self.peft_names = activation, peft_names
        self.dense = dense(c.hidden_size, c.hidden_size, ("embed", None), p, rngs=rngs)
        self.out_proj = dense(c.hidden_size, num_labels, ("embed", None), p, rngs=rngs)

    def __call__(self, x, drop: DropoutRng | None = None, rate: float = 0.0):
        x = layers.activation(self.activation)(self.dense(x).astype(jnp.float32))
        return self.out_proj(x if drop is None else drop(x, rate))


class RobertaModel(bert.BertModel):
    embeddings_class = Embeddings

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        super().__init__(c, p, rngs, add_pooling_layer=False)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None,
                 inputs_embeds=None, prefix_kv=None, prefix_mask=None, drop=None, cls_index=None,
                 pooled_only: bool = False):
        drop = drop or DropoutRng(None)
        by_ids = inputs_embeds is None
        if by_ids:
            inputs_embeds = self.embeddings.word_embeddings(input_ids)
        B, T = inputs_embeds.shape[:2]
        if position_ids is None:
            past = past_length(prefix_kv, None)
            check_position_count(self.c, past + T)
            # transformers counts embeddings from 0 whatever the prefix (it cannot see their pads)
            position_ids = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None] + (past if by_ids else 0), (B, T))
        if token_type_ids is None:
            token_type_ids = jnp.zeros((B, T), jnp.int32)
        x = self.embeddings(inputs_embeds, jnp.asarray(position_ids, jnp.int32), token_type_ids, drop,
                            input_ids if by_ids else None)
        mask = attention_mask_4d(attention_mask, T, T, causal=False)
        rows = bert.pooled_rows(B, cls_index) if pooled_only else None
        return self.encoder(x, mask, rows, prefix_kv=prefix_kv, prefix_mask=prefix_mask, drop=drop), None


class Roberta(nnx.Module):
    """RoBERTa with the head for `task` (None, seq_cls, token_cls). Subclasses (ELECTRA) set `base_prefix` (the
    base model's attribute, as transformers names it), `build_base` and the head's `activation`."""

    cls_token = "first"  # the head reads <s>, slot 0 (`cls_index` overrides it)
    base_prefix = BASE_PREFIX
    activation = "tanh"

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.config, self.task, self.num_labels = c, task, num_labels
        setattr(self, self.base_prefix, self.build_base(c, p, rngs))
        if task == "seq_cls":
            self.classifier = ClassificationHead(c, num_labels, p, rngs, activation=self.activation)
        elif task == "token_cls":
            self.classifier = dense(c.hidden_size, num_labels, ("embed", None), p, rngs=rngs)
        self.head_name = "classifier" if task in ("seq_cls", "token_cls") else None

    @staticmethod
    def build_base(c: Config, p: Precision, rngs: nnx.Rngs) -> nnx.Module:
        return RobertaModel(c, p, rngs)

    @property
    def base(self) -> nnx.Module:
        return getattr(self, self.base_prefix)

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.base.embeddings.word_embeddings

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None,
                 inputs_embeds=None, prefix_kv=None, prefix_mask=None, cache=None,
                 dropout_rng: jax.Array | None = None, head=None, cls_index=None) -> ModelOutput:
        """`head` replaces the classifier (a PEFT adapter's trained copy of it); `cls_index [B]` is the slot
        the seq_cls head reads (default 0, <s>); the last layer computes only that slot for seq_cls, so
        `last_hidden_state` is `[B, 1, D]`."""
        if cache is not None:
            raise ValueError(f"{self.config.model_type} is an encoder: it takes no decoding cache (cache must be None)")
        drop = DropoutRng(dropout_rng)
        seq_cls = self.task == "seq_cls"  # the head reads one token: the last layer computes only that one
        h, _ = self.base(input_ids, attention_mask, position_ids, token_type_ids, inputs_embeds, prefix_kv,
                            prefix_mask, drop, cls_index, pooled_only=seq_cls)
        rate = self.config.classifier_dropout
        if seq_cls:
            first = drop(h[:, 0], rate)
            logits = (head or self.classifier)(first, drop, rate).astype(jnp.float32)
        elif self.task == "token_cls":
            logits = (head or self.classifier)(drop(h, rate)).astype(jnp.float32)
        else:
            return ModelOutput(last_hidden_state=h)
        return ModelOutput(logits=logits, last_hidden_state=h)


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> Roberta:
    return Roberta(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]
