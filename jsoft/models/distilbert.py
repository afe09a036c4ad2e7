"""DistilBERT: BERT's post-LN encoder, six layers, no token types and no pooler; for seq_cls a `pre_classifier`
(dense, ReLU) on [CLS] before the classifier, one two-layer head (PEFT's `modules_to_save` "classifier" matches
both names, so PEFT trains and saves both).

Module tree mirrors transformers' (`distilbert.transformer.layer.0.attention.q_lin`, `pre_classifier`,
`classifier`) so checkpoint names map one to one; torch nn.Linear weights are `[out, in]`.

transformers' DistilBERT takes no `past_key_values`, so PEFT cannot run a prefix on it (jsoft's prefixes count as
past length for the learned positions, as BERT's do, and save in jsoft's format); PEFT's prompt tuning and
P-Tuning run once `token_dim`, `num_layers` and `num_attention_heads` are given (it cannot derive them from
DistilBERT's `dim` / `n_layers` / `n_heads`), which jsoft derives and writes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jsoft.models.base import TransformerConfig, default_positions, hf_name, is_kernel
from jsoft.models.bert import Encoder, pooled_rows, take_query_rows, take_rows
from jsoft.models.layers import (
    DropoutRng,
    LayerNorm,
    ModelOutput,
    Precision,
    activation,
    attention_mask_4d,
    dense,
    dot_product_attention,
    embed,
    merge_heads,
    self_attention_kv,
    split_heads,
)
from jsoft.models.roberta import ClassificationHead

TASKS = (None, "seq_cls", "token_cls")
BASE_PREFIX = "distilbert"
EPS = 1e-12  # transformers fixes every DistilBERT LayerNorm's epsilon


@dataclasses.dataclass
class Config(TransformerConfig):
    max_positions: int = 512
    inner_size: int = 3072
    activation: str = "gelu"
    dropout: float = 0.1
    attn_dropout: float = 0.1
    seq_classif_dropout: float = 0.2

    @property
    def position_table_size(self) -> int:
        return self.max_positions

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        d, h = hf["dim"], hf["n_heads"]
        if d % h:
            raise ValueError(f"DistilBERT config dim={d} is not a multiple of n_heads={h}")
        return cls(model_type="distilbert", vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf["n_layers"],
                   num_heads=h, num_kv_heads=h, head_dim=d // h, pad_token_id=hf.get("pad_token_id", 0),
                   eos_token_id=hf.get("eos_token_id"), bos_token_id=hf.get("bos_token_id"),
                   max_positions=hf.get("max_position_embeddings", 512), inner_size=hf.get("hidden_dim", 4 * d),
                   activation=hf.get("activation", "gelu"), dropout=hf.get("dropout", 0.1),
                   attn_dropout=hf.get("attention_dropout", 0.1),
                   seq_classif_dropout=hf.get("seq_classif_dropout", 0.2))


class Embeddings(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c, self.dtype = c, p.dtype
        self.word_embeddings = embed(c.vocab_size, c.hidden_size, p, rngs=rngs)
        self.position_embeddings = embed(c.max_positions, c.hidden_size, p, rngs=rngs, names=(None, "embed"))
        self.LayerNorm = LayerNorm(c.hidden_size, EPS, p)

    def __call__(self, inputs_embeds, position_ids, drop: DropoutRng):
        x = self.LayerNorm(inputs_embeds + self.position_embeddings(position_ids))
        return drop(x.astype(self.dtype), self.c.dropout)


class MultiHeadSelfAttention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        d = c.hidden_size
        self.q_lin, self.k_lin, self.v_lin = (dense(d, d, ("embed", "joined_kv"), p, rngs=rngs) for _ in range(3))
        self.out_lin = dense(d, d, ("joined_kv", "embed"), p, rngs=rngs)

    def __call__(self, x, mask, *, layer, prefix_kv, prefix_mask, drop: DropoutRng, rows=None):
        """`rows [B, K]`: queries only at those tokens (keys and values at all of them)."""
        c = self.c
        if rows is not None:
            mask = take_query_rows(mask, rows)
        q = split_heads(self.q_lin(x if rows is None else take_rows(x, rows)), c.num_heads)
        k, v = (split_heads(f(x), c.num_heads) for f in (self.k_lin, self.v_lin))
        k, v, mask, _ = self_attention_kv(k, v, mask, layer=layer, cache=None, prefix_kv=prefix_kv,
                                          prefix_mask=prefix_mask)
        out = dot_product_attention(q, k, v, mask, scale=c.head_dim ** -0.5, dropout=drop,
                                    dropout_rate=c.attn_dropout)
        return self.out_lin(merge_heads(out))


class FFN(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.lin1 = dense(c.hidden_size, c.inner_size, ("embed", "mlp"), p, rngs=rngs)
        self.lin2 = dense(c.inner_size, c.hidden_size, ("mlp", "embed"), p, rngs=rngs)
        self.act = activation(c.activation)

    def __call__(self, x, drop: DropoutRng):
        return drop(self.lin2(self.act(self.lin1(x))), self.c.dropout)


class TransformerBlock(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.dtype = p.dtype
        self.attention = MultiHeadSelfAttention(c, p, rngs)
        self.sa_layer_norm = LayerNorm(c.hidden_size, EPS, p)
        self.ffn = FFN(c, p, rngs)
        self.output_layer_norm = LayerNorm(c.hidden_size, EPS, p)

    def __call__(self, x, mask, **kw):
        rows = kw.get("rows")
        x = self.sa_layer_norm(self.attention(x, mask, **kw) + (x if rows is None else take_rows(x, rows)))
        x = x.astype(self.dtype)
        return self.output_layer_norm(self.ffn(x, kw["drop"]) + x).astype(self.dtype)


class DistilBertModel(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.embeddings = Embeddings(c, p, rngs)
        self.transformer = Encoder(c, p, rngs, TransformerBlock)  # transformers' `Transformer`: BERT's loop

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, prefix_kv=None,
                 prefix_mask=None, drop=None, cls_index=None, pooled_only: bool = False):
        """The hidden states; `pooled_only`: the last layer computes only the pooled token, `[B, 1, D]`."""
        drop = drop or DropoutRng(None)
        if inputs_embeds is None:
            inputs_embeds = self.embeddings.word_embeddings(input_ids)
        B, T = inputs_embeds.shape[:2]
        if position_ids is None:  # a prefix counts as past length, as for BERT
            position_ids = default_positions(B, T, prefix_kv, None, self.c)
        x = self.embeddings(inputs_embeds, position_ids, drop)
        mask = attention_mask_4d(attention_mask, T, T, causal=False)
        rows = pooled_rows(B, cls_index) if pooled_only else None
        return self.transformer(x, mask, rows, prefix_kv=prefix_kv, prefix_mask=prefix_mask, drop=drop)


class DistilBert(nnx.Module):
    """DistilBERT with the head for `task` (None, seq_cls, token_cls)."""

    cls_token = "first"  # the head reads [CLS], slot 0 (`cls_index` overrides it)
    peft_runs_prefix = False  # transformers' DistilBERT takes no past_key_values

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.config, self.task, self.num_labels = c, task, num_labels
        self.distilbert = DistilBertModel(c, p, rngs)
        if task == "seq_cls":  # pre_classifier and classifier: one head, as PEFT trains and saves both
            self.classifier = ClassificationHead(c, num_labels, p, rngs, activation="relu",
                                                 peft_names=("pre_classifier", "classifier"))
        elif task == "token_cls":
            self.classifier = dense(c.hidden_size, num_labels, ("embed", None), p, rngs=rngs)
        self.head_name = "classifier" if task in ("seq_cls", "token_cls") else None

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.distilbert.embeddings.word_embeddings

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None,
                 inputs_embeds=None, prefix_kv=None, prefix_mask=None, cache=None,
                 dropout_rng: jax.Array | None = None, head=None, cls_index=None) -> ModelOutput:
        """`token_type_ids` are ignored (DistilBERT has none); `head` replaces the classifier (a PEFT adapter's
        trained copy of it); `cls_index [B]` is the slot seq_cls reads (default 0, [CLS]), and the last layer
        computes only that slot, so `last_hidden_state` is `[B, 1, D]`."""
        if cache is not None:
            raise ValueError("DistilBERT is an encoder: it takes no decoding cache (cache must be None)")
        drop = DropoutRng(dropout_rng)
        seq_cls = self.task == "seq_cls"
        h = self.distilbert(input_ids, attention_mask, position_ids, inputs_embeds, prefix_kv, prefix_mask, drop,
                            cls_index, pooled_only=seq_cls)
        if seq_cls:
            logits = (head or self.classifier)(h[:, 0], drop, self.config.seq_classif_dropout).astype(jnp.float32)
            return ModelOutput(logits=logits, last_hidden_state=h)
        if self.task == "token_cls":
            logits = (head or self.classifier)(drop(h, self.config.dropout)).astype(jnp.float32)
            return ModelOutput(logits=logits, last_hidden_state=h)
        return ModelOutput(last_hidden_state=h)


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> DistilBert:
    return DistilBert(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    """Every kernel is a torch nn.Linear [out, in]; the seq_cls head's two layers are transformers'
    `pre_classifier` and `classifier`."""
    path = tuple(map(str, path))
    if path[:2] in (("classifier", "dense"), ("classifier", "out_proj")):
        path = ("pre_classifier" if path[1] == "dense" else "classifier", *path[2:])
    return hf_name(path), is_kernel(path)
