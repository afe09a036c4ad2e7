"""BERT (post-LayerNorm encoder, learned absolute positions, token types, tanh pooler).

Module tree mirrors transformers' (`bert.encoder.layer.0.attention.self.query`, `bert.pooler.dense`,
`classifier`) so checkpoint names map one to one; torch nn.Linear weights are `[out, in]`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jsoft.models import heads
from jsoft.models.base import TransformerConfig, default_positions, hf_name, is_kernel
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

TASKS = (None, "seq_cls", "token_cls")
BASE_PREFIX = "bert"


@dataclasses.dataclass
class Config(TransformerConfig):
    max_positions: int = 512
    type_vocab_size: int = 2
    inner_size: int = 3072
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attn_dropout: float = 0.1
    classifier_dropout: float = 0.1
    embedding_size: int = 0  # ELECTRA's narrower embeddings (0: hidden_size)

    @property
    def position_table_size(self) -> int:
        return self.max_positions

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        kind = hf.get("position_embedding_type", "absolute")
        if kind not in (None, "absolute"):
            raise ValueError(f"BERT config position_embedding_type={kind!r} is not supported by jsoft; "
                             "only 'absolute' is")
        for flag in ("is_decoder", "add_cross_attention"):
            if hf.get(flag):
                raise ValueError(f"BERT config option {flag}=True is not supported by jsoft (encoder only)")
        d, h = hf["hidden_size"], hf["num_attention_heads"]
        if d % h:
            raise ValueError(f"BERT config hidden_size={d} is not a multiple of num_attention_heads={h}")
        return cls(
            model_type="bert", vocab_size=hf["vocab_size"], hidden_size=d,
            num_layers=hf["num_hidden_layers"], num_heads=h, num_kv_heads=h, head_dim=d // h,
            pad_token_id=hf.get("pad_token_id", 0), eos_token_id=hf.get("eos_token_id"),
            bos_token_id=hf.get("bos_token_id"), max_positions=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2), inner_size=hf.get("intermediate_size", 4 * d),
            activation=hf.get("hidden_act", "gelu"), layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
            attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            classifier_dropout=heads.classifier_dropout_rate(hf, "hidden_dropout_prob"),
        )


class Embeddings(nnx.Module):
    normalized = True  # a LayerNorm on the summed embeddings (XLM-RoBERTa-XL's pre-norm layers have none)

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c, self.dtype = c, p.dtype
        e = c.embedding_size or c.hidden_size
        self.word_embeddings = embed(c.vocab_size, e, p, rngs=rngs)
        self.position_embeddings = embed(c.max_positions, e, p, rngs=rngs, names=(None, "embed"))
        # MPNet has no token types (type_vocab_size 0): token_type_ids are then ignored
        self.token_type_embeddings = (embed(c.type_vocab_size, e, p, rngs=rngs, names=(None, "embed"))
                                      if c.type_vocab_size > 0 else nnx.data(None))
        self.LayerNorm = LayerNorm(e, c.layer_norm_eps, p) if self.normalized else nnx.data(None)

    def __call__(self, inputs_embeds, position_ids, token_type_ids, drop: DropoutRng):
        x = inputs_embeds
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)
        if self.LayerNorm is not None:
            x = self.LayerNorm(x)
        return drop(x.astype(self.dtype), self.c.hidden_dropout)


class SelfAttention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.query, self.key, self.value = (
            dense(c.hidden_size, c.hidden_size, ("embed", "joined_kv"), p, rngs=rngs) for _ in range(3))

    def __call__(self, x, mask, *, layer, prefix_kv, prefix_mask, drop: DropoutRng, rows=None):
        """`rows [B, K]`: queries only at those tokens (keys and values at all of them)."""
        if rows is not None:
            mask = take_query_rows(mask, rows)
        q = split_heads(self.query(x if rows is None else take_rows(x, rows)), self.c.num_heads)
        k, v = (split_heads(f(x), self.c.num_heads) for f in (self.key, self.value))
        k, v, mask, _ = self_attention_kv(k, v, mask, layer=layer, cache=None, prefix_kv=prefix_kv,
                                          prefix_mask=prefix_mask)
        out = dot_product_attention(q, k, v, mask, scale=self.c.head_dim ** -0.5, dropout=drop,
                                    dropout_rate=self.c.attn_dropout)
        return merge_heads(out)


class DenseNorm(nnx.Module):
    """transformers' BertSelfOutput and BertOutput: LayerNorm(dropout(dense(h)) + residual)."""

    def __init__(self, c: Config, d_in: int, names: tuple, p: Precision, rngs: nnx.Rngs):
        self.c, self.dtype = c, p.dtype
        self.dense = dense(d_in, c.hidden_size, names, p, rngs=rngs)
        self.LayerNorm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)

    def __call__(self, h, residual, drop: DropoutRng):
        return self.LayerNorm(drop(self.dense(h), self.c.hidden_dropout) + residual).astype(self.dtype)


class Attention(nnx.Module):
    """`self_attention`: another encoder's self-attention in BERT's place (DeBERTa's disentangled one)."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs, self_attention: type | None = None):
        self.self = (self_attention or SelfAttention)(c, p, rngs)
        self.output = DenseNorm(c, c.hidden_size, ("joined_kv", "embed"), p, rngs)

    def __call__(self, x, mask, **kw):
        rows = kw.get("rows")
        return self.output(self.self(x, mask, **kw), x if rows is None else take_rows(x, rows), kw["drop"])


class Intermediate(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.act = activation(c.activation)
        self.dense = dense(c.hidden_size, c.inner_size, ("embed", "mlp"), p, rngs=rngs)

    def __call__(self, x):
        return self.act(self.dense(x))


class Layer(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs, self_attention: type | None = None):
        self.attention = Attention(c, p, rngs, self_attention)
        self.intermediate = Intermediate(c, p, rngs)
        self.output = DenseNorm(c, c.inner_size, ("mlp", "embed"), p, rngs)

    def __call__(self, x, mask, **kw):
        x = self.attention(x, mask, **kw)
        return self.output(self.intermediate(x), x, kw["drop"])


class Encoder(nnx.Module):
    """`block`: another encoder's layer in BERT's place (DistilBERT's TransformerBlock)."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs, block: type | None = None):
        self.layer = nnx.List([(block or Layer)(c, p, rngs) for _ in range(c.num_layers)])

    def __call__(self, x, mask, rows=None, **kw):
        """`rows [B, K]`: the last layer computes only those tokens' outputs (all a pooled head reads), and the
        result is `[B, K, D]`."""
        last = len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            x = layer(x, mask, layer=i, **({"rows": rows} if i == last and rows is not None else {}), **kw)
        return x


def take_rows(x_BxTxD, rows_BxK):
    return jnp.take_along_axis(x_BxTxD, rows_BxK[..., None], axis=1)


def take_query_rows(t_BxHxTxS, rows_BxK):
    """A mask or bias `[B|1, H|1, T, S]` at the queries `rows` only: `[B, H|1, K, S]`."""
    B = rows_BxK.shape[0]
    return jnp.take_along_axis(jnp.broadcast_to(t_BxHxTxS, (B, *t_BxHxTxS.shape[1:])), rows_BxK[:, None, :, None],
                               axis=2)


def pooled_rows(B: int, cls_index) -> jax.Array:
    """`[B, 1]`: the token a pooled head reads in each row (default 0, [CLS] / <s>)."""
    return jnp.broadcast_to(jnp.asarray(0 if cls_index is None else cls_index, jnp.int32).reshape(-1), (B,))[:, None]


class Pooler(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.dense = dense(c.hidden_size, c.hidden_size, ("embed", None), p, rngs=rngs)

    def __call__(self, h_BxTxD, cls_index_B=None):
        return jnp.tanh(self.dense(heads.pool_at(h_BxTxD, 0 if cls_index_B is None else cls_index_B)))


class BertModel(nnx.Module):
    """Another BERT-family stack takes its own `embeddings_class` (ERNIE's task types) or `encoder_class`
    (ALBERT's shared layers)."""

    embeddings_class, encoder_class = Embeddings, Encoder

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs, *, add_pooling_layer: bool = True):
        self.c = c
        self.embeddings = self.embeddings_class(c, p, rngs)
        self.embeddings_project = nnx.data(None)  # ELECTRA: narrower embeddings projected to the hidden size
        self.encoder = self.encoder_class(c, p, rngs)
        self.pooler = Pooler(c, p, rngs) if add_pooling_layer else None

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None,
                 inputs_embeds=None, prefix_kv=None, prefix_mask=None, drop=None, cls_index=None,
                 pooled_only: bool = False):
        """`(hidden states, pooler output)`; `pooled_only`: the last layer computes only the pooled token, and
        the hidden states are that token's, `[B, 1, D]`."""
        drop = drop or DropoutRng(None)
        if inputs_embeds is None:
            inputs_embeds = self.embeddings.word_embeddings(input_ids)
        B, T = inputs_embeds.shape[:2]
        if position_ids is None:
            # a prefix counts as past length (PEFT passes it as past_key_values): positions V..V+T-1
            position_ids = default_positions(B, T, prefix_kv, None, self.c)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((B, T), jnp.int32)
        x = self.embeddings(inputs_embeds, position_ids, token_type_ids, drop)
        if self.embeddings_project is not None:
            x = self.embeddings_project(x)
        mask = attention_mask_4d(attention_mask, T, T, causal=False)
        rows = pooled_rows(B, cls_index) if pooled_only else None
        h = self.encoder(x, mask, rows, prefix_kv=prefix_kv, prefix_mask=prefix_mask, drop=drop)
        return h, None if self.pooler is None else self.pooler(h, None if pooled_only else cls_index)


class Bert(nnx.Module):
    """BERT (or ERNIE: its stack under its name) with the head for `task` (None, seq_cls, token_cls)."""

    cls_token = "first"  # the pooler reads [CLS], slot 0 (`cls_index` overrides it)
    base_prefix, model_class = BASE_PREFIX, BertModel

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.config, self.task, self.num_labels = c, task, num_labels
        # transformers' BertForTokenClassification builds no pooler
        setattr(self, self.base_prefix, self.model_class(c, p, rngs, add_pooling_layer=task != "token_cls"))
        if task in ("seq_cls", "token_cls"):
            self.classifier = dense(c.hidden_size, num_labels, ("embed", None), p, rngs=rngs)
        self.head_name = "classifier" if task in ("seq_cls", "token_cls") else None

    @property
    def base(self) -> BertModel:
        return getattr(self, self.base_prefix)

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.base.embeddings.word_embeddings

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None,
                 inputs_embeds=None, prefix_kv=None, prefix_mask=None, cache=None,
                 dropout_rng: jax.Array | None = None, head=None, cls_index=None) -> ModelOutput:
        """`head` replaces the classifier (a PEFT adapter's trained copy of it); `cls_index [B]` is
        the slot the pooler reads (default 0, [CLS]). For seq_cls the last layer computes only that slot, so
        `last_hidden_state` is `[B, 1, D]` (about 1/L of the work less)."""
        if cache is not None:
            raise ValueError("BERT is an encoder: it takes no decoding cache (cache must be None)")
        drop = DropoutRng(dropout_rng)
        h, pooled = self.base(input_ids, attention_mask, position_ids, token_type_ids, inputs_embeds,
                              prefix_kv, prefix_mask, drop, cls_index, pooled_only=self.task == "seq_cls")
        if self.task == "seq_cls":
            logits = (head or self.classifier)(drop(pooled, self.config.classifier_dropout)).astype(jnp.float32)
        elif self.task == "token_cls":
            logits = (head or self.classifier)(drop(h, self.config.classifier_dropout)).astype(jnp.float32)
        else:
            return ModelOutput(last_hidden_state=h, pooler_output=pooled)
        return ModelOutput(logits=logits, last_hidden_state=h, pooler_output=pooled)


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> Bert:
    return Bert(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]
