"""OPT (facebook/opt-125m .. 66b): a GPT-2-like decoder with ReLU, learned positions offset by 2, and (opt-350m)
post-LayerNorm layers with word embeddings projected in and out of a wider stack.

Module tree mirrors transformers' (`model.decoder.layers.0.self_attn.q_proj`, `lm_head`, `score`) so checkpoint
names map one to one.

A token's position is the count of attendable keys before it (transformers' `cumsum(mask) * mask - 1`), over
the prefix, then the input or the decoding cache: PEFT's prefixes and virtual tokens take positions 0..V-1 and
left pads none, so position ids are not used (as BLOOM's ALiBi)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jsoft.models import heads
from jsoft.models.base import TransformerConfig, check_position_count, hf_name, is_kernel
from jsoft.models.layers import (
    DropoutRng,
    KVCache,
    LayerNorm,
    Precision,
    activation,
    attention_mask_4d,
    dense,
    dot_product_attention,
    embed,
    merge_heads,
    run_layers,
    self_attention_kv,
    split_heads,
)

Array = jax.Array

TASKS = (None, "causal_lm", "seq_cls")
BASE_PREFIX = "model"
POSITION_OFFSET = 2  # OPTLearnedPositionalEmbedding: position p reads row p + 2 (a pad's -1 reads row 1)


@dataclasses.dataclass
class Config(TransformerConfig):
    ffn_dim: int = 3072
    word_embed_proj_dim: int = 768  # the word embeddings' width (opt-350m: 512, projected to hidden_size 1024)
    max_position_embeddings: int = 2048
    do_layer_norm_before: bool = True  # False: post-LN layers and no final LayerNorm (opt-350m)
    final_layer_norm: bool = True
    enable_bias: bool = True
    activation_function: str = "relu"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = True  # False: a separate `lm_head.weight` in the checkpoint

    @property
    def position_table_size(self) -> int:
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        d, h = hf.get("hidden_size", 768), hf.get("num_attention_heads", 12)
        if d % h:
            raise ValueError(f"config.json hidden_size={d} is not a multiple of num_attention_heads={h}")
        if hf.get("layer_norm_elementwise_affine", True) is False:
            raise ValueError("OPT config option layer_norm_elementwise_affine=False is not supported by jsoft")
        act = hf.get("activation_function", "relu")
        activation(act)  # fail early on an unsupported activation
        pre_ln = hf.get("do_layer_norm_before", True) is not False
        return cls(
            model_type="opt", vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf.get("num_hidden_layers", 12),
            num_heads=h, num_kv_heads=h, head_dim=d // h, pad_token_id=hf.get("pad_token_id", 1),
            eos_token_id=hf.get("eos_token_id", 2), bos_token_id=hf.get("bos_token_id", 2),
            ffn_dim=hf.get("ffn_dim", 3072), word_embed_proj_dim=hf.get("word_embed_proj_dim") or d,
            max_position_embeddings=hf.get("max_position_embeddings", 2048), do_layer_norm_before=pre_ln,
            final_layer_norm=pre_ln and not hf.get("_remove_final_layer_norm", False),
            enable_bias=hf.get("enable_bias", True) is not False, activation_function=act,
            dropout=hf.get("dropout", 0.1), attention_dropout=hf.get("attention_dropout", 0.0),
            tie_word_embeddings=hf.get("tie_word_embeddings", True) is not False,
        )


def mask_positions(key_mask_BxS: Array, start: Array | int, T: int) -> Array:
    """int32 `[B, T]`: positions of the T queries at key slots start.. (transformers' OPT rule): the number of
    attendable keys before each one, -1 for a masked one."""
    m = key_mask_BxS.astype(jnp.int32)
    positions = jnp.cumsum(m, axis=-1) * m - 1
    return jax.lax.dynamic_slice_in_dim(positions, start, T, axis=1)


class Attention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        d, bias = c.hidden_size, c.enable_bias
        self.q_proj = dense(d, d, ("embed", "joined_kv"), p, bias=bias, rngs=rngs)
        self.k_proj = dense(d, d, ("embed", "joined_kv"), p, bias=bias, rngs=rngs)
        self.v_proj = dense(d, d, ("embed", "joined_kv"), p, bias=bias, rngs=rngs)
        self.out_proj = dense(d, d, ("joined_kv", "embed"), p, bias=bias, rngs=rngs)

    def __call__(self, x, mask, *, layer, cache, prefix_kv, prefix_mask, drop: DropoutRng):
        n = self.c.num_heads
        q, k, v = (split_heads(proj(x), n) for proj in (self.q_proj, self.k_proj, self.v_proj))
        k, v, mask, new_cache = self_attention_kv(k, v, mask, layer=layer, cache=cache, prefix_kv=prefix_kv,
                                                  prefix_mask=prefix_mask)
        out = dot_product_attention(q, k, v, mask, scale=self.c.head_dim ** -0.5, dropout=drop,
                                    dropout_rate=self.c.attention_dropout)
        return self.out_proj(merge_heads(out)), new_cache


class Layer(nnx.Module):
    """`OPTDecoderLayer`: pre-norm (or, opt-350m, post-norm) residuals around attention and the ReLU MLP."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c, self.dtype = c, p.dtype
        self.self_attn = Attention(c, p, rngs)
        self.self_attn_layer_norm = LayerNorm(c.hidden_size, 1e-5, p)
        self.fc1 = dense(c.hidden_size, c.ffn_dim, ("embed", "mlp"), p, bias=c.enable_bias, rngs=rngs)
        self.fc2 = dense(c.ffn_dim, c.hidden_size, ("mlp", "embed"), p, bias=c.enable_bias, rngs=rngs)
        self.final_layer_norm = LayerNorm(c.hidden_size, 1e-5, p)
        self.act = activation(c.activation_function)

    def __call__(self, x, mask, **kw):
        pre, drop = self.c.do_layer_norm_before, kw["drop"]
        norm = lambda ln, h: ln(h).astype(self.dtype)
        a, new_cache = self.self_attn(norm(self.self_attn_layer_norm, x) if pre else x, mask, **kw)
        x = x + drop(a, self.c.dropout)
        if not pre:
            x = norm(self.self_attn_layer_norm, x)
        h = self.fc2(self.act(self.fc1(norm(self.final_layer_norm, x) if pre else x)))
        x = x + drop(h, self.c.dropout)
        return (x if pre else norm(self.final_layer_norm, x)), new_cache


class Decoder(nnx.Module):
    """`OPTDecoder`: embeddings (projected in), the layers, the final LayerNorm, the projection out."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c, self.dtype = c, p.dtype
        self.embed_tokens = embed(c.vocab_size, c.word_embed_proj_dim, p, rngs=rngs)
        self.embed_positions = embed(c.max_position_embeddings + POSITION_OFFSET, c.hidden_size, p, rngs=rngs,
                                     names=(None, "embed"))
        if c.word_embed_proj_dim != c.hidden_size:
            self.project_in = dense(c.word_embed_proj_dim, c.hidden_size, (None, "embed"), p, bias=False, rngs=rngs)
            self.project_out = dense(c.hidden_size, c.word_embed_proj_dim, ("embed", None), p, bias=False, rngs=rngs)
        self.layers = nnx.List([Layer(c, p, rngs) for _ in range(c.num_layers)])
        if c.final_layer_norm:
            self.final_layer_norm = LayerNorm(c.hidden_size, 1e-5, p)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                 prefix_kv=None, prefix_mask=None, cache: KVCache | None = None, drop=None):
        del position_ids  # positions come from the key mask
        c, drop = self.c, drop or DropoutRng(None)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        B, T = inputs_embeds.shape[:2]
        S = T if cache is None else cache.slots
        keys = jnp.ones((B, S), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        V = 0 if prefix_kv is None else prefix_kv.shape[3]
        if V:
            keys = jnp.concatenate([jnp.ones((B, V), bool) if prefix_mask is None else prefix_mask.astype(bool), keys],
                                   axis=1)
        if cache is None:
            check_position_count(c, V + T)
        positions = mask_positions(keys, V + (0 if cache is None else cache.index), T)
        x = inputs_embeds if c.word_embed_proj_dim == c.hidden_size else self.project_in(inputs_embeds)
        x = drop((x + self.embed_positions(positions + POSITION_OFFSET)).astype(self.dtype), c.dropout)
        mask = attention_mask_4d(attention_mask, T, S, causal=True, q_offset=0 if cache is None else cache.index)
        x, cache = run_layers(self.layers, x, mask, cache=cache, prefix_kv=prefix_kv, prefix_mask=prefix_mask,
                              drop=drop)
        if c.final_layer_norm:
            x = self.final_layer_norm(x).astype(self.dtype)
        return (x if c.word_embed_proj_dim == c.hidden_size else self.project_out(x)), cache


class OPTModel(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.decoder = Decoder(c, p, rngs)


class OPT(heads.DecoderOnlyLM):
    """OPT with the head for `task` (None, causal_lm, seq_cls)."""

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.model = OPTModel(c, p, rngs)
        self.add_heads(c, task, num_labels, p, rngs, width=c.word_embed_proj_dim)

    @property
    def decoder(self) -> Decoder:
        return self.model.decoder

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.model.decoder.embed_tokens


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> OPT:
    return OPT(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]
