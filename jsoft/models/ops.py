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

`einsum` is the matmul of half-precision weights: bf16 operands, fp32 accumulation, in the forward and
the backward pass (the form that bf16 dot units and GPU/TPU matrix units run at full rate).
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


def softcap(x: Array, cap: float) -> Array:
    """`cap * tanh(x / cap)`: x squashed smoothly into (-cap, cap) (Gemma 2's attention scores and logits)."""
    return jnp.tanh(x / cap) * cap


def matmul_dtype(a: Array, b: Array) -> jnp.dtype | None:
    """The half dtype both operands share, or None (then a plain fp32 einsum is as fast)."""
    if a.dtype == b.dtype and jnp.dtype(a.dtype).itemsize < 4:
        return a.dtype
    return None


def einsum(spec: str, a: Array, b: Array, out_dtype=None) -> Array:
    """`jnp.einsum(spec, a, b)` whose forward and backward matmuls all read half-precision operands
    and accumulate in fp32 when `a` and `b` share a half dtype; the result is `out_dtype` (default:
    the operands' dtype). Other operands get a plain einsum with fp32 accumulation.

    Differentiated as written, a half einsum's backward pass would either take the cotangent in fp32
    against the half operand (a mixed dot, which XLA runs on fp32 copies) or produce half outputs,
    which XLA:CPU also computes on fp32 copies: at half the speed of a half-in fp32-out dot, the form
    that runs on the CPU's bf16 dot-product units and on GPU/TPU matrix units."""
    half = matmul_dtype(a, b)
    if half is None:
        out = jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
        return out if out_dtype is None else out.astype(out_dtype)
    return _half_einsum(spec, a, b, jnp.dtype(half if out_dtype is None else out_dtype))


def _einsum_f32(spec: str, a: Array, b: Array) -> Array:
    """`einsum(spec, a, b)` accumulated in fp32, as one batched matmul `[batch, m, k] x [batch, k, n]` (or
    `[batch, n, k]`, whichever `b` is closer to) of the operands' axes grouped, then ungrouped into `spec`'s
    output order.

    XLA:CPU runs a half-in fp32-out dot only with `a`'s contracted axes minor; it has no fallback for other
    forms ("Unsupported element type for DotThunk"), and it folds a transpose that leaves the batch axes in
    place (or an output transpose of interleaved axes) back into the dot. Grouping keeps the output
    transpose separate; an `a` that would need such a transpose (the contracted axes major, as in a
    weight-style gradient) is multiplied in fp32 instead.

    GPUs and TPUs take the einsum as it stands: their dots read half operands in any layout. There the
    fp32 fallback ran two of attention's four backward products on fp32 copies, and grouping added
    transposes: the einsum as written made an H200's GPT-2-medium train step 1.2% faster."""
    if jax.default_backend() != "cpu":
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
    inputs, out = spec.split("->")
    sa, sb = inputs.split(",")
    batch = [c for c in sa if c in sb and c in out]
    contracted = [c for c in sa if c in sb and c not in out]
    a_free = [c for c in sa if c not in sb]
    b_free = [c for c in sb if c not in sa]
    if list(sa) != batch + a_free + contracted and list(sa[:len(batch)]) == batch:
        return jnp.einsum(spec, a.astype(jnp.float32), b.astype(jnp.float32))
    natural = batch + a_free + b_free
    b_kn, b_nk = batch + contracted + b_free, batch + b_free + contracted
    if list(sa) == batch + a_free + contracted and list(sb) in (b_kn, b_nk) and list(out) == natural:
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)  # one dot as it stands (dense layers)
    size = dict(zip(sa, a.shape)) | dict(zip(sb, b.shape))

    def grouped(x, spec, groups):
        x = jnp.transpose(x, [spec.index(c) for g in groups for c in g])
        return x.reshape([math.prod(size[c] for c in g) for g in groups])

    z = "z" if batch else ""  # the grouped batch axis, if any
    groups = [batch] if batch else []
    a = grouped(a, sa, groups + [a_free, contracted])
    if list(sb) == b_nk:
        b, spec_b = grouped(b, sb, groups + [b_free, contracted]), "nk"
    else:
        b, spec_b = grouped(b, sb, groups + [contracted, b_free]), "kn"
    y = jnp.einsum(f"{z}mk,{z}{spec_b}->{z}mn", a, b, preferred_element_type=jnp.float32)
    return jnp.transpose(y.reshape([size[c] for c in natural]), [natural.index(c) for c in out])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _half_einsum(spec: str, a: Array, b: Array, out_dtype) -> Array:
    return _einsum_f32(spec, a, b).astype(out_dtype)


def _half_einsum_fwd(spec, a, b, out_dtype):
    return _half_einsum(spec, a, b, out_dtype), (a, b)


def _half_einsum_bwd(spec, out_dtype, residuals, ct):
    # Each operand's gradient is an einsum of the cotangent (rounded to the half dtype, as mixed
    # precision does) with the other operand. An unused gradient (a frozen weight) is dead code under jit.
    a, b = residuals
    inputs, out = spec.split("->")
    sa, sb = inputs.split(",")
    ct = ct.astype(a.dtype)
    da = _einsum_f32(f"{out},{sb}->{sa}", ct, b).astype(a.dtype)
    db = _einsum_f32(f"{sa},{out}->{sb}", a, ct).astype(b.dtype)
    return da, db


_half_einsum.defvjp(_half_einsum_fwd, _half_einsum_bwd)


def dot_general_spec(dimension_numbers, lhs_ndim: int, rhs_ndim: int) -> str:
    """The einsum spec of `jax.lax.dot_general(lhs, rhs, dimension_numbers)`: batch axes, then lhs's
    free axes, then rhs's."""
    (lc, rc), (lb, rb) = dimension_numbers
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs = [next(letters) for _ in range(lhs_ndim)]
    rhs = [None] * rhs_ndim
    for i, j in zip(lc, rc):
        rhs[j] = lhs[i]
    for i, j in zip(lb, rb):
        rhs[j] = lhs[i]
    rhs = [s if s is not None else next(letters) for s in rhs]
    out = [lhs[i] for i in lb] + [s for i, s in enumerate(lhs) if i not in lc and i not in lb]
    out += [s for j, s in enumerate(rhs) if j not in rc and j not in rb]
    return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"
