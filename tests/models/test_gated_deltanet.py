"""Gated DeltaNet's chunked rule against its token-by-token recurrence (transformers' two torch forms)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsoft.models.gated_deltanet import gated_delta_rule, gated_delta_step, l2_normed, unit_lower_inverse


def inputs(B, T, H, K, V, seed=0):
    rng = np.random.default_rng(seed)
    q, k = (l2_normed(jnp.asarray(rng.normal(size=(B, T, H, K)), jnp.float32)) for _ in range(2))
    v = jnp.asarray(rng.normal(size=(B, T, H, V)), jnp.float32)
    g = -jnp.abs(jnp.asarray(rng.normal(size=(B, T, H)), jnp.float32))
    beta = jax.nn.sigmoid(jnp.asarray(rng.normal(size=(B, T, H)), jnp.float32))
    memory = jnp.asarray(rng.normal(size=(B, H, K, V)), jnp.float32)
    return q * K ** -0.5, k, v, g, beta, memory


def recurrence(q, k, v, g, beta, memory):
    def body(m, xs):
        out, m = gated_delta_step(*(x[:, None] for x in xs), m)
        return m, out[:, 0]

    memory, out = jax.lax.scan(body, memory, tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v, g, beta)))
    return jnp.moveaxis(out, 0, 1), memory


@pytest.mark.parametrize("chunk", [None, 64])  # this backend's size; an accelerator's
@pytest.mark.parametrize("T", [1, 10, 64, 100, 150])  # one chunk, a full one, a padded last one, several
def test_chunked_rule_equals_the_recurrence(T, chunk):
    q, k, v, g, beta, memory = inputs(2, T, 3, 16, 12)
    rule = functools.partial(gated_delta_rule, chunk=chunk)
    for start in (None, memory):
        got, got_memory = jax.jit(rule)(q, k, v, g, beta, start)
        want, want_memory = recurrence(q, k, v, g, beta, jnp.zeros_like(memory) if start is None else start)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
        np.testing.assert_allclose(got_memory, want_memory, atol=2e-5, rtol=0)
    # and its gradients (a loss that weights every output differently)
    w = jnp.asarray(np.random.default_rng(1).normal(size=want.shape), jnp.float32)
    loss = lambda rule: lambda q, k, v, g, beta: jnp.sum(rule(q, k, v, g, beta, memory)[0] * w)
    got = jax.jit(jax.grad(loss(rule), argnums=(0, 1, 2, 3, 4)))(q, k, v, g, beta)
    want = jax.grad(loss(recurrence), argnums=(0, 1, 2, 3, 4))(q, k, v, g, beta)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, float(jnp.abs(b).max())), rtol=0)


@pytest.mark.parametrize("C", [1, 2, 3, 5, 64])
def test_unit_lower_inverse(C):
    a = np.tril(np.random.default_rng(0).normal(size=(2, C, C)) * 0.3, -1)
    want = np.linalg.inv(np.eye(C) + a)
    np.testing.assert_allclose(unit_lower_inverse(jnp.asarray(a, jnp.float32)), want, atol=1e-5, rtol=0)
