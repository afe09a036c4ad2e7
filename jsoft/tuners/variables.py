"""The trainable variable type and PyTorch-default initialisers for the prompt modules."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


class Trainable(nnx.Param):
    """Everything jsoft trains: prompts, prompt/prefix encoders and task heads.

    `nnx.split(peft_model, jsoft.Trainable, ...)` separates them from the frozen backbone
    (plain `nnx.Param`); gradients and optimizer state exist for these leaves only."""


def trainable(value: jax.Array) -> Trainable:
    return Trainable(value, out_sharding=(None,) * value.ndim, eager_sharding=False)


def normal(key, shape) -> Trainable:
    """torch.nn.Embedding's default: N(0, 1)."""
    return trainable(jax.random.normal(key, shape, jnp.float32))


def uniform_fan_in(key, shape, fan_in: int) -> Trainable:
    """torch.nn.Linear / nn.LSTM defaults: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return trainable(jax.random.uniform(key, shape, jnp.float32, -bound, bound))


class Linear(nnx.Module):
    """A trainable fp32 dense layer with PyTorch's default init; kernel is `[in, out]`."""

    def __init__(self, d_in: int, d_out: int, key: jax.Array, *, zero: bool = False):
        k1, k2 = jax.random.split(key)
        self.kernel = (trainable(jnp.zeros((d_in, d_out))) if zero
                       else uniform_fan_in(k1, (d_in, d_out), d_in))
        self.bias = trainable(jnp.zeros((d_out,))) if zero else uniform_fan_in(k2, (d_out,), d_in)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x.astype(jnp.float32) @ self.kernel[...] + self.bias[...]
