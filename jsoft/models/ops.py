"""Activations, softmax and norms with closed-form derivatives that keep little for the backward pass.

Soft-prompt training backpropagates through the whole frozen backbone, so what the forward pass
keeps for the backward pass sets the training step's memory. Differentiated as written, exact GELU
keeps `erfc(x)`-sized intermediates besides `x`, `jax.nn.softmax` differentiates through its
normalisation (it has no custom derivative unless `jax_softmax_custom_jvp` is set) and a LayerNorm
keeps its centred and normalised input. Each op here states its JVP in closed form:

  * `gelu` / `gelu_tanh`: `gelu'(x) * dx`, with `gelu'` sharing nothing with the forward formula,
    so XLA recomputes it inside the backward pass from `x` alone;
  * `softmax`: `y * (dx - sum(y * dx))` from its output `y`;
  * `layer_norm` / `rms_norm`: from the input and the per-row mean and inverse scale.

The values are those of the plain formulas (tested against `jax.nn` and the HF PyTorch models), the
derivatives are tested against autodiff of the plain formulas, and tests/models/test_ops.py measures
what the compiled gradient keeps. All compute in fp32.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

Array = jax.Array

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_C = math.sqrt(2.0 / math.pi)


def _elementwise_jvp(fn, grad):
    """A unary op `f = fn` whose JVP is `grad(x) * dx`.

    `grad` shares no subexpression with `fn` (erf, not erfc; its own tanh), so XLA fuses all of it into
    the backward pass and keeps only `x` alive in between; shared intermediates would be written out
    and kept as well."""

    @jax.custom_jvp
    def f(x):
        return fn(x)

    @f.defjvp
    def _(primals, tangents):
        x = primals[0]
        return fn(x), grad(x) * tangents[0]

    return f


def _gelu(x):
    x32 = x.astype(jnp.float32)
    return (0.5 * x32 * jax.lax.erfc(-x32 * _SQRT_HALF)).astype(x.dtype)


def _gelu_grad(x):
    x32 = x.astype(jnp.float32)
    cdf = 0.5 + 0.5 * jax.lax.erf(x32 * _SQRT_HALF)
    return (cdf + x32 * _INV_SQRT_2PI * jnp.exp(-0.5 * x32 * x32)).astype(x.dtype)


def _gelu_tanh(x):
    x32 = x.astype(jnp.float32)
    return (0.5 * x32 * (1.0 + jnp.tanh(_TANH_C * (x32 + 0.044715 * x32 ** 3)))).astype(x.dtype)


def _gelu_tanh_grad(x):
    x32 = x.astype(jnp.float32)
    t = jnp.tanh(_TANH_C * x32 * (1.0 + 0.044715 * x32 * x32))
    grad = 0.5 * (1.0 + t) + 0.5 * x32 * (1.0 - t * t) * _TANH_C * (1.0 + 3 * 0.044715 * x32 * x32)
    return grad.astype(x.dtype)


gelu = _elementwise_jvp(_gelu, _gelu_grad)  # exact (erf) GELU, `jax.nn.gelu(x, approximate=False)`
gelu_tanh = _elementwise_jvp(_gelu_tanh, _gelu_tanh_grad)  # `jax.nn.gelu(x, approximate=True)`


@jax.custom_jvp
def softmax(x: Array) -> Array:
    """Softmax over the last axis (fp32 in, fp32 out); masked entries should hold a large negative finite."""
    e = jnp.exp(x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True)))
    return e / jnp.sum(e, axis=-1, keepdims=True)


@softmax.defjvp
def _softmax_jvp(primals, tangents):
    y = softmax(primals[0])
    dx = tangents[0]
    return y, y * (dx - jnp.sum(y * dx, axis=-1, keepdims=True))


def _statistics(x: Array, eps: float, centre: bool):
    """`(x32, mean, inv)` over the last axis: `(x - mean) * inv` is the normalised input (mean 0 for RMS)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True) if centre else jnp.zeros((), jnp.float32)
    inv = jax.lax.rsqrt(jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True) + eps)
    return x, mean, inv


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _norm(x: Array, scale: Array, bias: Array, eps: float, centre: bool) -> Array:
    x, mean, inv = _statistics(x, eps, centre)
    return (x - mean) * inv * scale.astype(jnp.float32) + bias.astype(jnp.float32)


def _norm_jvp(eps, centre, primals, tangents):
    # Written in terms of x and the per-row mean and inv only (not the normalised x): XLA then keeps the
    # input, which it writes out anyway, and recomputes the rest inside the backward pass. Symbolic zeros:
    # a frozen scale or bias (the usual case) adds no term.
    x, scale, bias = primals
    dx, dscale, dbias = tangents
    x, mean, inv = _statistics(x, eps, centre)
    s = scale.astype(jnp.float32)
    out = (x - mean) * inv * s + bias.astype(jnp.float32)
    d_out = jnp.zeros_like(out)
    if not isinstance(dx, SymbolicZero):
        dx = dx.astype(jnp.float32)
        if centre:
            dx = dx - jnp.mean(dx, axis=-1, keepdims=True)
        proj = jnp.mean((x - mean) * dx, axis=-1, keepdims=True) * inv * inv
        d_out = (dx - (x - mean) * proj) * inv * s
    if not isinstance(dscale, SymbolicZero):
        d_out = d_out + (x - mean) * inv * dscale.astype(jnp.float32)
    if not isinstance(dbias, SymbolicZero):
        d_out = d_out + dbias.astype(jnp.float32)
    return out, d_out


_norm.defjvp(_norm_jvp, symbolic_zeros=True)


def layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
    """`(x - mean) / sqrt(var + eps) * scale + bias` over the last axis, in fp32."""
    return _norm(x, scale, bias, eps, True)


def rms_norm(x: Array, scale: Array, eps: float) -> Array:
    """`x / sqrt(mean(x^2) + eps) * scale` over the last axis, in fp32 (T5, Llama)."""
    return _norm(x, scale, jnp.zeros((), scale.dtype), eps, False)
