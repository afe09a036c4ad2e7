"""ModernBERT (pre-LayerNorm encoder without biases, rotary positions, a GeGLU MLP; local attention within a window
in most layers, global attention every `global_attn_every_n_layers`-th, each kind with its own RoPE base).

Module tree mirrors transformers' (`model.layers.0.attn.Wqkv`, `head.dense`, `classifier`) so checkpoint names map
one to one; torch nn.Linear weights are `[out, in]`. transformers' ModernBERT takes no past_key_values, so PEFT runs
only embedding prompts on it; jsoft's prefixes are keys every query sees, local or global, without rotation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jsoft.models import heads, llama, rotary
from jsoft.models.base import hf_name, is_kernel
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
    sliding_window,
    split_heads,
)

TASKS = (None, "seq_cls", "token_cls")
BASE_PREFIX = "model"
POOLINGS = ("cls", "mean")


@dataclasses.dataclass
class Config(llama.Config):
    """Llama's config (its RoPE fields and functions, `sliding_layers`, `local_rope_theta`) with ModernBERT's own
    fields; `sliding_window` is the local layers' half window (transformers': local_attention // 2)."""

    norm_eps: float = 1e-5
    norm_bias: bool = False
    embedding_dropout: float = 0.0
    mlp_dropout: float = 0.0
    classifier_pooling: str = "cls"
    classifier_activation: str = "gelu"
    classifier_bias: bool = False

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        d, h, n = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
        if d % h:
            raise ValueError(f"config.json hidden_size={d} is not a multiple of num_attention_heads={h}")
        pooling = hf.get("classifier_pooling", "cls")
        if pooling not in POOLINGS:
            raise ValueError(f"config.json classifier_pooling={pooling!r} is not valid; choose one of {POOLINGS}")
        kinds = hf.get("layer_types") or ["sliding_attention" if i % hf.get("global_attn_every_n_layers", 3)
                                          else "full_attention" for i in range(n)]
        if len(kinds) != n or not set(kinds) <= {"sliding_attention", "full_attention"}:
            raise ValueError(f"config.json layer_types={kinds!r}: expected {n} entries (num_hidden_layers), each "
                             "'sliding_attention' or 'full_attention'")
        ropes = hf.get("rope_parameters") or {}
        global_rope = dict(ropes.get("full_attention") or {"rope_theta": hf.get("global_rope_theta", 160000.0)})
        local_rope = dict(ropes.get("sliding_attention") or {"rope_theta": hf.get("local_rope_theta", 10000.0)})
        for kind, rope in (("full_attention", global_rope), ("sliding_attention", local_rope)):
            if rope.get("rope_type", "default") != "default":
                raise ValueError(f"config.json rope_parameters[{kind!r}]['rope_type']={rope['rope_type']!r} is not "
                                 "supported by jsoft's ModernBERT; valid: 'default'")
        dropout = lambda key: float(hf.get(key) or 0.0)
        return cls(
            model_type="modernbert", vocab_size=hf["vocab_size"], hidden_size=d, num_layers=n, num_heads=h,
            num_kv_heads=h, head_dim=d // h, pad_token_id=hf.get("pad_token_id"), eos_token_id=hf.get("eos_token_id"),
            bos_token_id=hf.get("bos_token_id"), intermediate_size=hf["intermediate_size"],
            activation=hf.get("hidden_activation", "gelu"), max_positions=hf.get("max_position_embeddings", 8192),
            rope_theta=float(global_rope.get("rope_theta", 160000.0)),
            local_rope_theta=float(local_rope.get("rope_theta", 10000.0)),
            sliding_window=hf.get("local_attention", 128) // 2,
            sliding_layers=tuple(k == "sliding_attention" for k in kinds),
            attention_bias=bool(hf.get("attention_bias", False)), mlp_bias=bool(hf.get("mlp_bias", False)),
            attn_dropout=dropout("attention_dropout"), classifier_dropout=dropout("classifier_dropout"),
            norm_eps=float(hf.get("norm_eps", 1e-5)), norm_bias=bool(hf.get("norm_bias", False)),
            embedding_dropout=dropout("embedding_dropout"), mlp_dropout=dropout("mlp_dropout"),
            classifier_pooling=pooling, classifier_activation=hf.get("classifier_activation", "gelu"),
            classifier_bias=bool(hf.get("classifier_bias", False)),
        )


def norm(c: Config, p: Precision) -> LayerNorm:
    return LayerNorm(c.hidden_size, c.norm_eps, p, bias=c.norm_bias)


class Embeddings(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c, self.dtype = c, p.dtype
        self.tok_embeddings = embed(c.vocab_size, c.hidden_size, p, rngs=rngs)
        self.norm = norm(c, p)

    def __call__(self, inputs_embeds, drop: DropoutRng):
        return drop(self.norm(inputs_embeds).astype(self.dtype), self.c.embedding_dropout)


class Attention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.Wqkv = dense(c.hidden_size, 3 * c.hidden_size, ("embed", "joined_kv"), p, bias=c.attention_bias,
                          rngs=rngs)
        self.Wo = dense(c.hidden_size, c.hidden_size, ("joined_kv", "embed"), p, bias=c.attention_bias, rngs=rngs)

    def __call__(self, x, mask, rope: dict, *, layer, prefix_kv, prefix_mask, drop: DropoutRng):
        c, local = self.c, self.c.is_sliding(layer)
        q, k, v = (split_heads(t, c.num_heads) for t in jnp.split(self.Wqkv(x), 3, axis=-1))
        cos_sin = rope["local" if local else "global"]
        q, k = rotary.apply(q, *cos_sin), rotary.apply(k, *cos_sin)
        if local:  # the window over the input's keys; a prefix is outside it, seen by every query
            mask = sliding_window(mask, c.sliding_window, 0, bidirectional=True)
        k, v, mask, _ = self_attention_kv(k, v, mask, layer=layer, cache=None, prefix_kv=prefix_kv,
                                          prefix_mask=prefix_mask)
        out = dot_product_attention(q, k, v, mask, scale=c.head_dim ** -0.5, dropout=drop,
                                    dropout_rate=c.attn_dropout)
        return drop(self.Wo(merge_heads(out)), c.attn_dropout)


class MLP(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c, self.act = c, activation(c.activation)
        self.Wi = dense(c.hidden_size, 2 * c.intermediate_size, ("embed", "mlp"), p, bias=c.mlp_bias, rngs=rngs)
        self.Wo = dense(c.intermediate_size, c.hidden_size, ("mlp", "embed"), p, bias=c.mlp_bias, rngs=rngs)

    def __call__(self, x, drop: DropoutRng):
        h, gate = jnp.split(self.Wi(x), 2, axis=-1)
        return self.Wo(drop(self.act(h) * gate, self.c.mlp_dropout))


class Layer(nnx.Module):
    """Pre-norm; the first layer has no attention norm (the embeddings' norm precedes it)."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs, index: int):
        self.dtype = p.dtype
        self.attn_norm = norm(c, p) if index else None
        self.attn = Attention(c, p, rngs)
        self.mlp_norm = norm(c, p)
        self.mlp = MLP(c, p, rngs)

    def __call__(self, x, mask, rope, **kw):
        h = x if self.attn_norm is None else self.attn_norm(x).astype(self.dtype)
        x = x + self.attn(h, mask, rope, **kw)
        return x + self.mlp(self.mlp_norm(x).astype(self.dtype), kw["drop"])


class ModernBertModel(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c, self.dtype = c, p.dtype
        self.embeddings = Embeddings(c, p, rngs)
        self.layers = nnx.List([Layer(c, p, rngs, i) for i in range(c.num_layers)])
        self.final_norm = norm(c, p)

    def __call__(self, inputs_embeds, attention_mask, position_ids, prefix_kv, prefix_mask, drop: DropoutRng):
        B, T = inputs_embeds.shape[:2]
        if position_ids is None:  # from 0 whatever the prefix, which takes no positions
            position_ids = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None], (B, T))
        rope = {"global": rotary.cos_sin(self.c, position_ids, self.dtype),
                "local": rotary.cos_sin(dataclasses.replace(self.c, rope_theta=self.c.local_rope_theta),
                                        position_ids, self.dtype)}
        x = self.embeddings(inputs_embeds, drop)
        mask = attention_mask_4d(attention_mask, T, T, causal=False)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, rope, layer=i, prefix_kv=prefix_kv, prefix_mask=prefix_mask, drop=drop)
        return self.final_norm(x).astype(self.dtype)


class PredictionHead(nnx.Module):
    """transformers' ModernBertPredictionHead: dense, activation, norm (frozen: the checkpoint's)."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.dtype, self.act = p.dtype, activation(c.classifier_activation)
        self.dense = dense(c.hidden_size, c.hidden_size, ("embed", None), p, bias=c.classifier_bias, rngs=rngs)
        self.norm = norm(c, p)

    def __call__(self, x):
        return self.norm(self.act(self.dense(x))).astype(self.dtype)


class ModernBert(nnx.Module):
    """ModernBERT with the head for `task` (None, seq_cls, token_cls)."""

    cls_token = "first"  # "cls" pooling reads slot 0 (`cls_index` overrides it)
    peft_runs_prefix = False  # transformers' ModernBERT takes no past_key_values

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.config, self.task, self.num_labels = c, task, num_labels
        self.model = ModernBertModel(c, p, rngs)
        if task in ("seq_cls", "token_cls"):
            self.head = PredictionHead(c, p, rngs)
            self.classifier = dense(c.hidden_size, num_labels, ("embed", None), p, rngs=rngs)
        self.head_name = "classifier" if task in ("seq_cls", "token_cls") else None

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.model.embeddings.tok_embeddings

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None,
                 inputs_embeds=None, prefix_kv=None, prefix_mask=None, cache=None,
                 dropout_rng: jax.Array | None = None, head=None, cls_index=None) -> ModelOutput:
        """`token_type_ids` are ignored (ModernBERT has none); `head` replaces the classifier (a PEFT adapter's
        trained copy of it); `cls_index [B]` is the slot "cls" pooling reads (default 0); "mean" pooling averages
        the tokens `attention_mask` keeps (virtual tokens included, as with PEFT)."""
        if cache is not None:
            raise ValueError("ModernBERT is an encoder: it takes no decoding cache (cache must be None)")
        drop = DropoutRng(dropout_rng)
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        h = self.model(inputs_embeds, attention_mask, position_ids, prefix_kv, prefix_mask, drop)
        if self.task == "seq_cls":
            pooled = self.pool(h, attention_mask, cls_index)
            logits = (head or self.classifier)(drop(self.head(pooled), self.config.classifier_dropout))
            return ModelOutput(logits=logits.astype(jnp.float32), last_hidden_state=h)
        if self.task == "token_cls":
            logits = (head or self.classifier)(drop(self.head(h), self.config.classifier_dropout))
            return ModelOutput(logits=logits.astype(jnp.float32), last_hidden_state=h)
        return ModelOutput(last_hidden_state=h)

    def pool(self, h_BxTxD, attention_mask, cls_index):
        if self.config.classifier_pooling == "cls":
            return heads.pool_at(h_BxTxD, 0 if cls_index is None else cls_index)
        keep = jnp.ones(h_BxTxD.shape[:2]) if attention_mask is None else jnp.asarray(attention_mask)
        keep = keep.astype(jnp.float32)[..., None]
        return ((h_BxTxD.astype(jnp.float32) * keep).sum(1) / keep.sum(1)).astype(h_BxTxD.dtype)


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> ModernBert:
    return ModernBert(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]
