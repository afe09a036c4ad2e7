"""BART (bart-base / -large, bart-large-cnn / -xsum, distilbart): the encoder-decoder of Li & Liang's
summarisation experiments; and the checkpoint families built the same way (FAMILIES): mBART (mbart-large-cc25 / -50:
pre-norm layers, a final LayerNorm per stack, decoder inputs that start with the label's language id), M2M100 /
NLLB (`m2m_100`: pre-norm, fixed sinusoidal positions counted from the pad id + 1 over non-pad tokens, no LayerNorm on
the embeddings, no `final_logits_bias`), Marian (opus-mt: post-norm, fixed sinusoidal positions from 0, no LayerNorm
on the embeddings) and Pegasus (Marian's, pre-norm with a final LayerNorm per stack).

Post-norm layers with biased projections, learned absolute positions (table rows offset by 2),
LayerNorm over the embeddings, word lookups scaled by sqrt(d_model) where `scale_embedding`, an LM head
tied to `shared` plus `final_logits_bias`. Marian's and Pegasus's `shared` is unscaled, as transformers' is there: their
encoders scale token lookups but not given `inputs_embeds` (a PEFT prompt's whole input), their decoders both.
Module tree mirrors transformers' (`encoder.layers.0.self_attn
.q_proj`; checkpoints of `BartForConditionalGeneration` prefix them with `model.`).

Prefixes as in `jsoft.models.t5`: `prefix_kv [L_dec, 2, B, V, H, K]` reaches decoder self-attention
(PEFT's form), `encoder_prefix_kv` and `cross_prefix_kv` add the Li & Liang form; all share
`prefix_mask [B, V]`. Decoder tokens take positions after the row's valid prefix slots (PEFT passes the
prefix as past_key_values: V..V+T-1), so a row whose shorter prefix is left-padded in a mixed batch gets
the positions it has alone. Encoder tokens take `position_ids` (default 0..T-1, as transformers)."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jsoft.models import heads
from jsoft.models.base import TransformerConfig, check_position_count, hf_name, is_kernel, past_length, shift_right
from jsoft.models.layers import (
    Buffer,
    DropoutRng,
    KVCache,
    LayerNorm,
    ModelOutput,
    Precision,
    activation,
    attention_kv,
    attention_mask_4d,
    axes,
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
BASE_PREFIX = "model"
POSITION_OFFSET = 2  # BartLearnedPositionalEmbedding: position p reads row p + 2
# how a family's stacks embed positions: "learned" (BART, mBART: a table, rows offset by 2), "sinusoidal" (Marian,
# Pegasus: XLM's fixed table, sines then cosines, from row 0), "padded_sinusoidal" (M2M100: tensor2tensor's, from row
# pad + 1, pads on the pad id's zero row)
POSITION_KINDS = ("learned", "sinusoidal", "padded_sinusoidal")
# what each family fixes in its modelling code rather than in config.json (the rest: Config's defaults, BART's)
FAMILIES = {
    "bart": {},
    "mbart": dict(pre_norm=True),
    "m2m_100": dict(pre_norm=True, layernorm_embedding=False, position_kind="padded_sinusoidal",
                    final_logits_bias=False),
    "marian": dict(layernorm_embedding=False, position_kind="sinusoidal", word_embeddings_unscaled=True),
    "pegasus": dict(pre_norm=True, layernorm_embedding=False, position_kind="sinusoidal",
                    word_embeddings_unscaled=True),
}


@dataclasses.dataclass
class Config(TransformerConfig):
    num_decoder_layers: int = 12
    encoder_ffn_dim: int = 4096
    decoder_ffn_dim: int = 4096
    activation_function: str = "gelu"
    max_position_embeddings: int = 1024
    scale_embedding: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True  # False: a separate `lm_head.weight` in the checkpoint
    pre_norm: bool = False  # mBART: LayerNorm before each block, and once more after each stack
    layernorm_embedding: bool = True  # a LayerNorm on each stack's summed embeddings
    position_kind: str = "learned"  # one of POSITION_KINDS
    final_logits_bias: bool = True
    word_embeddings_unscaled: bool = False  # Marian, Pegasus: the stacks scale lookups, not `shared`

    @property
    def position_table_size(self) -> int:
        """M2M100's table would grow past it in transformers; jsoft refuses longer inputs, as for the others."""
        return self.max_position_embeddings

    @property
    def embed_scale(self) -> float:
        return self.hidden_size ** 0.5 if self.scale_embedding else 1.0

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        model_type = hf.get("model_type", "bart")
        if model_type not in FAMILIES:
            raise ValueError(f"model_type={model_type!r} is not BART-like; jsoft.models.bart reads {list(FAMILIES)}")
        if model_type == "marian" and (hf.get("share_encoder_decoder_embeddings") is False
                                       or hf.get("decoder_vocab_size") not in (None, hf["vocab_size"])):
            raise ValueError("config.json share_encoder_decoder_embeddings=False (a Marian model with a separate "
                             "target vocabulary) is not supported by jsoft; shared vocabularies are")
        d = hf["d_model"]
        h, h_dec = hf.get("encoder_attention_heads", 16), hf.get("decoder_attention_heads", 16)
        if h != h_dec:
            raise ValueError(f"encoder_attention_heads={h} != decoder_attention_heads={h_dec}: jsoft (and PEFT, which "
                             "sizes prefixes from the encoder's heads) needs one head count")
        if d % h:
            raise ValueError(f"d_model={d} is not a multiple of encoder_attention_heads={h}")
        act = hf.get("activation_function", "gelu")
        activation(act)  # fail early on an unsupported activation
        return cls(
            model_type=model_type, vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf.get("encoder_layers", 12),
            num_heads=h, num_kv_heads=h, head_dim=d // h, pad_token_id=hf.get("pad_token_id", 1),
            eos_token_id=hf.get("eos_token_id", 2), bos_token_id=hf.get("bos_token_id", 0),
            decoder_start_token_id=hf.get("decoder_start_token_id", 2), is_encoder_decoder=True,
            num_decoder_layers=hf.get("decoder_layers", 12), encoder_ffn_dim=hf.get("encoder_ffn_dim", 4096),
            decoder_ffn_dim=hf.get("decoder_ffn_dim", 4096), activation_function=act,
            max_position_embeddings=hf.get("max_position_embeddings", 1024),
            scale_embedding=bool(hf.get("scale_embedding", False)), dropout=hf.get("dropout", 0.1),
            attention_dropout=hf.get("attention_dropout", 0.0), activation_dropout=hf.get("activation_dropout", 0.0),
            tie_word_embeddings=hf.get("tie_word_embeddings", True) is not False,
            forced_bos_token_id=hf.get("forced_bos_token_id"),
            # M2M100Config has none (generation_config.json may); BART's defaults to its EOS
            forced_eos_token_id=hf.get("forced_eos_token_id", None if model_type == "m2m_100" else 2),
            **FAMILIES[model_type],
        )


class Attention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        d = c.hidden_size
        self.q_proj = dense(d, d, ("embed", "joined_kv"), p, rngs=rngs)
        self.k_proj = dense(d, d, ("embed", "joined_kv"), p, rngs=rngs)
        self.v_proj = dense(d, d, ("embed", "joined_kv"), p, rngs=rngs)
        self.out_proj = dense(d, d, ("joined_kv", "embed"), p, rngs=rngs)

    def __call__(self, x, mask, *, layer, cache, prefix_kv, prefix_mask, drop: DropoutRng,
                 kv_x=None, cross_kv: tuple | None = None):
        """Self-attention (prefix and cache apply) when neither `kv_x` nor `cross_kv` is given; else
        cross-attention over the encoder states `kv_x` or their precomputed `cross_kv`."""
        q = split_heads(self.q_proj(x), self.c.num_heads)
        k, v, mask, new_cache = attention_kv(self.project_kv, x, mask, layer=layer, cache=cache, prefix_kv=prefix_kv,
                                             prefix_mask=prefix_mask, kv_x=kv_x, cross_kv=cross_kv)
        out = dot_product_attention(q, k, v, mask, scale=self.c.head_dim ** -0.5, dropout=drop,
                                    dropout_rate=self.c.attention_dropout)
        return self.out_proj(merge_heads(out)), new_cache

    def project_kv(self, states: Array) -> tuple[Array, Array]:
        return split_heads(self.k_proj(states), self.c.num_heads), split_heads(self.v_proj(states), self.c.num_heads)


class Layer(nnx.Module):
    """`BartEncoderLayer` / `BartDecoderLayer`: post-norm (mBART: pre-norm) residuals around self-attention,
    (decoder) cross-attention and the feed-forward block."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs, *, decoder: bool):
        self.c, self.decoder = c, decoder
        d, ffn = c.hidden_size, c.decoder_ffn_dim if decoder else c.encoder_ffn_dim
        self.self_attn = Attention(c, p, rngs)
        self.self_attn_layer_norm = LayerNorm(d, c.layer_norm_eps, p)
        if decoder:
            self.encoder_attn = Attention(c, p, rngs)
            self.encoder_attn_layer_norm = LayerNorm(d, c.layer_norm_eps, p)
        self.fc1 = dense(d, ffn, ("embed", "mlp"), p, rngs=rngs)
        self.fc2 = dense(ffn, d, ("mlp", "embed"), p, rngs=rngs)
        self.final_layer_norm = LayerNorm(d, c.layer_norm_eps, p)
        self.act = activation(c.activation_function)

    def _residual(self, norm: LayerNorm, block, x, drop: DropoutRng):
        """`norm(x + block(x))` (BART), or `x + block(norm(x))` (mBART), dropout on the block's output."""
        c = self.c
        if c.pre_norm:
            out, extra = block(norm(x).astype(x.dtype))
            return x + drop(out, c.dropout), extra
        out, extra = block(x)
        return norm(x + drop(out, c.dropout)).astype(x.dtype), extra

    def __call__(self, x, mask, enc, enc_mask, cross_prefix_kv, cross_kv, *, layer, cache, prefix_kv, prefix_mask,
                 drop: DropoutRng):
        c = self.c
        x, new_cache = self._residual(self.self_attn_layer_norm, lambda h: self.self_attn(
            h, mask, layer=layer, cache=cache, prefix_kv=prefix_kv, prefix_mask=prefix_mask, drop=drop), x, drop)
        if self.decoder and (enc is not None or cross_kv is not None):  # no encoder states: no cross-attention
            x, _ = self._residual(self.encoder_attn_layer_norm, lambda h: self.encoder_attn(
                h, enc_mask, layer=layer, cache=None, prefix_kv=cross_prefix_kv, prefix_mask=prefix_mask, drop=drop,
                kv_x=enc, cross_kv=None if cross_kv is None else cross_kv[layer]), x, drop)
        x, _ = self._residual(self.final_layer_norm, lambda h: (
            self.fc2(drop(self.act(self.fc1(h)), c.activation_dropout)), None), x, drop)
        return x, new_cache


class Stack(nnx.Module):
    """`BartEncoder` / `BartDecoder`; its own token embedding only when untied (else the model's `shared`)."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs, *, decoder: bool):
        self.c, self.decoder, self.dtype = c, decoder, p.dtype
        if not c.tie_word_embeddings:  # untied (transformers ties all three to `shared` by default)
            self.embed_tokens = embed(c.vocab_size, c.hidden_size, p, rngs=rngs,
                                      scale=1.0 if c.word_embeddings_unscaled else c.embed_scale)
        if c.position_kind == "learned":
            self.embed_positions = embed(c.max_position_embeddings + POSITION_OFFSET, c.hidden_size, p, rngs=rngs,
                                         names=(None, "embed"))
        n = c.num_decoder_layers if decoder else c.num_layers
        self.layers = nnx.List([Layer(c, p, rngs, decoder=decoder) for _ in range(n)])
        if c.layernorm_embedding:
            self.layernorm_embedding = LayerNorm(c.hidden_size, c.layer_norm_eps, p)
        if c.pre_norm:
            self.layer_norm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)

    def __call__(self, embeds_BxTxD, mask_BxS, positions_BxT, *, prefix_kv=None, prefix_mask=None,
                 cache: KVCache | None = None, enc=None, enc_mask=None, cross_prefix_kv=None,
                 cross_kv: tuple | None = None, drop: DropoutRng):
        T = embeds_BxTxD.shape[1]
        x = embeds_BxTxD + self.position_embeddings(positions_BxT).astype(embeds_BxTxD.dtype)
        if self.c.layernorm_embedding:
            x = self.layernorm_embedding(x)
        x = drop(x.astype(self.dtype), self.c.dropout)
        S = T if cache is None else cache.slots
        mask = attention_mask_4d(mask_BxS, T, S, causal=self.decoder, q_offset=0 if cache is None else cache.index)
        enc_mask_4d = None
        if enc is not None and cross_kv is None:
            enc_mask_4d = attention_mask_4d(enc_mask, T, enc.shape[1], causal=False)
        layer_caches = []
        for i, layer in enumerate(self.layers):
            x, lc = layer(x, mask, enc, enc_mask_4d, cross_prefix_kv, cross_kv, layer=i, cache=cache,
                          prefix_kv=prefix_kv, prefix_mask=prefix_mask, drop=drop)
            layer_caches.append(lc)
        if self.c.pre_norm:
            x = self.layer_norm(x).astype(self.dtype)
        return x, updated_cache(cache, layer_caches, T)

    def position_embeddings(self, positions_BxT: Array) -> Array:
        """`[B, T, D]` at positions counted from 0 (M2M100: -1 for a pad, which takes the zero row)."""
        c = self.c
        if c.position_kind == "learned":
            return self.embed_positions(positions_BxT + POSITION_OFFSET)
        if c.position_kind == "sinusoidal":
            return jnp.asarray(sinusoidal_table(c.max_position_embeddings, c.hidden_size))[positions_BxT]
        return sinusoid_rows(positions_BxT + c.pad_token_id + 1, c.hidden_size, zero_row=c.pad_token_id)


@functools.cache
def sinusoidal_table(n: int, dim: int) -> np.ndarray:
    """Marian's and Pegasus's fixed `[n, dim]` table (XLM's, not interleaved: the sines of each frequency, then the
    cosines), computed in float64 as transformers' `create_weight` does."""
    j = np.arange(dim)
    angles = np.arange(n)[:, None] / np.power(10000, 2 * (j // 2) / dim)
    half = (dim + 1) // 2
    out = np.empty((n, dim), np.float32)
    out[:, :half], out[:, half:] = np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])
    return out


def sinusoid_rows(rows_BxT: Array, dim: int, zero_row: int | None) -> Array:
    """Rows of M2M100's and XGLM's sinusoid table (tensor2tensor's: frequencies 10000^(-i / (dim/2 - 1)), sines then
    cosines, a zero column when dim is odd; the pad id's row all zeros), in float32 as transformers computes the
    table. M2M100 reads row pad + 1 + position (a pad, position -1, the zero row); XGLM row 2 + position."""
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * jnp.float32(-math.log(10000) / (half - 1)))
    angles = rows_BxT.astype(jnp.float32)[..., None] * freqs
    out = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    if dim % 2:
        out = jnp.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, 1)])
    return out if zero_row is None else jnp.where((rows_BxT != zero_row)[..., None], out, 0.0)


class Bart(nnx.Module):
    """BART with the head for `task` (None: decoder hidden states, or seq2seq_lm)."""

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.config, self.task, self.num_labels = c, task, num_labels
        self.head_name = None  # no classification head: nothing of the backbone goes into an adapter
        self.shared = embed(c.vocab_size, c.hidden_size, p, rngs=rngs,
                            scale=1.0 if c.word_embeddings_unscaled else c.embed_scale)
        self.encoder = Stack(c, p, rngs, decoder=False)
        self.decoder = Stack(c, p, rngs, decoder=True)
        if task == "seq2seq_lm" and c.final_logits_bias:
            self.final_logits_bias = Buffer(jnp.zeros((1, c.vocab_size), p.param_dtype), **axes(None, "vocab"))
            if not c.tie_word_embeddings:
                self.lm_head = dense(c.hidden_size, c.vocab_size, ("embed", "vocab"), p, bias=False, rngs=rngs)

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.shared

    @property
    def computed_params(self) -> int:
        """Parameters transformers holds that jsoft computes: Marian's and Pegasus's fixed sinusoid tables (frozen
        `nn.Embedding`s, one per stack), which PEFT counts in a model's total."""
        c = self.config
        return 2 * c.max_position_embeddings * c.hidden_size if c.position_kind == "sinusoidal" else 0

    @property
    def lookup_scale(self) -> float:
        """What the encoder multiplies its token lookups by beyond `word_embeddings` (Marian, Pegasus: sqrt(d_model)
        where `scale_embedding`; given embeddings, a PEFT prompt's input, it takes as they are)."""
        c = self.config
        return c.embed_scale if c.word_embeddings_unscaled else 1.0

    def shift_right(self, labels: Array) -> Array:
        c = self.config
        if c.model_type == "mbart":
            return shift_right_wrapping(labels, c.pad_token_id)
        return shift_right(labels, c.decoder_start_token_id, c.pad_token_id)

    def _embeds(self, ids, embeds, stack: Stack, prefix: str):
        """Token lookups of `stack`: `shared`, or with untied embeddings the stack's own table (`shared` is then
        only what `word_embeddings` returns, the table PEFT builds a prompt's inputs_embeds from)."""
        if (ids is None) == (embeds is None):
            raise ValueError(f"give exactly one of {prefix}input_ids and {prefix}inputs_embeds")
        c = self.config
        if embeds is not None:  # Marian's and Pegasus's decoders scale given embeddings, their encoders do not
            return embeds * c.embed_scale if c.word_embeddings_unscaled and stack.decoder else embeds
        x = self.shared(ids) if c.tie_word_embeddings else stack.embed_tokens(ids)
        return x * jnp.asarray(c.embed_scale, x.dtype) if c.word_embeddings_unscaled else x

    def encode(self, input_ids=None, attention_mask=None, inputs_embeds=None, encoder_prefix_kv=None,
               prefix_mask=None, dropout_rng: Array | None = None, position_ids=None) -> Array:
        """Encoder hidden states `[B, T, D]` (computed once, then reused by `decode`)."""
        x = self._embeds(input_ids, inputs_embeds, self.encoder, "")
        B, T = x.shape[:2]
        if position_ids is None:
            check_position_count(self.config, T)
            position_ids = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
            if input_ids is not None:
                position_ids = self._pad_aware(position_ids, input_ids, 0)
        h, _ = self.encoder(x, attention_mask, position_ids, prefix_kv=encoder_prefix_kv, prefix_mask=prefix_mask,
                            drop=DropoutRng.stream(dropout_rng, 0))
        return h

    def _decoder_positions(self, B: int, T: int, prefix_kv, prefix_mask, cache: KVCache | None) -> Array:
        """After the row's valid prefix slots (in `prefix_kv`, or at the front of `cache`) and the tokens
        the cache holds."""
        past = past_length(prefix_kv, cache)
        if cache is None:
            check_position_count(self.config, past + T)
        if prefix_mask is not None:  # a shorter prefix left-padded in a mixed batch: its pads take no position
            past = past - (prefix_mask.shape[1] - prefix_mask.astype(jnp.int32).sum(-1, keepdims=True))
        return jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None] + past, (B, T))

    def _pad_aware(self, positions_BxT: Array, ids_BxT, first_BxT) -> Array:
        """M2M100's positions from token ids (transformers' `create_position_ids_from_input_ids`): a row's k-th non-pad
        token takes `first + k`, its pads -1. Other families keep `positions_BxT`."""
        if self.config.position_kind != "padded_sinusoidal":
            return positions_BxT
        real = (jnp.asarray(ids_BxT) != self.config.pad_token_id).astype(jnp.int32)
        return (jnp.cumsum(real, axis=1) + first_BxT) * real - 1

    def decode(self, decoder_input_ids=None, encoder_hidden_states=None, attention_mask=None,
               decoder_attention_mask=None, decoder_inputs_embeds=None, prefix_kv=None, prefix_mask=None,
               cross_prefix_kv=None, cache: KVCache | None = None,
               dropout_rng: Array | None = None, cross_kv: tuple | None = None) -> ModelOutput:
        """One decoder pass. `attention_mask` is the encoder's; `decoder_attention_mask` covers the
        current tokens `[B, T]`, or all cache slots `[B, S]` when decoding with `cache` (whose first
        slots may hold the prefix, `prefix_mask` then marking its valid ones). `cross_kv`
        (`cross_attention_kv`) replaces the encoder states, their mask and the cross-attention prefix."""
        y = self._embeds(decoder_input_ids, decoder_inputs_embeds, self.decoder, "decoder_")
        B, T = y.shape[:2]
        positions = self._decoder_positions(B, T, prefix_kv, prefix_mask, cache)
        if decoder_input_ids is not None:
            positions = self._pad_aware(positions, decoder_input_ids, positions[:, :1])
        h, cache = self.decoder(y, decoder_attention_mask, positions, prefix_kv=prefix_kv, prefix_mask=prefix_mask,
                                cache=cache, enc=None if cross_kv is not None else encoder_hidden_states,
                                enc_mask=attention_mask, cross_prefix_kv=cross_prefix_kv, cross_kv=cross_kv,
                                drop=DropoutRng.stream(dropout_rng, 1))
        if self.task != "seq2seq_lm":
            return ModelOutput(last_hidden_state=h, cache=cache)
        if self.config.tie_word_embeddings:
            logits = heads.lm_head_logits(h, self.shared.embedding[...])
        else:
            logits = heads.lm_head_logits(h, self.lm_head.kernel[...], vocab_axis=1)
        if self.config.final_logits_bias:
            logits = logits + self.final_logits_bias[...].astype(jnp.float32)
        return ModelOutput(logits=logits, last_hidden_state=h, cache=cache)

    def cross_attention_kv(self, encoder_hidden_states, attention_mask=None, cross_prefix_kv=None,
                           prefix_mask=None) -> tuple:
        """Each decoder layer's cross-attention keys, values and mask, for a decoding loop to compute once."""
        enc_mask = attention_mask_4d(attention_mask, 1, encoder_hidden_states.shape[1], causal=False)
        return tuple(cross_attention_kv(layer.encoder_attn.project_kv, encoder_hidden_states, enc_mask, layer=i,
                                        prefix_kv=cross_prefix_kv, prefix_mask=prefix_mask)
                     for i, layer in enumerate(self.decoder.layers))

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None,
                 decoder_attention_mask=None, inputs_embeds=None, decoder_inputs_embeds=None,
                 encoder_hidden_states=None, prefix_kv=None, prefix_mask=None, encoder_prefix_kv=None,
                 cross_prefix_kv=None, cache: KVCache | None = None, position_ids=None,
                 dropout_rng: Array | None = None) -> ModelOutput:
        """`position_ids`: the encoder's (default 0..T-1)."""
        if encoder_hidden_states is None:
            encoder_hidden_states = self.encode(input_ids, attention_mask, inputs_embeds, encoder_prefix_kv,
                                                prefix_mask, dropout_rng, position_ids)
        out = self.decode(decoder_input_ids, encoder_hidden_states, attention_mask, decoder_attention_mask,
                          decoder_inputs_embeds, prefix_kv, prefix_mask, cross_prefix_kv, cache, dropout_rng)
        return out.replace(encoder_last_hidden_state=encoder_hidden_states)


def shift_right_wrapping(labels, pad_token_id: int) -> Array:
    """mBART's decoder inputs from labels (transformers' `modeling_mbart.shift_tokens_right`): -100 read as the pad
    id, the labels shifted right, and each row's last non-pad label (its language id) in front."""
    labels = jnp.asarray(labels, jnp.int32)
    labels = jnp.where(labels == -100, pad_token_id, labels)
    last = jnp.sum(labels != pad_token_id, axis=-1, keepdims=True) - 1
    start = jnp.take_along_axis(labels, last, axis=-1)
    return jnp.concatenate([start, labels[..., :-1]], axis=-1)


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> Bart:
    return Bart(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str | tuple[str, ...], bool]:
    names = tuple(map(str, path))
    if names == ("lm_head", "kernel"):
        return ("lm_head.weight", "shared.weight"), True
    if names == ("shared", "embedding"):  # tied, a checkpoint may keep only one of the copies
        return ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"), False
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]
