"""Shared building blocks of the frozen backbones.

Conventions (used by every backbone and by the tuners):
  * activations are `[B, T, D]`; attention heads are `[B, T, H, K]` (K = head dim);
  * a per-layer key/value prefix is one array `prefix_kv[L, 2, B, V, G, K]` (G = key/value
    heads) with a mask `prefix_mask[B, V]`; prefixes are used as given (no RoPE, no
    projection), exactly like a filled KV cache;
  * the decoding cache (`KVCache`) holds keys/values in preallocated slots, one `[B, G, S, K]`
    buffer per layer; `index` is the next slot to write;
  * masks are boolean, True = may attend.
Parameters carry logical sharding axes (`vocab`, `embed`, `mlp`, `heads`, `kv`, `joined_kv`)
that `jsoft.sharding` maps onto a device mesh.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from jsoft.models import ops

Array = jax.Array


def axes(*names: str | None) -> dict:
    """Variable metadata naming the logical sharding axes of a parameter."""
    return {"out_sharding": names, "eager_sharding": False}


class _ParamKeys(nnx.RngStream):
    """`nnx.Rngs`' `params` stream with the same keys (`fold_in(key, 0)`, `fold_in(key, 1)`, ...), its count
    replaced whole rather than written through `count[...]`. Traced (an abstract build under `nnx.eval_shape`, an
    initialiser under `jax.jit`), flax's indexed write asks the traced count for its `sharding`, and each refusal
    formats an error message that walks everything traced so far: quadratic in the model's size (an 8B Llama's
    abstract build took 0.9 s instead of 0.35 s)."""

    def __call__(self) -> Array:
        key = jax.random.fold_in(self.key.get_value(), self.count.get_value())
        self.count.set_value(self.count.get_value() + 1)
        return key


def param_rngs(key: Array | int) -> nnx.Rngs:
    """The `rngs` a backbone's parameters are initialised from: `nnx.Rngs(params=key)`'s keys, cheap to trace."""
    rngs = nnx.Rngs()
    rngs.params = _ParamKeys(key, tag="params")
    return rngs


class Buffer(nnx.Variable):
    """A frozen tensor that transformers registers as a buffer, not a parameter (BART's `final_logits_bias`):
    read from the checkpoint like a weight, but not counted among the parameters (as PEFT counts them)."""


class Fp32Buffer(Buffer):
    """A buffer kept in fp32 whatever dtype the weights load in (transformers' `_keep_in_fp32_modules_strict`:
    DeepSeek-V3's `e_score_correction_bias`, whose small differences choose experts)."""


class Fp32Param(nnx.Param):
    """A parameter kept in fp32 whatever dtype the weights load in (transformers' `_keep_in_fp32_modules_strict`:
    ERNIE 4.5 MoE's router and its correction bias, Hunyuan's router)."""


@dataclasses.dataclass(frozen=True)
class Precision:
    dtype: jnp.dtype = jnp.float32  # compute
    param_dtype: jnp.dtype = jnp.float32  # storage of the frozen weights


def _half_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
    """`nnx.Linear`'s dot for half-precision weights: `ops.einsum`, half operands with fp32 accumulation
    in the forward and the backward pass."""
    spec = ops.dot_general_spec(dimension_numbers, lhs.ndim, rhs.ndim)
    return ops.einsum(spec, lhs, rhs, out_dtype=preferred_element_type)


class HalfLinear(nnx.Linear):
    """`nnx.Linear` with half-precision weights: the bias is added to the fp32 accumulation, which is
    rounded once (one pass over the output instead of a rounding pass and a bias pass)."""

    def __call__(self, x: Array) -> Array:
        return super().__call__(x).astype(self.dtype)


def dense(d_in: int, d_out: int, names: tuple, p: Precision, *, bias: bool = True, rngs: nnx.Rngs,
          init_std: float = 0.02) -> nnx.Linear:
    kw = dict(use_bias=bias, dtype=p.dtype, param_dtype=p.param_dtype, rngs=rngs,
              kernel_init=nnx.initializers.normal(init_std), kernel_metadata=axes(*names),
              bias_metadata=axes(names[-1]))
    if jnp.dtype(p.dtype).itemsize < 4:
        return HalfLinear(d_in, d_out, dot_general=_half_dot_general, preferred_element_type=jnp.float32, **kw)
    return nnx.Linear(d_in, d_out, **kw)


class ScaledEmbed(nnx.Embed):
    """An embedding whose lookups are multiplied by `scale` in the weight dtype (Gemma's sqrt(hidden_size)). Only
    lookups: embeddings passed in (a soft prompt) and the tied LM head read the table unscaled, as in transformers."""

    def __init__(self, *args, scale: float, **kw):
        super().__init__(*args, **kw)
        self.scale = scale

    def __call__(self, inputs: Array) -> Array:
        scale = jnp.asarray(self.scale, self.embedding.dtype)
        return (super().__call__(inputs) * scale).astype(self.dtype or self.embedding.dtype)


def embed(n: int, d: int, p: Precision, *, rngs: nnx.Rngs, names=("vocab", "embed"),
          init_std: float = 0.02, scale: float = 1.0) -> nnx.Embed:
    kw = dict(dtype=p.dtype, param_dtype=p.param_dtype, rngs=rngs,
              embedding_init=nnx.initializers.normal(init_std), embedding_metadata=axes(*names))
    return nnx.Embed(n, d, **kw) if scale == 1.0 else ScaledEmbed(n, d, scale=scale, **kw)


class LayerNorm(nnx.Module):
    """LayerNorm computed in fp32 (parameters `scale`, `bias`, as `nnx.LayerNorm` names them); Nemotron's scales
    by `offset + scale` (offset 1: its checkpoints store the difference from one)."""

    def __init__(self, d: int, eps: float, p: Precision, names: tuple = ("embed",), bias: bool = True,
                 offset: float = 0.0):
        self.eps, self.offset = eps, offset
        self.scale = nnx.Param(jnp.full((d,), 1.0 - offset, p.param_dtype), **axes(*names))
        self.bias = nnx.Param(jnp.zeros((d,), p.param_dtype), **axes(*names)) if bias else None

    def __call__(self, x: Array) -> Array:
        bias = jnp.zeros((), jnp.float32) if self.bias is None else self.bias[...]
        scale = self.scale[...]
        if self.offset:
            scale = scale.astype(jnp.float32) + self.offset
        return ops.layer_norm(x, scale, bias, self.eps)


class RMSNorm(nnx.Module):
    """RMS norm computed in fp32, as T5 and Llama do (`weight * x / rms(x)`); Gemma's scales by
    `offset + weight` (offset 1: its checkpoints store the difference from one)."""

    def __init__(self, d: int, eps: float, p: Precision, offset: float = 0.0, names: tuple = ("embed",)):
        self.eps = eps
        self.offset = offset
        self.dtype = p.dtype
        self.weight = nnx.Param(jnp.full((d,), 1.0 - offset, p.param_dtype), **axes(*names))

    def __call__(self, x: Array) -> Array:
        w = self.weight[...]
        if self.offset:
            w = w.astype(jnp.float32) + self.offset
        return ops.rms_norm(x, w, self.eps).astype(self.dtype)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {  # transformers' ACT2FN names, same formulas
    "gelu": ops.gelu,
    "gelu_python": ops.gelu,
    "gelu_10": lambda x: jnp.clip(ops.gelu(x), -10.0, 10.0),
    "gelu_new": ops.gelu_tanh,
    "gelu_pytorch_tanh": ops.gelu_tanh,
    "gelu_python_tanh": ops.gelu_tanh,
    "gelu_fast": ops.gelu_tanh,
    "gelu_accurate": ops.gelu_tanh,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),
    "relu6": jax.nn.relu6,
    "leaky_relu": jax.nn.leaky_relu,  # torch's default slope, 0.01
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "hardswish": jax.nn.hard_swish,
    "mish": jax.nn.mish,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "linear": lambda x: x,
}


def activation(name: str) -> Callable[[Array], Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# --------------------------------------------------------------------------- randomness


class DropoutRng:
    """Hands out a fresh key per dropout site; `None` key means deterministic (eval)."""

    def __init__(self, key: Array | None):
        self.key = key
        self.count = 0

    def __call__(self, x: Array, rate: float) -> Array:
        keep = self.keep_mask(x.shape, rate)
        return x if keep is None else dropped(x, keep, rate)

    @classmethod
    def stream(cls, key: Array | None, which: int) -> DropoutRng:
        """Stream `which` of `key` (an encoder-decoder's encoder 0 and decoder 1: disjoint, so that
        `decode(encode(...))` draws what `__call__` draws)."""
        return cls(None if key is None else jax.random.fold_in(key, which))

    def keep_mask(self, shape: tuple, rate: float) -> Array | None:
        """The next site's boolean keep mask, or None when dropout is off."""
        if self.key is None or rate == 0.0:
            return None
        self.count += 1
        return _keep_mask(jax.random.fold_in(self.key, self.count), shape, 1.0 - rate)


def _keep_mask(key: Array, shape: tuple, keep_prob: float) -> Array:
    """Bernoulli(keep_prob) bools, drawn 16 bits each (two per 32-bit draw; the keep probability is exact
    to 2^-16) and written out packed, 8 per byte. XLA fuses a mask's uses with the comparison that makes
    it, so a training step keeps whatever the mask is made from until the backward pass: the packed bytes
    (a reduction, which it does not fuse), not the two 32-bit words per element that threefry produces."""
    n = math.prod(shape)
    draws = jax.random.bits(key, (-(-n // 2),), jnp.uint32)
    halves = jnp.stack([draws & 0xFFFF, draws >> 16], axis=-1).reshape(-1)[:n]
    keep = halves < round(keep_prob * 65536)
    return jnp.unpackbits(jnp.packbits(keep, bitorder="little"), count=n, bitorder="little").astype(bool).reshape(
        shape)


def dropped(x: Array, keep: Array, rate: float) -> Array:
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


# --------------------------------------------------------------------------- masks


def causal_mask(q_slots: Array, k_slots: Array) -> Array:
    """`[T, S]` True where key slot <= query slot."""
    return k_slots[None, :] <= q_slots[:, None]


def attention_mask_4d(key_mask_BxS: Array | None, T: int, S: int, *, causal: bool,
                      q_offset: Array | int = 0) -> Array:
    """Boolean `[B or 1, 1, T, S]`: padding of the keys and, optionally, causality.

    `q_offset` is the slot of the first query among the keys (a decoding cache's index)."""
    m = jnp.ones((1, 1, T, S), bool)
    if causal:
        m = m & causal_mask(jnp.arange(T) + q_offset, jnp.arange(S))[None, None]
    if key_mask_BxS is not None:
        if jnp.ndim(key_mask_BxS) != 2 or jnp.shape(key_mask_BxS)[1] != S:
            raise ValueError(f"attention_mask has shape {jnp.shape(key_mask_BxS)}; expected [batch, {S}] "
                             f"(one entry per {'cache slot' if S != T else 'input token'})")
        m = m & key_mask_BxS.astype(bool)[:, None, None, :]
    return m


def sliding_window(mask: Array, window: int, first_query_slot: Array | int, bidirectional: bool = False) -> Array:
    """`mask [B, 1, T, S]` narrowed to each query's window: keys fewer than `window` slots back from it
    (transformers' `sliding_window_overlay`, `key > query - window`), or with `bidirectional` at most `window` slots
    away either side (`sliding_window_bidirectional_overlay`: ModernBERT's local layers). Slots are counted as
    `row_slots` counts them. Query t sits at slot `first_query_slot + t`."""
    slot, query, _ = row_slots(mask, first_query_slot)
    if bidirectional:
        return mask & (jnp.abs(slot - query) <= window)
    return mask & (slot > query - window)


def chunked(mask: Array, chunk: int, first_query_slot: Array | int) -> Array:
    """`mask [B, 1, T, S]` narrowed to the keys in each query's chunk (Llama 4; transformers' `chunked_overlay`):
    blocks of `chunk` slots from each row's first real key (transformers: from the first slot after the row's left
    padding), slots counted as `row_slots` counts them. Query t sits at slot `first_query_slot + t`."""
    slot, query, leading = row_slots(mask, first_query_slot)
    return mask & ((slot - 1 - leading) // chunk == (query - 1 - leading) // chunk)


def row_slots(mask: Array, first_query_slot: Array | int) -> tuple[Array, Array, Array]:
    """Where each key `[B, 1, 1, S]` and query `[B, 1, T, 1]` of `mask [B, 1, T, S]` sits, counted from 1 along its
    row, and the row's left padding `[B, 1, 1, 1]`. A gap of masked slots between a row's keys does not count: a
    mixed batch's padding of a shorter prefix, or left padding between a prefix and the tokens, so each row
    attends as it would alone. Padding at either end counts as transformers counts it (a pad query's window holds
    fewer real keys)."""
    T = mask.shape[-2]
    real = jnp.any(mask, axis=-2, keepdims=True)  # [B, 1, 1, S] keys some query sees
    leading = jnp.cumsum(real, axis=-1) == 0
    outside = leading | (jnp.cumsum(real[..., ::-1], axis=-1)[..., ::-1] == 0)
    slot = jnp.cumsum(real | outside, axis=-1, dtype=jnp.int32)  # slots counted, gaps between real keys skipped
    query = jnp.swapaxes(jnp.take(slot, jnp.arange(T) + first_query_slot, axis=-1), -1, -2)  # [B, 1, T, 1]
    return slot, query, jnp.sum(leading, axis=-1, keepdims=True, dtype=jnp.int32)


def query_slot(mask: Array, T: int, cache: KVCache | None) -> Array | int:
    """The key slot of the first of `T` queries in a self-attention `mask [.., S]` that ends with the input's T
    keys, or, when decoding, with the cache's slots (the query at its index)."""
    return mask.shape[-1] - T if cache is None else mask.shape[-1] - cache.slots + cache.index


def query_tokens(mask: Array, T: int, cache: KVCache | None) -> Array:
    """Which of the `T` current tokens are real (not padding), `[B or 1, T]`, read off a causal self-attention
    `mask [B or 1, 1, T, S]` (each query's own key slot)."""
    own = query_slot(mask, T, cache) + jnp.arange(T)
    return jnp.take_along_axis(mask[:, 0], jnp.broadcast_to(own[None, :, None], (mask.shape[0], T, 1)), axis=-1)[..., 0]


# --------------------------------------------------------------------------- attention


@flax.struct.dataclass
class RecurrentState:
    """What a decoding cache keeps of a recurrent layer (Gated DeltaNet's linear attention, jsoft.models.gated_deltanet;
    Mamba-2, jsoft.models.mamba2) instead of keys and values: the last inputs of its causal convolution
    `[B, taps - 1, C]` and its memory `[B, H, K, V]` (fp32)."""

    conv: Array
    memory: Array


@flax.struct.dataclass
class KVCache:
    """Preallocated decoding cache of one stack of self-attention layers. One buffer per layer,
    so a decoding loop updates each in place and attention reads it whole (slices of a stacked
    `[L, ...]` buffer would be copied at every step). A decoding loop may start with a key/value
    prefix in the first slots (`from_prefix`), which then needs no concatenation per step. A stack with
    linear-attention layers keeps their `RecurrentState` in `states` (their keys and values: None); one whose values
    are its keys (latent attention's rows) keeps no value buffers (`values=False`: v None, read as k)."""

    k: tuple[Array | None, ...]  # per layer [B * G, S, K]: rows and heads grouped, as attention reads them
    v: tuple[Array | None, ...]  # per layer [B * G, S, K]
    index: Array  # int32 scalar: next slot to write
    kv_heads: int = flax.struct.field(pytree_node=False)  # G, to ungroup the buffers
    states: tuple[RecurrentState | None, ...] = ()  # per layer, where a stack has recurrent layers
    # the slots, where no layer keeps a key buffer to tell them (a stack of recurrent layers only)
    recurrent_slots: int = flax.struct.field(pytree_node=False, default=0)

    @classmethod
    def zeros(cls, num_layers: int, batch: int, slots: int, kv_heads: int, head_dim: int, dtype,
              states: tuple[RecurrentState | None, ...] = (), values: bool = True,
              cacheless: tuple[bool, ...] = ()):
        """Empty buffers for every layer, but those that keep a recurrent state (`states`, initial states per
        layer: a model config's `recurrent_states`) and those that cache nothing (`cacheless`: its
        `cacheless_layers`); no value buffers without `values`."""
        keyless = lambda i: (bool(states) and states[i] is not None) or (bool(cacheless) and cacheless[i])
        zeros = lambda: tuple(None if keyless(i) else jnp.zeros((batch * kv_heads, slots, head_dim), dtype)
                              for i in range(num_layers))
        return cls(zeros(), zeros() if values else (None,) * num_layers, jnp.zeros((), jnp.int32), kv_heads,
                   tuple(states), slots)

    @classmethod
    def from_prefix(cls, prefix_kv: Array, slots: int, dtype, values: bool = True) -> KVCache:
        """A cache of `slots` whose first V hold the prefix `[L, 2, B, V, G, K]`; the next write goes
        to slot V. Without `values`, the prefix's values are its keys and no value buffers are kept."""
        V = prefix_kv.shape[3]
        pad = ((0, 0), (0, 0), (0, slots - V), (0, 0))
        k = tuple(grouped_heads(jnp.pad(heads_major(layer[0].astype(dtype)), pad)) for layer in prefix_kv)
        v = tuple(grouped_heads(jnp.pad(heads_major(layer[1].astype(dtype)), pad)) if values else None
                  for layer in prefix_kv)
        return cls(k, v, jnp.asarray(V, jnp.int32), prefix_kv.shape[4])

    @property
    def slots(self) -> int:
        return next((k.shape[1] for k in self.k if k is not None), self.recurrent_slots)

    def as_prefix(self) -> Array:
        """The cached keys and values in the prefix layout `[L, 2, B, S, G, K]`."""
        if any(s is not None for s in self.states):
            raise ValueError("this cache holds recurrent layers' states (linear attention, Mamba-2), which no "
                             "key/value prefix holds")
        values = tuple(k if v is None else v for k, v in zip(self.k, self.v))
        k, v = (jnp.stack([self.ungrouped(x) for x in xs]) for xs in (self.k, values))
        return jnp.swapaxes(jnp.stack([k, v], axis=1), 3, 4)

    def ungrouped(self, x: Array) -> Array:
        """One layer's `[B * G, S, K]` -> `[B, G, S, K]`."""
        return x.reshape(-1, self.kv_heads, *x.shape[1:])

    def take_rows(self, rows: Array) -> KVCache:
        """The cache of the batch rows `rows` (beam search reorders its beams)."""
        take = lambda x: None if x is None else grouped_heads(self.ungrouped(x)[rows])
        states = jax.tree.map(lambda x: x[rows], self.states)
        return self.replace(k=tuple(map(take, self.k)), v=tuple(map(take, self.v)), states=states)


def heads_major(x: Array) -> Array:
    """Keys or values `[B, S, G, K]` (as projected) -> `[B, G, S, K]` (as attention and the cache hold them)."""
    return jnp.swapaxes(x, 1, 2)


def grouped_heads(x: Array) -> Array:
    """`[B, G, S, K]` -> `[B * G, S, K]`."""
    return x.reshape(-1, *x.shape[2:])


def update_cache(cache_k: Array, cache_v: Array | None, index: Array, k: Array, v: Array):
    """Write `k, v [B, G, T, K]` into one layer's cache slots `[B * G, S, K]` starting at `index` (only `k` where
    the cache keeps no values, `cache_v` None)."""
    start = (0, index, 0)
    cache_k = jax.lax.dynamic_update_slice(cache_k, grouped_heads(k).astype(cache_k.dtype), start)
    if cache_v is not None:
        cache_v = jax.lax.dynamic_update_slice(cache_v, grouped_heads(v).astype(cache_v.dtype), start)
    return cache_k, cache_v


def with_prefix(k: Array, v: Array, mask: Array, prefix_k: Array | None, prefix_v: Array | None,
                prefix_mask: Array | None):
    """Put prefix keys/values `[B, V, G, K]` in front of the keys `[B, G, S, K]`; extend the 4-D mask."""
    if prefix_k is None:
        return k, v, mask
    B, V = prefix_k.shape[:2]
    pm = jnp.ones((B, V), bool) if prefix_mask is None else prefix_mask.astype(bool)
    T = mask.shape[2]
    pm = jnp.broadcast_to(pm[:, None, None, :], (B, 1, T, V))
    mask = jnp.concatenate([pm, jnp.broadcast_to(mask, (B,) + mask.shape[1:])], axis=-1)
    k = jnp.concatenate([heads_major(prefix_k.astype(k.dtype)), k], axis=2)
    v = jnp.concatenate([heads_major(prefix_v.astype(v.dtype)), v], axis=2)
    return k, v, mask


def dot_product_attention(q: Array, k: Array, v: Array, mask: Array | None, *, scale: float,
                          bias: Array | None = None, softcap: float | None = None, dropout: DropoutRng | None = None,
                          dropout_rate: float = 0.0, sinks: Array | None = None) -> Array:
    """q `[B, T, H, K]`, k/v `[B, G, S, K]` (values may be of another width) or a decoding cache's grouped
    `[B * G, S, K]`, with H a multiple
    of G (grouped-query attention), mask `[B|1, 1, T, S]` bool, bias `[B|1, H, T, S]` added to the scores,
    `softcap` capping the scaled scores (`ops.softcap`). Softmax in fp32; `sinks [H]` (GPT-OSS): one more logit
    per head in each softmax, attending to nothing (it only takes probability from the keys).

    Both products are batched over `B * G` with the queries transposed to `[B * G, r * T, K]` first. A grouped
    cache is read as it stands, with no reshape between its update and the dot, so that XLA:CPU updates the
    cache in place (with a bitcast in between, it copied each layer's cache four times per step at batch 1).
    Keys `[B, G, S, K]` are reshaped to that form (free), rather than multiplied as `btgrk,bgsk->bgrts`: XLA:CPU
    folds that transpose of the queries into the dot, whose forward and backward then ran 1.6x slower (8 x 12
    heads x 148 tokens x 64)."""
    B, T, H, K = q.shape
    if k.ndim == 4:
        k, v = k.reshape(-1, *k.shape[2:]), v.reshape(-1, *v.shape[2:])
    G = k.shape[0] // B
    r, S = H // G, k.shape[-2]
    q = jnp.transpose(q.reshape(B, T, G, r, K), (0, 2, 3, 1, 4)).reshape(B * G, r * T, K)
    scores = ops.einsum("zmk,zsk->zms", q, k, out_dtype=jnp.float32).reshape(B, G, r, T, S)
    scores = scores * scale
    if softcap is not None:
        scores = ops.softcap(scores, softcap)
    if bias is not None:
        scores = scores + bias.astype(jnp.float32).reshape(bias.shape[0], G, r, *bias.shape[2:])
    if mask is not None:
        scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    if sinks is None:
        probs = ops.softmax(scores)
    else:
        sink = jnp.broadcast_to(sinks.astype(jnp.float32).reshape(1, G, r, 1, 1), (*scores.shape[:-1], 1))
        probs = ops.softmax(jnp.concatenate([scores, sink], axis=-1))[..., :-1]
    keep = None if dropout is None else dropout.keep_mask(probs.shape, dropout_rate)
    if keep is not None:
        probs = dropped(probs, keep, dropout_rate)
    probs, Kv = probs.astype(v.dtype), v.shape[-1]
    out = ops.einsum("zms,zsk->zmk", probs.reshape(B * G, r * T, S), v)
    return jnp.transpose(out.reshape(B, G, r, T, Kv), (0, 3, 1, 2, 4)).reshape(B, T, H, Kv)


def split_heads(x: Array, n: int) -> Array:
    return x.reshape(*x.shape[:-1], n, x.shape[-1] // n)


def split_grouped_qkv(qkv: Array, groups: int, head_dim: int) -> tuple[Array, Array, Array]:
    """A fused query / key / value projection `[B, T, W]` laid out in key / value groups, `[G, N / G + 2, K]`: each
    group's queries, then its key, then its value (Falcon, GPT-BigCode; G = 1 is multi-query, G = N interleaves
    each head's q, k, v) -> queries `[B, T, N, K]`, keys and values `[B, T, G, K]`."""
    B, T, W = qkv.shape
    qkv = qkv.reshape(B, T, groups, W // (groups * head_dim), head_dim)
    return qkv[..., :-2, :].reshape(B, T, -1, head_dim), qkv[..., -2, :], qkv[..., -1, :]


def merge_heads(x: Array) -> Array:
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def layer_prefix(prefix_kv: Array | None, i: int):
    """Layer i's `(prefix_k, prefix_v)` from `prefix_kv[L, 2, B, V, G, K]`."""
    if prefix_kv is None:
        return None, None
    return prefix_kv[i, 0], prefix_kv[i, 1]


def self_attention_kv(k: Array, v: Array, mask: Array, *, layer: int, cache: KVCache | None,
                      prefix_kv: Array | None, prefix_mask: Array | None):
    """The keys/values a self-attention layer attends to: its prefix, then either the current
    tokens `k, v [B, T, G, K]` or (when decoding) the cache after writing them into it.

    Returns `(k, v, mask, (new_cache_k, new_cache_v) | None)`, keys and values `[B, G, S, K]` (a decoding
    cache's grouped `[B * G, S, K]` when no prefix is added)."""
    k, v = heads_major(k), heads_major(v)
    new_layer_cache = None
    if cache is not None:
        ck, cv = update_cache(cache.k[layer], cache.v[layer], cache.index, k, v)
        k, v, new_layer_cache = ck, ck if cv is None else cv, (ck, cv)
        if prefix_kv is not None:
            k, v = cache.ungrouped(k), cache.ungrouped(v)
    pk, pv = layer_prefix(prefix_kv, layer)
    k, v, mask = with_prefix(k, v, mask, pk, pv, prefix_mask)
    return k, v, mask, new_layer_cache


def attention_kv(project_kv: Callable[[Array], tuple[Array, Array]], x: Array, mask: Array, *, layer: int,
                 cache: KVCache | None, prefix_kv: Array | None, prefix_mask: Array | None, kv_x: Array | None = None,
                 cross_kv: tuple | None = None):
    """What an encoder-decoder's attention layer reads: `(k, v, mask, new layer cache | None)`. Self-attention
    over `x` (its prefix, and the decoding cache) when neither `kv_x` nor `cross_kv` is given; cross-attention
    over the encoder states `kv_x` (`cross_attention_kv`: the layer's prefix in front, no cache), or the keys,
    values and mask that were computed from them once before (`cross_kv`). `project_kv(states)` gives the keys
    and values `[B, S, G, K]` of some states."""
    if cross_kv is not None:
        return (*cross_kv, None)
    if kv_x is not None:
        return (*cross_attention_kv(project_kv, kv_x, mask, layer=layer, prefix_kv=prefix_kv,
                                    prefix_mask=prefix_mask), None)
    k, v = project_kv(x)
    return self_attention_kv(k, v, mask, layer=layer, cache=cache, prefix_kv=prefix_kv, prefix_mask=prefix_mask)


def cross_attention_kv(project_kv: Callable[[Array], tuple[Array, Array]], enc: Array, enc_mask: Array, *, layer: int,
                       prefix_kv: Array | None, prefix_mask: Array | None) -> tuple[Array, Array, Array]:
    """Cross-attention's keys and values `[B, G, S, K]` over encoder states `enc` (the layer's prefix in front)
    and its 4-D mask `enc_mask` extended over the prefix."""
    k, v = project_kv(enc)
    return with_prefix(heads_major(k), heads_major(v), enc_mask, *layer_prefix(prefix_kv, layer), prefix_mask)


def run_layers(layers, x: Array, mask: Array, *args, cache: KVCache | None, prefix_kv: Array | None,
               prefix_mask: Array | None, drop: DropoutRng) -> tuple[Array, KVCache | None]:
    """A decoder stack: `layer(x, mask, *args, layer=i, cache=..., prefix_kv=..., prefix_mask=..., drop=...)` for
    each layer in turn, each returning `(x, its (k, v) cache or None)`; then the hidden states and the cache."""
    layer_caches = []
    for i, layer in enumerate(layers):
        x, lc = layer(x, mask, *args, layer=i, cache=cache, prefix_kv=prefix_kv, prefix_mask=prefix_mask, drop=drop)
        layer_caches.append(lc)
    return x, updated_cache(cache, layer_caches, x.shape[1])


def updated_cache(cache: KVCache | None, layers: list, written: int) -> KVCache | None:
    """The cache after one forward: the per-layer `(k, v)` that `self_attention_kv` returned (a linear-attention
    layer: its `RecurrentState`), and the index advanced past the `written` new tokens."""
    if cache is None:
        return None
    kv = [(None, None) if isinstance(lc, RecurrentState) else lc for lc in layers]
    states = tuple(lc if isinstance(lc, RecurrentState) else None for lc in layers) if cache.states else ()
    return cache.replace(k=tuple(k for k, _ in kv), v=tuple(v for _, v in kv), index=cache.index + written,
                         states=states)


@flax.struct.dataclass
class ModelOutput:
    logits: Array | None = None
    last_hidden_state: Array | None = None
    pooler_output: Array | None = None
    encoder_last_hidden_state: Array | None = None
    cache: KVCache | None = None
    loss: Array | None = None
