"""jsoft.models.heads: the LM head's logits and gradients, whatever the vocabulary's size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsoft.models import heads


def _dot_output_shapes(fn, *args):
    return [tuple(e.outvars[0].aval.shape) for e in jax.make_jaxpr(fn)(*args).eqns
            if e.primitive.name == "dot_general"]


@pytest.mark.parametrize("vocab_axis", [0, 1])
@pytest.mark.parametrize("multiple", [None, 128])
@pytest.mark.parametrize("vocab", [101, 128, 1000, 50257 // 64])
def test_lm_head_pads_the_vocabulary_for_the_matmul_only(vocab, multiple, vocab_axis):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    rows = heads.FEW_ROWS + 32  # past the transposed decoding form
    h = jax.random.normal(k1, (2, rows // 2, 16))
    emb = jax.random.normal(k2, (vocab, 16))
    ct = jax.random.normal(k3, (2, rows // 2, vocab))

    def head(h, emb):  # the weight as the model holds it: an embedding [V, D] or a head's kernel [D, V]
        return heads.lm_head_logits(h, emb if vocab_axis == 0 else emb.T, vocab_axis, multiple)

    def loss(fn, h):
        return jnp.sum(fn(h, emb) * ct)

    logits = head(h, emb)
    plain = jnp.einsum("btd,vd->btv", h, emb, precision="highest")
    assert logits.shape == plain.shape and logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, plain, rtol=1e-5, atol=1e-5)
    grad = jax.grad(lambda h: loss(head, h))(h)
    plain_grad = jax.grad(lambda h: loss(lambda h, e: jnp.einsum("btd,vd->btv", h, e, precision="highest"), h))(h)
    np.testing.assert_allclose(grad, plain_grad, rtol=1e-4, atol=1e-4)

    multiple = multiple or heads.lm_head_vocab_multiple()  # this backend's
    padded = vocab if vocab % 8 == 0 or multiple == 1 else -(-vocab // multiple) * multiple
    assert heads.padded_vocab(vocab, multiple) == padded
    assert _dot_output_shapes(head, h, emb) == [(2, rows // 2, padded)]


@pytest.mark.parametrize("vocab_axis", [0, 1])
def test_lm_head_few_rows_match(vocab_axis):
    """The decoding form (a few rows) gives the same logits for either weight layout, and pads nothing
    (the padded weight would be a copy at every decoding step)."""
    h = jax.random.normal(jax.random.key(1), (2, 3, 16))
    emb = jax.random.normal(jax.random.key(2), (101, 16))

    def head(h, emb):
        return heads.lm_head_logits(h, emb if vocab_axis == 0 else emb.T, vocab_axis, vocab_multiple=128)

    logits = head(h, emb)
    np.testing.assert_allclose(logits, jnp.einsum("btd,vd->btv", h, emb, precision="highest"), rtol=1e-5, atol=1e-5)
    assert all(101 in shape for shape in _dot_output_shapes(head, h, emb))
    assert not any(128 in shape for shape in _dot_output_shapes(head, h, emb))
