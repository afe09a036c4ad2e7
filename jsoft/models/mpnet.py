"""MPNet (mpnet-base, sentence-transformers' all-mpnet-base-v2 and its fine-tunes): RoBERTa's post-LayerNorm encoder,
positions and two-layer seq_cls head, without token types (given ones are ignored, as transformers does), and with a
relative-position bias shared by every layer (T5's bidirectional buckets, over each key's slot minus the query's).

Module tree mirrors transformers' (`mpnet.encoder.layer.0.attention.attn.q`, `mpnet.encoder.relative_attention_bias`,
`classifier.dense`, `classifier.out_proj`).

Prefixes (P-Tuning v2) are jsoft's, as on DeBERTa: prefix keys take the content score only (no relative-position
term). transformers' MPNet takes no `past_key_values`, so PEFT cannot run a prefix on it."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from jsoft.models import bert, roberta, t5
from jsoft.models.layers import (
    DropoutRng,
    LayerNorm,
    Precision,
    dense,
    dot_product_attention,
    embed,
    merge_heads,
    self_attention_kv,
    split_heads,
)

TASKS = roberta.TASKS
BASE_PREFIX = "mpnet"
checkpoint_key = roberta.checkpoint_key
BUCKETS, MAX_DISTANCE = 32, 128  # transformers' compute_position_bias: 32 whatever relative_attention_num_buckets


@dataclasses.dataclass
class Config(roberta.Config):
    relative_attention_num_buckets: int = 32  # rows of the bias table (transformers reads the first 32)

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        c = bert.Config.from_hf({"layer_norm_eps": 1e-5, "max_position_embeddings": 514, **hf})
        return cls(**{**dataclasses.asdict(c), "model_type": "mpnet", "type_vocab_size": 0,
                      # positions count around id 1 whatever config.json says, as transformers' MPNetEmbeddings
                      "pad_token_id": 1, "classifier_dropout": float(hf.get("hidden_dropout_prob", 0.1)),
                      "relative_attention_num_buckets": hf.get("relative_attention_num_buckets", 32)})


class SelfAttention(nnx.Module):
    """transformers' MPNetSelfAttention: q, k, v and the output projection o."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        d = c.hidden_size
        self.q, self.k, self.v = (dense(d, d, ("embed", "joined_kv"), p, rngs=rngs) for _ in range(3))
        self.o = dense(d, d, ("joined_kv", "embed"), p, rngs=rngs)

    def __call__(self, x, mask, *, layer, bias, prefix_kv, prefix_mask, drop: DropoutRng, rows=None):
        """`bias [1, H, T, S]` over the keys (the prefix's zero); `rows [B, K]`: queries only at those tokens."""
        if rows is not None:
            mask, bias = bert.take_query_rows(mask, rows), bert.take_query_rows(bias, rows)
        q = split_heads(self.q(x if rows is None else bert.take_rows(x, rows)), self.c.num_heads)
        k, v = (split_heads(f(x), self.c.num_heads) for f in (self.k, self.v))
        k, v, mask, _ = self_attention_kv(k, v, mask, layer=layer, cache=None, prefix_kv=prefix_kv,
                                          prefix_mask=prefix_mask)
        out = dot_product_attention(q, k, v, mask, scale=self.c.head_dim ** -0.5, bias=bias, dropout=drop,
                                    dropout_rate=self.c.attn_dropout)
        return self.o(merge_heads(out))


class Attention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c, self.dtype = c, p.dtype
        self.attn = SelfAttention(c, p, rngs)
        self.LayerNorm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)

    def __call__(self, x, mask, **kw):
        rows = kw.get("rows")
        residual = x if rows is None else bert.take_rows(x, rows)
        out = kw["drop"](self.attn(x, mask, **kw), self.c.hidden_dropout)
        return self.LayerNorm(out + residual).astype(self.dtype)


class Layer(bert.Layer):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.attention = Attention(c, p, rngs)
        self.intermediate = bert.Intermediate(c, p, rngs)
        self.output = bert.DenseNorm(c, c.inner_size, ("mlp", "embed"), p, rngs)


class Encoder(bert.Encoder):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        super().__init__(c, p, rngs, block=Layer)
        self.relative_attention_bias = embed(c.relative_attention_num_buckets, c.num_heads, p, rngs=rngs,
                                             names=(None, None))

    def __call__(self, x, mask, rows=None, **kw):
        T = x.shape[1]
        slots = jnp.arange(T)
        buckets = t5.relative_position_bucket(slots[None, :] - slots[:, None], bidirectional=True,
                                              num_buckets=BUCKETS, max_distance=MAX_DISTANCE)
        bias = jnp.transpose(self.relative_attention_bias(buckets), (2, 0, 1))[None].astype(jnp.float32)
        if kw.get("prefix_kv") is not None:  # prefix keys: the content score only
            bias = jnp.pad(bias, ((0, 0), (0, 0), (0, 0), (kw["prefix_kv"].shape[3], 0)))
        return super().__call__(x, mask, rows, bias=bias, **kw)


class MPNetModel(roberta.RobertaModel):
    encoder_class = Encoder


class MPNet(roberta.Roberta):
    """MPNet with the head for `task` (None, seq_cls, token_cls)."""

    base_prefix = BASE_PREFIX
    peft_runs_prefix = False  # transformers' MPNet takes no past_key_values

    @staticmethod
    def build_base(c: Config, p: Precision, rngs: nnx.Rngs) -> MPNetModel:
        return MPNetModel(c, p, rngs)


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> MPNet:
    return MPNet(c, task, num_labels, p, rngs)
