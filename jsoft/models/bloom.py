"""BLOOM (pre-LayerNorm decoder with ALiBi: no position embeddings; a linear bias on each key's position).

Module tree mirrors transformers' (`transformer.h.0.self_attention.query_key_value`, `score`, `classifier`) so
checkpoint names map one to one. The fused query/key/value projection is interleaved per head, `[H, 3, K]`.

A key's ALiBi position is the count of attendable keys before it (transformers' `cumsum(mask) - 1`), over the
prefix, then the input or the decoding cache: PEFT's prefixes and virtual tokens take positions 0..V-1 and
left pads none, so position ids are not used."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jsoft.models import heads
from jsoft.models.base import TransformerConfig, hf_name, is_kernel
from jsoft.models.layers import (
    DropoutRng,
    KVCache,
    LayerNorm,
    Precision,
    attention_mask_4d,
    dense,
    dot_product_attention,
    embed,
    merge_heads,
    run_layers,
    self_attention_kv,
)
from jsoft.models.ops import gelu_tanh

TASKS = (None, "causal_lm", "seq_cls", "token_cls")
BASE_PREFIX = "transformer"


@dataclasses.dataclass
class Config(TransformerConfig):
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.0
    attn_dropout: float = 0.0
    classifier_dropout: float = 0.0
    residual_post_layernorm: bool = False  # apply_residual_connection_post_layernorm
    tie_word_embeddings: bool = True  # False: a separate `lm_head.weight` in the checkpoint

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        d = hf.get("n_embed") or hf.get("hidden_size", 64)  # BLOOM's own config.json spells it n_embed
        h = hf.get("n_head", hf.get("num_attention_heads", 8))
        if d % h:
            raise ValueError(f"config.json hidden_size={d} is not a multiple of n_head={h}")
        return cls(
            model_type="bloom", vocab_size=hf["vocab_size"], hidden_size=d,
            num_layers=hf.get("n_layer", hf.get("num_hidden_layers", 2)), num_heads=h, num_kv_heads=h,
            head_dim=d // h, pad_token_id=hf.get("pad_token_id"), eos_token_id=hf.get("eos_token_id"),
            bos_token_id=hf.get("bos_token_id"), layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            hidden_dropout=hf.get("hidden_dropout", 0.0), attn_dropout=hf.get("attention_dropout", 0.0),
            classifier_dropout=heads.classifier_dropout_rate(hf, "hidden_dropout"),
            residual_post_layernorm=bool(hf.get("apply_residual_connection_post_layernorm", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        )


def alibi_slopes(num_heads: int) -> np.ndarray:
    """The per-head slopes of ALiBi (Press et al.), transformers' `_get_alibi_slopes`: a geometric series over the
    largest power of two <= H heads, the rest interleaved from the series of twice as many."""
    n = 2 ** math.floor(math.log2(num_heads))
    slopes = (2.0 ** (-8.0 / n)) ** np.arange(1, n + 1)
    if n != num_heads:
        extra = (2.0 ** (-4.0 / n)) ** np.arange(1, 1 + 2 * min(n, num_heads - n), 2)
        slopes = np.concatenate([slopes, extra])
    return slopes.astype(np.float32)


def alibi_bias(key_mask_BxS: jax.Array, num_heads: int, rounding=None) -> jax.Array:
    """fp32 `[B, H, 1, S]`: each head's slope times the key's position, the number of attendable keys before it
    (0 for masked keys). Softmax is shift-invariant per query, so this equals the distance-based bias. `rounding`
    (Falcon's bf16): slopes and products rounded to it, as transformers computes them."""
    m = key_mask_BxS.astype(jnp.float32)
    positions = (jnp.cumsum(m, axis=-1) - 1.0) * m
    slopes = jnp.asarray(alibi_slopes(num_heads))
    if rounding is not None:  # transformers casts both to it before multiplying
        slopes, positions = (t.astype(rounding).astype(jnp.float32) for t in (slopes, positions))
    bias = slopes[None, :, None, None] * positions[:, None, None, :]
    return bias if rounding is None else bias.astype(rounding).astype(jnp.float32)


def alibi_stack_inputs(attention_mask, T: int, B: int, prefix_kv, prefix_mask, cache: KVCache | None,
                       num_heads: int, rounding=None) -> tuple[jax.Array, jax.Array]:
    """What an ALiBi decoder stack (BLOOM, falcon-rw) attends with: the causal mask over the input or the cache's
    slots, and `alibi_bias` over the prefix's keys, then those."""
    S = T if cache is None else cache.slots
    mask = attention_mask_4d(attention_mask, T, S, causal=True, q_offset=0 if cache is None else cache.index)
    keys = [jnp.ones((B, S), bool) if attention_mask is None else jnp.asarray(attention_mask)]
    if prefix_kv is not None:
        V = prefix_kv.shape[3]
        keys.insert(0, jnp.ones((B, V), bool) if prefix_mask is None else jnp.asarray(prefix_mask))
    return mask, alibi_bias(jnp.concatenate([k.astype(bool) for k in keys], axis=1), num_heads, rounding)


class Attention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.query_key_value = dense(c.hidden_size, 3 * c.hidden_size, ("embed", "joined_kv"), p, rngs=rngs)
        self.dense = dense(c.hidden_size, c.hidden_size, ("joined_kv", "embed"), p, rngs=rngs)

    def __call__(self, x, mask, bias, *, layer, cache, prefix_kv, prefix_mask, drop: DropoutRng):
        B, T, _ = x.shape
        qkv = self.query_key_value(x).reshape(B, T, self.c.num_heads, 3, self.c.head_dim)
        q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
        k, v, mask, new_cache = self_attention_kv(k, v, mask, layer=layer, cache=cache,
                                                  prefix_kv=prefix_kv, prefix_mask=prefix_mask)
        out = dot_product_attention(q, k, v, mask, scale=self.c.head_dim ** -0.5, bias=bias, dropout=drop,
                                    dropout_rate=self.c.attn_dropout)
        return drop(self.dense(merge_heads(out)), self.c.hidden_dropout), new_cache


class MLP(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.dense_h_to_4h = dense(c.hidden_size, 4 * c.hidden_size, ("embed", "mlp"), p, rngs=rngs)
        self.dense_4h_to_h = dense(4 * c.hidden_size, c.hidden_size, ("mlp", "embed"), p, rngs=rngs)

    def __call__(self, x, drop: DropoutRng):
        return drop(self.dense_4h_to_h(gelu_tanh(self.dense_h_to_4h(x))), self.c.hidden_dropout)


class Block(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.post_ln_residual = c.residual_post_layernorm
        self.input_layernorm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)
        self.self_attention = Attention(c, p, rngs)
        self.post_attention_layernorm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)
        self.mlp = MLP(c, p, rngs)
        self.dtype = p.dtype

    def __call__(self, x, mask, bias, **kw):
        h = self.input_layernorm(x).astype(self.dtype)
        a, new_cache = self.self_attention(h, mask, bias, **kw)
        x = (h if self.post_ln_residual else x) + a
        h = self.post_attention_layernorm(x).astype(self.dtype)
        return (h if self.post_ln_residual else x) + self.mlp(h, kw["drop"]), new_cache


class BloomModel(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.dtype = p.dtype
        self.word_embeddings = embed(c.vocab_size, c.hidden_size, p, rngs=rngs)
        self.word_embeddings_layernorm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)
        self.h = nnx.List([Block(c, p, rngs) for _ in range(c.num_layers)])
        self.ln_f = LayerNorm(c.hidden_size, c.layer_norm_eps, p)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                 prefix_kv=None, prefix_mask=None, cache: KVCache | None = None, drop=None):
        del position_ids  # ALiBi positions come from the key mask
        drop = drop or DropoutRng(None)
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        B, T = inputs_embeds.shape[:2]
        x = self.word_embeddings_layernorm(inputs_embeds).astype(self.dtype)
        mask, bias = alibi_stack_inputs(attention_mask, T, B, prefix_kv, prefix_mask, cache, self.c.num_heads)
        x, cache = run_layers(self.h, x, mask, bias, cache=cache, prefix_kv=prefix_kv,
                              prefix_mask=prefix_mask, drop=drop)
        return self.ln_f(x).astype(self.dtype), cache


class Bloom(heads.DecoderOnlyLM):
    """BLOOM with the head for `task` (None, causal_lm, seq_cls, token_cls)."""

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.transformer = BloomModel(c, p, rngs)
        self.add_heads(c, task, num_labels, p, rngs)

    @property
    def decoder(self) -> BloomModel:
        return self.transformer

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.transformer.word_embeddings


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> Bloom:
    return Bloom(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]
