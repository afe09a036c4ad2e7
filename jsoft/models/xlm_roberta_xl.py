"""XLM-RoBERTa-XL / -XXL (3.5B / 10.7B): RoBERTa's encoder, positions and heads with pre-LayerNorm layers: a norm
before attention (`self_attn_layer_norm`) and before the MLP (the layer's `LayerNorm`), none on the embeddings, and
one after the last layer (`encoder.LayerNorm`).

Module tree mirrors transformers' (`roberta.encoder.layer.0.attention.self_attn_layer_norm`, `classifier.dense`)."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jsoft.models import bert, roberta
from jsoft.models.layers import DropoutRng, LayerNorm, Precision, dense

TASKS = roberta.TASKS
BASE_PREFIX = roberta.BASE_PREFIX
checkpoint_key = roberta.checkpoint_key


@dataclasses.dataclass
class Config(roberta.Config):
    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        return dataclasses.replace(super().from_hf({**hf, "model_type": "roberta"}), model_type="xlm-roberta-xl")


class Embeddings(roberta.Embeddings):
    normalized = False


class DenseResidual(nnx.Module):
    """transformers' XLMRobertaXLSelfOutput and XLMRobertaXLOutput: dropout(dense(h)) + residual (no norm)."""

    def __init__(self, c: Config, d_in: int, names: tuple, p: Precision, rngs: nnx.Rngs):
        self.c, self.dtype = c, p.dtype
        self.dense = dense(d_in, c.hidden_size, names, p, rngs=rngs)

    def __call__(self, h, residual, drop: DropoutRng):
        return (drop(self.dense(h), self.c.hidden_dropout) + residual).astype(self.dtype)


class Attention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.dtype = p.dtype
        self.self = bert.SelfAttention(c, p, rngs)
        self.output = DenseResidual(c, c.hidden_size, ("joined_kv", "embed"), p, rngs)
        self.self_attn_layer_norm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)

    def __call__(self, x, mask, **kw):
        rows = kw.get("rows")
        h = self.self(self.self_attn_layer_norm(x).astype(self.dtype), mask, **kw)
        return self.output(h, x if rows is None else bert.take_rows(x, rows), kw["drop"])


class Layer(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.dtype = p.dtype
        self.attention = Attention(c, p, rngs)
        self.LayerNorm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)
        self.intermediate = bert.Intermediate(c, p, rngs)
        self.output = DenseResidual(c, c.inner_size, ("mlp", "embed"), p, rngs)

    def __call__(self, x, mask, **kw):
        x = self.attention(x, mask, **kw)
        return self.output(self.intermediate(self.LayerNorm(x).astype(self.dtype)), x, kw["drop"])


class Encoder(bert.Encoder):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        super().__init__(c, p, rngs, block=Layer)
        self.dtype = p.dtype
        self.LayerNorm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)

    def __call__(self, x, mask, rows=None, **kw):
        return self.LayerNorm(super().__call__(x, mask, rows, **kw)).astype(self.dtype)


class XLMRobertaXLModel(roberta.RobertaModel):
    embeddings_class, encoder_class = Embeddings, Encoder


class XLMRobertaXL(roberta.Roberta):
    """XLM-RoBERTa-XL with the head for `task` (None, seq_cls, token_cls)."""

    @staticmethod
    def build_base(c: Config, p: Precision, rngs: nnx.Rngs) -> XLMRobertaXLModel:
        return XLMRobertaXLModel(c, p, rngs)


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> XLMRobertaXL:
    return XLMRobertaXL(c, task, num_labels, p, rngs)
