"""T5 / T5 v1.1 / FLAN-T5 / mT5 (encoder-decoder, relative position bias, RMS norms), and UMT5 (umt5-small .. xxl:
every self-attention layer with its own relative-position bias table, not only each stack's first).

Module tree mirrors transformers' (`encoder.block.0.layer.0.SelfAttention.q`, `shared`, `lm_head`)
so checkpoint names map one to one; every torch Linear weight is `[out, in]` and is transposed.
The per-stack embeddings `encoder.embed_tokens` / `decoder.embed_tokens` are tied to `shared`
in every checkpoint, so only `shared.weight` is read.

Prefixes: `prefix_kv [L_dec, 2, B, V, H, K]` reaches decoder self-attention only (PEFT's form);
`encoder_prefix_kv [L_enc, ...]` and `cross_prefix_kv [L_dec, ...]` add the Li & Liang form
(encoder self-attention and cross-attention). All three share `prefix_mask [B, V]`."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jsoft.models import heads
from jsoft.models.base import TransformerConfig, hf_name, is_kernel, shift_right
from jsoft.models.layers import (
    DropoutRng,
    KVCache,
    ModelOutput,
    Precision,
    RMSNorm,
    activation,
    attention_kv,
    attention_mask_4d,
    cross_attention_kv,
    dense,
    dot_product_attention,
    embed,
    merge_heads,
    split_heads,
    updated_cache,
)

Array = jax.Array

TASKS = (None, "seq2seq_lm")
MODEL_TYPES = ("t5", "mt5", "umt5")
BASE_PREFIX = ""  # T5Model and T5ForConditionalGeneration both save `shared.weight`, `encoder.*`


@dataclasses.dataclass
class Config(TransformerConfig):
    num_decoder_layers: int = 6
    d_ff: int = 2048
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-6
    is_gated_act: bool = False
    dense_act_fn: str = "relu"
    tie_word_embeddings: bool = True  # False: a separate `lm_head.weight` in the checkpoint
    scale_decoder_outputs: bool = True  # multiply the decoder output by d_model**-0.5 before the head
    bias_per_layer: bool = False  # UMT5: each layer's own relative-position table (T5: layer 0's for all)

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        model_type = hf.get("model_type", "t5")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type={model_type!r} is not T5; jsoft.models.t5 reads {list(MODEL_TYPES)}")
        proj = hf.get("feed_forward_proj", "relu")
        parts = proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"feed_forward_proj={proj!r} is not valid; expected 'ACT' or 'gated-ACT', "
                             "e.g. 'relu' or 'gated-gelu'")
        act = "gelu_new" if proj == "gated-gelu" else parts[-1]  # transformers' own exception
        activation(act)  # fail early on an unsupported activation
        # transformers 5 rewrites tie_word_embeddings to True on load and records the original choice
        # as `scale_decoder_outputs` (T5) or drops it (mT5, which never rescales; UMT5, which rescales when tied);
        # older configs only have tie_word_embeddings, which then also decides the rescale.
        tie = hf.get("tie_word_embeddings", model_type == "t5") is not False
        scale = model_type != "mt5" and hf.get("scale_decoder_outputs", tie)
        d, h = hf["d_model"], hf["num_heads"]
        pad = hf.get("pad_token_id", 0)
        n_enc = hf["num_layers"]
        return cls(
            model_type=model_type, vocab_size=hf["vocab_size"], hidden_size=d, num_layers=n_enc,
            num_heads=h, num_kv_heads=h, head_dim=hf.get("d_kv", d // h), pad_token_id=pad,
            eos_token_id=hf.get("eos_token_id", 1), bos_token_id=hf.get("bos_token_id"),
            decoder_start_token_id=hf.get("decoder_start_token_id", pad), is_encoder_decoder=True,
            num_decoder_layers=hf.get("num_decoder_layers") or n_enc, d_ff=hf["d_ff"],
            relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
            dropout_rate=hf.get("dropout_rate", 0.1), layer_norm_eps=hf.get("layer_norm_epsilon", 1e-6),
            is_gated_act=len(parts) == 2, dense_act_fn=act, tie_word_embeddings=tie,
            scale_decoder_outputs=bool(scale), bias_per_layer=model_type == "umt5",
        )


def relative_position_bucket(rel: Array, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
    """transformers' `T5Attention._relative_position_bucket` (rel = key position - query position),
    computed in fp32 like torch so bucket boundaries agree."""
    bucket = jnp.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        bucket = (rel > 0).astype(rel.dtype) * num_buckets
        rel = jnp.abs(rel)
    else:
        rel = -jnp.minimum(rel, 0)
    max_exact = num_buckets // 2
    # max(rel, 1): log(0) would be -inf; those entries take the exact branch anyway
    large = max_exact + (jnp.log(jnp.maximum(rel, 1).astype(jnp.float32) / max_exact)
                         / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(rel.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(rel < max_exact, rel, large)


class Attention(nnx.Module):
    """T5 attention: no 1/sqrt(d) scaling (folded into the initialisation), no biases."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs, *, relative_bias: bool):
        self.c = c
        inner = c.num_heads * c.head_dim
        self.q = dense(c.hidden_size, inner, ("embed", "joined_kv"), p, bias=False, rngs=rngs)
        self.k = dense(c.hidden_size, inner, ("embed", "joined_kv"), p, bias=False, rngs=rngs)
        self.v = dense(c.hidden_size, inner, ("embed", "joined_kv"), p, bias=False, rngs=rngs)
        self.o = dense(inner, c.hidden_size, ("joined_kv", "embed"), p, bias=False, rngs=rngs)
        if relative_bias:  # T5: only layer 0 of a stack owns the table, the others reuse its bias (UMT5: each its own)
            self.relative_attention_bias = embed(c.relative_attention_num_buckets, c.num_heads, p,
                                                 rngs=rngs, names=(None, "heads"))

    def __call__(self, x, kv_x, mask, bias, *, layer, cache, prefix_kv, prefix_mask, drop: DropoutRng,
                 cross_kv: tuple | None = None):
        """Self-attention when `kv_x` is None (prefix and cache apply), else cross-attention over
        `kv_x` (prefix applies, no cache: the encoder states are fixed), or over `cross_kv`: the keys,
        values and mask that `self.cross_kv` computed from the encoder states before."""
        q = split_heads(self.q(x), self.c.num_heads)
        k, v, mask, new_cache = attention_kv(self.project_kv, x, mask, layer=layer, cache=cache, prefix_kv=prefix_kv,
                                             prefix_mask=prefix_mask, kv_x=kv_x, cross_kv=cross_kv)
        out = dot_product_attention(q, k, v, mask, scale=1.0, bias=bias, dropout=drop,
                                    dropout_rate=self.c.dropout_rate)
        return self.o(merge_heads(out)), new_cache

    def project_kv(self, states: Array) -> tuple[Array, Array]:
        return split_heads(self.k(states), self.c.num_heads), split_heads(self.v(states), self.c.num_heads)


class LayerAttention(nnx.Module):
    """Pre-norm residual around one attention (`T5LayerSelfAttention` / `T5LayerCrossAttention`)."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs, *, cross: bool, relative_bias: bool):
        self.dropout_rate = c.dropout_rate
        self.cross = cross
        attn = Attention(c, p, rngs, relative_bias=relative_bias)
        if cross:
            self.EncDecAttention = attn
        else:
            self.SelfAttention = attn
        self.layer_norm = RMSNorm(c.hidden_size, c.layer_norm_eps, p)

    def __call__(self, x, kv_x, mask, bias, *, drop: DropoutRng, **kw):
        attn = self.EncDecAttention if self.cross else self.SelfAttention
        a, new_cache = attn(self.layer_norm(x), kv_x, mask, bias, drop=drop, **kw)
        return x + drop(a, self.dropout_rate), new_cache


class DenseReluDense(nnx.Module):
    """`wi -> act -> wo` (v1.0), or `act(wi_0) * wi_1 -> wo` (gated: v1.1, FLAN, mT5)."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.dropout_rate = c.dropout_rate
        self.act = activation(c.dense_act_fn)
        self.gated = c.is_gated_act
        if self.gated:
            self.wi_0 = dense(c.hidden_size, c.d_ff, ("embed", "mlp"), p, bias=False, rngs=rngs)
            self.wi_1 = dense(c.hidden_size, c.d_ff, ("embed", "mlp"), p, bias=False, rngs=rngs)
        else:
            self.wi = dense(c.hidden_size, c.d_ff, ("embed", "mlp"), p, bias=False, rngs=rngs)
        self.wo = dense(c.d_ff, c.hidden_size, ("mlp", "embed"), p, bias=False, rngs=rngs)

    def __call__(self, x, drop: DropoutRng):
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(drop(h, self.dropout_rate))


class LayerFF(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.dropout_rate = c.dropout_rate
        self.DenseReluDense = DenseReluDense(c, p, rngs)
        self.layer_norm = RMSNorm(c.hidden_size, c.layer_norm_eps, p)

    def __call__(self, x, drop: DropoutRng):
        return x + drop(self.DenseReluDense(self.layer_norm(x), drop), self.dropout_rate)


class Block(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs, *, decoder: bool, first: bool):
        sub = [LayerAttention(c, p, rngs, cross=False, relative_bias=first or c.bias_per_layer)]
        if decoder:
            sub.append(LayerAttention(c, p, rngs, cross=True, relative_bias=False))
        sub.append(LayerFF(c, p, rngs))
        self.layer = nnx.List(sub)

    def __call__(self, x, mask, bias, *, layer, cache, prefix_kv, prefix_mask, enc, enc_mask,
                 cross_prefix_kv, drop: DropoutRng, cross_kv: tuple | None = None):
        x, new_cache = self.layer[0](x, None, mask, bias, layer=layer, cache=cache, prefix_kv=prefix_kv,
                                     prefix_mask=prefix_mask, drop=drop)
        if enc is not None or cross_kv is not None:  # as in transformers, no encoder states: no cross-attention
            x, _ = self.layer[1](x, enc, enc_mask, None, layer=layer, cache=None, prefix_kv=cross_prefix_kv,
                                 prefix_mask=prefix_mask, drop=drop, cross_kv=cross_kv)
        return self.layer[-1](x, drop), new_cache


class Stack(nnx.Module):
    """`T5Stack` without its (tied) embedding: the encoder, or the causal decoder."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs, *, decoder: bool):
        self.c, self.decoder, self.dtype = c, decoder, p.dtype
        n = c.num_decoder_layers if decoder else c.num_layers
        self.block = nnx.List([Block(c, p, rngs, decoder=decoder, first=i == 0) for i in range(n)])
        self.final_layer_norm = RMSNorm(c.hidden_size, c.layer_norm_eps, p)

    def position_bias(self, q_pos: Array, k_pos: Array) -> list[Array]:
        """Each layer's `[1, H, T, S]`: from layer 0's table, shared by every layer of the stack (UMT5: its own)."""
        rel = k_pos[None, :].astype(jnp.int32) - q_pos[:, None].astype(jnp.int32)
        bucket = relative_position_bucket(rel, bidirectional=not self.decoder,
                                          num_buckets=self.c.relative_attention_num_buckets,
                                          max_distance=self.c.relative_attention_max_distance)
        owners = self.block if self.c.bias_per_layer else self.block[:1]
        biases = [jnp.transpose(b.layer[0].SelfAttention.relative_attention_bias(bucket), (2, 0, 1))[None]
                  for b in owners]
        return biases if self.c.bias_per_layer else biases * len(self.block)

    def __call__(self, embeds_BxTxD, mask_BxS, *, prefix_kv=None, prefix_mask=None,
                 cache: KVCache | None = None, enc=None, enc_mask=None, cross_prefix_kv=None,
                 cross_kv: tuple | None = None, drop: DropoutRng):
        B, T = embeds_BxTxD.shape[:2]
        x = drop(embeds_BxTxD.astype(self.dtype), self.c.dropout_rate)
        # Positions as transformers gives them when the prefix is passed as past_key_values: the V
        # prefix keys sit at 0..V-1 and the current tokens start after them (and after what the
        # cache holds). Keys are laid out [prefix | tokens or cache slots], so key j is at position j.
        # The encoder prefix (no transformers reference) follows the same rule, so the encoder's
        # prefix keys look like tokens to the left of the input; cross-attention has no position bias.
        # T5 biases depend only on key - query, so a row whose shorter prefix is left-padded to V
        # (mixed-adapter batches) sees the same distances as with its own prefix alone.
        V = 0 if prefix_kv is None else prefix_kv.shape[3]
        S = T if cache is None else cache.slots
        offset = 0 if cache is None else cache.index
        biases = self.position_bias(V + offset + jnp.arange(T), jnp.arange(V + S))
        mask = attention_mask_4d(mask_BxS, T, S, causal=self.decoder, q_offset=offset)
        enc_mask_4d = None
        if enc is not None and cross_kv is None:
            enc_mask_4d = attention_mask_4d(enc_mask, T, enc.shape[1], causal=False)
        else:
            enc = None
        layer_caches = []
        for i, block in enumerate(self.block):
            x, lc = block(x, mask, biases[i], layer=i, cache=cache, prefix_kv=prefix_kv, prefix_mask=prefix_mask,
                          enc=enc, enc_mask=enc_mask_4d, cross_prefix_kv=cross_prefix_kv, drop=drop,
                          cross_kv=None if cross_kv is None else cross_kv[i])
            layer_caches.append(lc)
        x = drop(self.final_layer_norm(x), self.c.dropout_rate)
        return x, updated_cache(cache, layer_caches, T)


class T5(nnx.Module):
    """T5 with the head for `task` (None: decoder hidden states, or seq2seq_lm)."""

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.config, self.task, self.num_labels = c, task, num_labels
        self.head_name = None  # no classification head: nothing of the backbone goes into an adapter
        self.shared = embed(c.vocab_size, c.hidden_size, p, rngs=rngs, init_std=1.0)
        self.encoder = Stack(c, p, rngs, decoder=False)
        self.decoder = Stack(c, p, rngs, decoder=True)
        # transformers 5 writes tie_word_embeddings=True even for untied (FLAN/mT5) checkpoints and
        # keeps the truth in scale_decoder_outputs=False; such a head loads from `lm_head.weight`,
        # or from `shared.weight` when the checkpoint has no separate head.
        self.separate_head = not c.tie_word_embeddings or not c.scale_decoder_outputs
        if task == "seq2seq_lm" and self.separate_head:
            self.lm_head = dense(c.hidden_size, c.vocab_size, ("embed", "vocab"), p, bias=False, rngs=rngs)

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.shared

    def shift_right(self, labels: Array) -> Array:
        return shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)

    def _embeds(self, ids, embeds, prefix: str):
        if (ids is None) == (embeds is None):
            raise ValueError(f"give exactly one of {prefix}input_ids and {prefix}inputs_embeds")
        return self.shared(ids) if embeds is None else embeds

    def encode(self, input_ids=None, attention_mask=None, inputs_embeds=None, encoder_prefix_kv=None,
               prefix_mask=None, dropout_rng: Array | None = None) -> Array:
        """Encoder hidden states `[B, T, D]` (computed once, then reused by `decode`)."""
        x = self._embeds(input_ids, inputs_embeds, "")
        h, _ = self.encoder(x, attention_mask, prefix_kv=encoder_prefix_kv, prefix_mask=prefix_mask,
                            drop=DropoutRng.stream(dropout_rng, 0))
        return h

    def decode(self, decoder_input_ids=None, encoder_hidden_states=None, attention_mask=None,
               decoder_attention_mask=None, decoder_inputs_embeds=None, prefix_kv=None, prefix_mask=None,
               cross_prefix_kv=None, cache: KVCache | None = None,
               dropout_rng: Array | None = None, cross_kv: tuple | None = None) -> ModelOutput:
        """One decoder pass. `attention_mask` is the encoder's; `decoder_attention_mask` covers the
        current tokens `[B, T]`, or all cache slots `[B, S]` when decoding with `cache`. `cross_kv`
        (`cross_attention_kv`) replaces the encoder states, their mask and the cross-attention prefix."""
        y = self._embeds(decoder_input_ids, decoder_inputs_embeds, "decoder_")
        h, cache = self.decoder(y, decoder_attention_mask, prefix_kv=prefix_kv, prefix_mask=prefix_mask,
                                cache=cache, enc=encoder_hidden_states, enc_mask=attention_mask,
                                cross_prefix_kv=cross_prefix_kv, cross_kv=cross_kv,
                                drop=DropoutRng.stream(dropout_rng, 1))
        if self.task != "seq2seq_lm":
            return ModelOutput(last_hidden_state=h, cache=cache)
        c = self.config
        scaled = h * c.hidden_size ** -0.5 if c.scale_decoder_outputs else h
        logits = heads.lm_head_logits(scaled, self.lm_head.kernel[...], vocab_axis=1) if self.separate_head \
            else heads.lm_head_logits(scaled, self.shared.embedding[...])
        return ModelOutput(logits=logits, last_hidden_state=h, cache=cache)

    def cross_attention_kv(self, encoder_hidden_states, attention_mask=None, cross_prefix_kv=None,
                           prefix_mask=None) -> tuple:
        """Each decoder layer's cross-attention keys, values and mask over fixed encoder states, for a
        decoding loop to compute once (`decode(cross_kv=...)`) rather than at every token (as the cache
        of transformers' `EncoderDecoderCache` holds them)."""
        enc_mask = attention_mask_4d(attention_mask, 1, encoder_hidden_states.shape[1], causal=False)
        return tuple(cross_attention_kv(block.layer[1].EncDecAttention.project_kv, encoder_hidden_states, enc_mask,
                                        layer=i, prefix_kv=cross_prefix_kv, prefix_mask=prefix_mask)
                     for i, block in enumerate(self.decoder.block))

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None,
                 decoder_attention_mask=None, inputs_embeds=None, decoder_inputs_embeds=None,
                 encoder_hidden_states=None, prefix_kv=None, prefix_mask=None, encoder_prefix_kv=None,
                 cross_prefix_kv=None, cache: KVCache | None = None,
                 dropout_rng: Array | None = None) -> ModelOutput:
        if encoder_hidden_states is None:
            encoder_hidden_states = self.encode(input_ids, attention_mask, inputs_embeds, encoder_prefix_kv,
                                                prefix_mask, dropout_rng)
        out = self.decode(decoder_input_ids, encoder_hidden_states, attention_mask, decoder_attention_mask,
                          decoder_inputs_embeds, prefix_kv, prefix_mask, cross_prefix_kv, cache, dropout_rng)
        return out.replace(encoder_last_hidden_state=encoder_hidden_states)


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> T5:
    return T5(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str | tuple[str, ...], bool]:
    if tuple(map(str, path)) == ("lm_head", "kernel"):
        return ("lm_head.weight", "shared.weight"), True
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]
