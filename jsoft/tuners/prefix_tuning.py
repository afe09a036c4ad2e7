"""Prefix Tuning (Li & Liang 2021) and P-Tuning v2 (Liu et al. 2022): per-layer key/value
prefixes, stored like PEFT as one `[V, N * 2 * D]` table (N prefixed attention layers, D the
key/value width; per token `[layer0 K | layer0 V | layer1 K | ...]`, each block head-major).

With `prefix_projection` the table is the output of Embedding(V, D) -> Linear(D, E) -> tanh ->
Linear(E, N * 2 * D); `fold()` evaluates it once so inference carries no MLP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jsoft.tuners.config import PrefixTuningConfig
from jsoft.tuners.variables import Linear, normal, trainable


class PrefixEncoder(nnx.Module):
    def __init__(self, config: PrefixTuningConfig, num_prefix_layers: int, key: jax.Array):
        V, D = config.num_virtual_tokens, config.token_dim
        width = num_prefix_layers * 2 * D
        k_emb, k1, k2 = jax.random.split(key, 3)
        zero = config.init_weights == "zero"
        self.transform_in = self.transform_out = nnx.data(None)  # present only while training the MLP
        if config.prefix_projection and not config.inference_mode:
            self.embedding = normal(k_emb, (V, D))
            self.transform_in = Linear(D, config.encoder_hidden_size, k1)
            self.transform_out = Linear(config.encoder_hidden_size, width, k2, zero=zero)
        else:
            self.embedding = trainable(jnp.zeros((V, width))) if zero else normal(k_emb, (V, width))

    def __call__(self, dropout_rng: jax.Array | None = None) -> jax.Array:
        x = self.embedding[...]
        if self.transform_in is None:
            return x
        return self.transform_out(jnp.tanh(self.transform_in(x)))

    def fold(self) -> None:
        self.embedding = trainable(self())
        self.transform_in = self.transform_out = None

    def export(self) -> jax.Array:
        return self()


def to_prefix_kv(table_VxW: jax.Array, num_layers: int, kv_heads: int, head_dim: int) -> jax.Array:
    """`[V, N * 2 * G * K]` -> `[N, 2, V, G, K]` (the backbone adds the batch axis)."""
    V = table_VxW.shape[0]
    return table_VxW.reshape(V, num_layers, 2, kv_heads, head_dim).transpose(1, 2, 0, 3, 4)


def peft_decoder_layers(stored_layers: int, decoder_layers: int) -> list[int]:
    """PEFT's encoder-decoder mapping: decoder layer i reads stored pair (2 i) mod L (PEFT
    duplicates the layer axis and splits it in groups of four: self K, self V, cross K, cross V,
    and the cross pair is then discarded)."""
    if decoder_layers > stored_layers:
        raise ValueError(f"the decoder has {decoder_layers} layers but the prefix stores {stored_layers} "
                         "(num_layers); PEFT's encoder-decoder prefix cannot reach the extra layers (PEFT fails "
                         "on it too). PrefixTuningConfig(prefix_targets='all') gives every attention layer its own "
                         "prefix (jsoft's format)")
    return [(2 * i) % stored_layers for i in range(decoder_layers)]
