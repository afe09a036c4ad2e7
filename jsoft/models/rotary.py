"""Rotary position embeddings (RoPE) as transformers computes them: config.json's RoPE settings read into
`llama.Config`'s rope_* fields (`from_hf`, `config_fields`), the inverse frequencies of every scaling
(default, linear, llama3, dynamic NTK, LongRoPE, YaRN), cos / sin at given positions, and the rotation itself
(rotate_half or GPT-J's interleaved pairs). Every RoPE backbone (Llama's families, GPT-NeoX, GPT-J, Phi, Falcon,
ModernBERT ...) rotates through here."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jsoft.models.base import default_positions
from jsoft.models.layers import KVCache, attention_mask_4d

if TYPE_CHECKING:
    from jsoft.models import llama

ROPE_TYPES = ("default", "linear", "llama3", "dynamic", "longrope", "yarn")


def from_hf(hf: dict) -> dict:
    """One flat dict with rope_type and rope_theta, from either config.json spelling:
    transformers 5 `rope_parameters` (Gemma 3, OLMo 3: its "full_attention" entry), or the older top-level
    `rope_theta` + `rope_scaling`."""
    if hf.get("model_type") in ("gemma3_text", "olmo3") and "full_attention" in (hf.get("rope_parameters") or {}):
        key, rope = "rope_parameters['full_attention']", dict(hf["rope_parameters"]["full_attention"] or {})
    elif hf.get("rope_parameters"):
        key, rope = "rope_parameters", dict(hf["rope_parameters"])
    else:
        key, rope = "rope_scaling", dict(hf.get("rope_scaling") or {})
    type_key = "rope_type" if "rope_type" in rope else "type"
    rope["rope_type"] = rope.get(type_key, "default")
    if hf.get("model_type") == "phi3" and rope["rope_type"] in ("su", "yarn"):  # Phi-3's old names, as transformers
        rope["rope_type"] = "longrope"
    rope.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    if rope["rope_type"] not in ROPE_TYPES:
        raise ValueError(f"config.json {key}[{type_key!r}]={rope['rope_type']!r} is not supported by jsoft's "
                         f"Llama; valid: {list(ROPE_TYPES)}")
    need = {"default": (), "linear": ("factor",), "dynamic": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
            "longrope": ("short_factor", "long_factor"), "yarn": ("factor",)}[rope["rope_type"]]
    for name in need:
        if name not in rope:
            raise ValueError(f"config.json {key} of rope_type {rope['rope_type']!r} lacks {name!r}")
    return rope


def config_fields(hf: dict, rope: dict, rotary_dims: int) -> dict:
    """The Config fields of a RoPE dict from `from_hf`, for a stack that rotates `rotary_dims` of each head."""
    for name in ("short_factor", "long_factor"):
        if name in rope and len(rope[name]) != rotary_dims // 2:
            raise ValueError(f"config.json rope_parameters[{name!r}] has {len(rope[name])} entries; LongRoPE "
                             f"needs one per rotated frequency: {rotary_dims // 2}")
    return dict(
        rope_type=rope["rope_type"], rope_theta=float(rope["rope_theta"]), rope_factor=float(rope.get("factor", 1.0)),
        rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
        rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
        rope_original_max_positions=_original_max_positions(hf, rope),
        rope_short_factor=tuple(map(float, rope.get("short_factor", ()))),
        rope_long_factor=tuple(map(float, rope.get("long_factor", ()))),
        rope_beta_fast=float(rope.get("beta_fast") or 32.0), rope_beta_slow=float(rope.get("beta_slow") or 1.0),
        rope_truncate=bool(rope.get("truncate", True)), rope_attention_factor=_attention_factor(hf, rope))


def _attention_factor(hf: dict, rope: dict) -> float:
    """LongRoPE's and YaRN's scale on cos and sin, as transformers computes it: `attention_factor` when given;
    else, with `factor` (LongRoPE: default max_position_embeddings over the original length), LongRoPE's
    sqrt(1 + ln(factor) / ln(original length)) and YaRN's 0.1 ln(factor) + 1 (DeepSeek's `mscale` /
    `mscale_all_dim`: the ratio of two such terms)."""
    if rope["rope_type"] not in ("longrope", "yarn"):
        return 1.0
    if rope.get("attention_factor") is not None:
        return float(rope["attention_factor"])
    original = _original_max_positions(hf, rope)
    if rope["rope_type"] == "yarn":
        factor = float(rope["factor"])
        mscale = lambda m: 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0
        if rope.get("mscale") and rope.get("mscale_all_dim"):
            return mscale(rope["mscale"]) / mscale(rope["mscale_all_dim"])
        return mscale(1.0)
    factor = rope.get("factor") or hf["max_position_embeddings"] / original
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


def _original_max_positions(hf: dict, rope: dict) -> int:
    """The pretraining length that llama3, LongRoPE and YaRN scale from (transformers: the rope dict's, else the
    top-level `original_max_position_embeddings` Phi-3 saves, else `max_position_embeddings`)."""
    return int(rope.get("original_max_position_embeddings") or hf.get("original_max_position_embeddings")
               or hf.get("max_position_embeddings", 2048))


def _powers(c: llama.Config) -> np.ndarray:
    """`rope_theta ** (2i / rope_dim)` `[K/2]` in fp32, as torch computes it (the default frequencies' inverses)."""
    f32 = np.float32
    return f32(c.rope_theta) ** (np.arange(0, c.rope_dim, 2).astype(f32) / f32(c.rope_dim))


def inv_freq(c: llama.Config) -> np.ndarray:
    """Inverse frequencies `[K/2]` as transformers computes them, in fp32 like torch so rotations
    match to the last bit that matters."""
    f32 = np.float32
    inv = f32(1.0) / _powers(c)
    if c.rope_type == "linear":
        inv = inv / f32(c.rope_factor)
    elif c.rope_type == "llama3":  # Llama 3.1: slow down low frequencies, interpolate in between
        factor, lo, hi = f32(c.rope_factor), f32(c.rope_low_freq_factor), f32(c.rope_high_freq_factor)
        old = f32(c.rope_original_max_positions)
        wavelen = f32(2 * math.pi) / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        inv = np.where(medium, smoothed, scaled)
    elif c.rope_type == "yarn":  # interpolate low frequencies, keep high ones, ramp linearly in between
        dim, base, original = c.rope_dim, c.rope_theta, c.rope_original_max_positions
        correction = lambda rotations: dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))
        low, high = correction(c.rope_beta_fast), correction(c.rope_beta_slow)
        if c.rope_truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        ramp = np.clip((np.arange(dim // 2, dtype=f32) - f32(low)) / f32(high - low if high != low else 0.001),
                       0, 1).astype(f32)
        keep = f32(1) - ramp
        inv = (f32(1.0) / (f32(c.rope_factor) * _powers(c))) * (f32(1) - keep) + inv * keep
    return inv.astype(f32)


def longrope_inv_freq(c: llama.Config, positions_BxT: jax.Array) -> jax.Array:
    """LongRoPE (Phi-3): the default frequencies divided by the short factors, or by the long ones once the
    positions pass the original length (transformers: `max(position_ids) + 1 > original_max_position_embeddings`)."""
    f32 = np.float32
    short, long = (f32(1.0) / (np.asarray(factors, f32) * _powers(c)) for factors in (c.rope_short_factor,
                                                                                           c.rope_long_factor))
    return jnp.where(jnp.max(positions_BxT) + 1 > c.rope_original_max_positions, long, short)


def dynamic_inv_freq(c: llama.Config, positions_BxT: jax.Array) -> jax.Array:
    """Dynamic NTK scaling, as transformers applies it to one forward: past max_position_embeddings the
    base grows with the sequence, `seq_len = max(position_ids) + 1`; within it, the default frequencies."""
    f32, dim = jnp.float32, c.rope_dim
    length = jnp.maximum(jnp.max(positions_BxT) + 1, c.max_positions).astype(f32)
    base = f32(c.rope_theta) * ((f32(c.rope_factor) * length / f32(c.max_positions)) - f32(c.rope_factor - 1)) ** (
        f32(dim) / f32(dim - 2))
    return f32(1.0) / (base ** (jnp.arange(0, dim, 2, dtype=f32) / f32(dim)))


def cos_sin(c: llama.Config, positions_BxT: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """`cos, sin [B, T, K]` (frequencies repeated twice, HF's rotate_half layout)."""
    if c.rope_type == "dynamic":
        inv = dynamic_inv_freq(c, positions_BxT)
    elif c.rope_type == "longrope":
        inv = longrope_inv_freq(c, positions_BxT)
    else:
        inv = jnp.asarray(inv_freq(c))
    freqs = positions_BxT[..., None].astype(jnp.float32) * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    if c.rope_reversed:
        sin = -sin
    if c.rope_attention_factor != 1.0:
        cos, sin = cos * c.rope_attention_factor, sin * c.rope_attention_factor
    return cos.astype(dtype), sin.astype(dtype)


def stack_inputs(c: llama.Config, embed_tokens: nnx.Embed, input_ids, attention_mask, position_ids, inputs_embeds,
                 prefix_kv, cache: KVCache | None, dtype) -> tuple[jax.Array, dict, jax.Array]:
    """What a RoPE decoder stack (Llama, GPT-NeoX, Phi) starts from: the input embeddings `[B, T, D]` in `dtype`
    (looked up unless given), RoPE's `{"global": (cos, sin)}` at the positions (default: after the prefix and the
    cache), with Gemma 3's sliding layers' `"local"` one too and the `"positions"` themselves, and the causal mask
    over the input or the cache's slots."""
    if inputs_embeds is None:
        inputs_embeds = embed_tokens(input_ids)
    B, T = inputs_embeds.shape[:2]
    if position_ids is None:
        position_ids = default_positions(B, T, prefix_kv, cache, c)
    S = T if cache is None else cache.slots
    mask = attention_mask_4d(attention_mask, T, S, causal=True, q_offset=0 if cache is None else cache.index)
    rope = {"global": cos_sin(c, position_ids, dtype), "positions": position_ids}
    if c.local_rope_theta is not None:
        local = dataclasses.replace(c, rope_type="default", rope_theta=c.local_rope_theta)
        rope["local"] = cos_sin(local, position_ids, dtype)
    return inputs_embeds.astype(dtype), rope, mask


def apply(x_BxTxNxK: jax.Array, cos_BxTxK: jax.Array, sin_BxTxK: jax.Array,
          interleaved: bool = False) -> jax.Array:
    """Rotates the leading `cos.shape[-1]` dims of each head (all, or GPT-NeoX's partial rotary) and passes the rest.
    Frequency i turns dims (i, i + r/2) (rotate_half), or with `interleaved` dims (2i, 2i + 1) (GPT-J's
    rotate_every_two); `cos`, `sin` hold each frequency twice either way (`cos_sin`)."""
    r = cos_BxTxK.shape[-1]
    if r < x_BxTxNxK.shape[-1]:
        rotated = apply(x_BxTxNxK[..., :r], cos_BxTxK, sin_BxTxK, interleaved)
        return jnp.concatenate([rotated, x_BxTxNxK[..., r:]], axis=-1)
    if interleaved:
        cos, sin = cos_BxTxK[:, :, None, : r // 2], sin_BxTxK[:, :, None, : r // 2]
        even, odd = x_BxTxNxK[..., ::2], x_BxTxNxK[..., 1::2]
        return jnp.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1).reshape(x_BxTxNxK.shape)
    x1, x2 = jnp.split(x_BxTxNxK, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x_BxTxNxK * cos_BxTxK[:, :, None] + rotated * sin_BxTxK[:, :, None]
