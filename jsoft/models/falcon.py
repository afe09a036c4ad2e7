"""Falcon (falcon-7b / 40b / 180b, Falcon 2 11B, falcon-rw-1b / 7b): LayerNorm decoders with one fused
query / key / value projection, rotary embeddings or (falcon-rw) ALiBi, and parallel or sequential residuals.

The fused projection is laid out in key / value groups (`layers.split_grouped_qkv`). Three checkpoint generations
are that layout with G = `num_kv_heads` (`new_decoder_architecture`), G = 1 (`multi_query`: falcon-7b's one key /
value head) or G = N (falcon-rw). transformers repeats the new architecture's keys and values over the heads of their
group before its cache, so jsoft does too: a prefix (PEFT's, of `num_attention_heads` heads) has a key per head there,
and one (`multi_query`) or one per head otherwise.

Module tree mirrors transformers' (`transformer.h.0.self_attention.query_key_value`, `lm_head`, `score`,
`classifier`)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from jsoft.models import bloom, heads, rotary, stablelm
from jsoft.models.base import hf_name, is_kernel
from jsoft.models.layers import (
    DropoutRng,
    KVCache,
    Precision,
    activation,
    dense,
    dot_product_attention,
    embed,
    merge_heads,
    run_layers,
    self_attention_kv,
    split_grouped_qkv,
)

TASKS = (None, "causal_lm", "seq_cls", "token_cls")
BASE_PREFIX = "transformer"


@dataclasses.dataclass
class Config(stablelm.Config):
    """StableLM's LayerNorm-decoder config with Falcon's fused-projection groups, ALiBi and parallel norms."""

    kv_groups: int = 1  # G of the fused projection's `[G, N / G + 2, K]` layout
    alibi: bool = False  # ALiBi biases instead of rotary embeddings (falcon-rw)
    parallel_norms: int = 1  # parallel layers: one input_layernorm, or 2: ln_attn and ln_mlp

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        d, n = hf.get("hidden_size") or hf.get("n_embed"), hf["num_attention_heads"]
        if d % n:
            raise ValueError(f"config.json hidden_size={d} is not a multiple of num_attention_heads={n}")
        new_arch, parallel = bool(hf.get("new_decoder_architecture")), bool(hf.get("parallel_attn", True))
        norms = hf.get("num_ln_in_parallel_attn") or (2 if new_arch else 1)
        if new_arch and not parallel:
            raise ValueError("config.json new_decoder_architecture=true needs parallel_attn=true: transformers' "
                             "Falcon layer has no norms for a sequential one")
        if parallel and (norms not in (1, 2) or norms == 2 and not new_arch):
            raise ValueError(f"config.json num_ln_in_parallel_attn={norms} is not valid here; choose 1, or 2 with "
                             "new_decoder_architecture=true")
        if new_arch:
            groups, kv_heads = hf.get("num_kv_heads") or n, n
            if n % groups:
                raise ValueError(f"config.json num_attention_heads={n} is not a multiple of num_kv_heads={groups}")
        else:
            groups = 1 if hf.get("multi_query", True) else n
            kv_heads = groups
            if groups == n and hf.get("num_kv_heads") not in (None, n):  # transformers' layer fails on it
                raise ValueError(f"config.json num_kv_heads={hf['num_kv_heads']} needs new_decoder_architecture=true "
                                 f"or multi_query=true; without either every one of the {n} heads has a key")
        alibi, bias = bool(hf.get("alibi")), bool(hf.get("bias"))
        rope = rotary.from_hf(hf)
        attention_dropout = float(hf.get("attention_dropout") or 0.0)
        return cls(
            model_type="falcon", vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf["num_hidden_layers"],
            num_heads=n, num_kv_heads=kv_heads, head_dim=d // n, kv_groups=groups, alibi=alibi,
            pad_token_id=hf.get("pad_token_id"), eos_token_id=hf.get("eos_token_id"),
            bos_token_id=hf.get("bos_token_id"), intermediate_size=hf.get("ffn_hidden_size") or 4 * d,
            activation=hf.get("activation") or "gelu", max_positions=hf.get("max_position_embeddings", 2048),
            **rotary.config_fields(hf, rope, d // n), attention_bias=bias, attention_out_bias=bias, mlp_bias=bias,
            # transformers drops attention probabilities only with ALiBi, and drops the attention output of a
            # sequential layer at attention_dropout
            attn_dropout=attention_dropout if alibi else 0.0, resid_dropout=attention_dropout,
            hidden_dropout=float(hf.get("hidden_dropout") or 0.0),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
            classifier_dropout=heads.classifier_dropout_rate(hf, "hidden_dropout"),
            layer_norm_eps=hf.get("layer_norm_epsilon") or 1e-5, parallel_residual=parallel,
            parallel_norms=norms,
        )


class Attention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        width = (c.num_heads + 2 * c.kv_groups) * c.head_dim
        self.query_key_value = dense(c.hidden_size, width, ("embed", "joined_kv"), p, bias=c.attention_bias,
                                     rngs=rngs)
        self.dense = dense(c.num_heads * c.head_dim, c.hidden_size, ("joined_kv", "embed"), p,
                           bias=c.attention_out_bias, rngs=rngs)

    def __call__(self, x, mask, positions, *, layer, cache, prefix_kv, prefix_mask, drop: DropoutRng):
        """`positions`: the ALiBi bias `[B, H, 1, S]`, or RoPE's `{"global": (cos, sin)}`."""
        c = self.c
        G, N, K = c.kv_groups, c.num_heads, c.head_dim
        q, k, v = split_grouped_qkv(self.query_key_value(x), G, K)
        if c.num_kv_heads != G:  # the new architecture's cache holds a key and value per head
            k, v = jnp.repeat(k, N // G, axis=2), jnp.repeat(v, N // G, axis=2)
        if not c.alibi:
            cos_sin = positions["global"]
            q, k = rotary.apply(q, *cos_sin), rotary.apply(k, *cos_sin)
        k, v, mask, new_cache = self_attention_kv(k, v, mask, layer=layer, cache=cache,
                                                  prefix_kv=prefix_kv, prefix_mask=prefix_mask)
        # transformers adds ALiBi to the unscaled scores, so it is scaled with them
        scale = K ** -0.5
        out = dot_product_attention(q, k, v, mask, scale=scale, bias=positions * scale if c.alibi else None,
                                    dropout=drop, dropout_rate=c.attn_dropout)
        return self.dense(merge_heads(out)), new_cache


class MLP(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.act = activation(c.activation)
        self.dense_h_to_4h = dense(c.hidden_size, c.intermediate_size, ("embed", "mlp"), p, bias=c.mlp_bias, rngs=rngs)
        self.dense_4h_to_h = dense(c.intermediate_size, c.hidden_size, ("mlp", "embed"), p, bias=c.mlp_bias, rngs=rngs)

    def __call__(self, x):
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class DecoderLayer(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.dtype = p.dtype
        if c.parallel_residual and c.parallel_norms == 2:
            self.ln_attn, self.ln_mlp = stablelm.layer_norm(c, p), stablelm.layer_norm(c, p)
        else:
            self.input_layernorm = stablelm.layer_norm(c, p)
        if not c.parallel_residual:
            self.post_attention_layernorm = stablelm.layer_norm(c, p)
        self.self_attention = Attention(c, p, rngs)
        self.mlp = MLP(c, p, rngs)

    def __call__(self, x, mask, positions, **kw):
        c, drop = self.c, kw["drop"]
        two_norms = c.parallel_residual and c.parallel_norms == 2
        h = (self.ln_attn if two_norms else self.input_layernorm)(x).astype(self.dtype)
        a, new_cache = self.self_attention(h, mask, positions, **kw)
        if not c.parallel_residual:
            x = x + drop(a, c.resid_dropout)
            return x + drop(self.mlp(self.post_attention_layernorm(x).astype(self.dtype)), c.hidden_dropout), new_cache
        h_mlp = self.ln_mlp(x).astype(self.dtype) if two_norms else h
        return x + drop(self.mlp(h_mlp) + a, c.hidden_dropout), new_cache


class FalconModel(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.dtype = p.dtype
        self.word_embeddings = embed(c.vocab_size, c.hidden_size, p, rngs=rngs)
        self.h = nnx.List([DecoderLayer(c, p, rngs) for _ in range(c.num_layers)])
        self.ln_f = stablelm.layer_norm(c, p)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                 prefix_kv=None, prefix_mask=None, cache: KVCache | None = None, drop=None):
        drop = drop or DropoutRng(None)
        if self.c.alibi:  # positions come from the key mask (bloom.alibi_bias), rounded as transformers does
            del position_ids
            x = (self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds).astype(self.dtype)
            B, T = x.shape[:2]
            mask, positions = bloom.alibi_stack_inputs(attention_mask, T, B, prefix_kv, prefix_mask, cache,
                                                       self.c.num_heads, rounding=jnp.bfloat16)
        else:
            x, positions, mask = rotary.stack_inputs(self.c, self.word_embeddings, input_ids, attention_mask,
                                                     position_ids, inputs_embeds, prefix_kv, cache, self.dtype)
        x, cache = run_layers(self.h, x, mask, positions, cache=cache, prefix_kv=prefix_kv, prefix_mask=prefix_mask,
                              drop=drop)
        return self.ln_f(x).astype(self.dtype), cache


class Falcon(heads.DecoderOnlyLM):
    """Falcon with the head for `task` (None, causal_lm, seq_cls, token_cls)."""

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.transformer = FalconModel(c, p, rngs)
        self.add_heads(c, task, num_labels, p, rngs)

    @property
    def decoder(self) -> FalconModel:
        return self.transformer

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.transformer.word_embeddings


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> Falcon:
    return Falcon(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]
