"""jsoft.models.ops: same values and derivatives as the plain formulas, and less kept for the backward pass.

The memory tests compile the gradient of an L-layer chain (`x <- op(x) @ w`, `w` frozen) and read the
compiled program's temp buffer size per layer and element: the plain formulas keep more arrays per layer
alive until the backward pass than the ops do.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsoft.models import layers, ops

B, D, L = 1024, 128, 8


def _plain_layer_norm(x, s, b, eps):
    m = x.mean(-1, keepdims=True)
    return (x - m) * jax.lax.rsqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps) * s + b


def _plain_rms_norm(x, s, eps):
    return x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + eps) * s


def _inputs():
    k = jax.random.split(jax.random.key(0), 4)
    x = 2.0 * jax.random.normal(k[0], (4, 6, 32))
    s = 1.0 + jax.random.normal(k[1], (32,))
    b = jax.random.normal(k[2], (32,))
    w = jax.random.normal(k[3], x.shape)  # cotangent weights
    return x, s, b, w


PAIRS = {
    "gelu": (ops.gelu, lambda x: jax.nn.gelu(x, approximate=False)),
    "gelu_tanh": (ops.gelu_tanh, lambda x: jax.nn.gelu(x, approximate=True)),
    "softmax": (ops.softmax, lambda x: jax.nn.softmax(x, axis=-1)),
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_activation_values_and_derivatives_match_plain(name):
    op, plain = PAIRS[name]
    x, _, _, w = _inputs()
    if name == "softmax":  # masked scores, as attention passes them
        x = jnp.where(w > 1.0, x, jnp.finfo(jnp.float32).min)
    np.testing.assert_allclose(op(x), plain(x), atol=1e-6)
    g_op = jax.grad(lambda x: jnp.sum(op(x) * w))(x)
    g_plain = jax.grad(lambda x: jnp.sum(plain(x) * w))(x)
    np.testing.assert_allclose(g_op, g_plain, atol=1e-5)
    _, t_op = jax.jvp(op, (x,), (w,))
    _, t_plain = jax.jvp(plain, (x,), (w,))
    np.testing.assert_allclose(t_op, t_plain, atol=1e-5)


@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm"])
def test_norm_values_and_derivatives_match_plain(kind):
    x, s, b, w = _inputs()
    if kind == "layer_norm":
        op, plain = (lambda x, s, b: ops.layer_norm(x, s, b, 1e-5)), (lambda x, s, b: _plain_layer_norm(x, s, b, 1e-5))
    else:
        op, plain = (lambda x, s, b: ops.rms_norm(x, s, 1e-6)), (lambda x, s, b: _plain_rms_norm(x, s, 1e-6))
    np.testing.assert_allclose(op(x, s, b), plain(x, s, b), atol=1e-5)
    g_op = jax.grad(lambda *a: jnp.sum(op(*a) * w), argnums=(0, 1, 2))(x, s, b)
    g_plain = jax.grad(lambda *a: jnp.sum(plain(*a) * w), argnums=(0, 1, 2))(x, s, b)
    for a, e in zip(g_op, g_plain):
        np.testing.assert_allclose(a, e, atol=1e-4)
    # only x differentiated (frozen scale and bias): the same input gradient
    g_x = jax.grad(lambda x: jnp.sum(op(x, s, b) * w))(x)
    np.testing.assert_allclose(g_x, g_op[0], atol=1e-6)
    # bf16 input: computed in fp32, same values to bf16 precision
    np.testing.assert_allclose(op(x.astype(jnp.bfloat16), s, b), plain(x, s, b), atol=5e-2)


def _temp_per_layer_element(layer, *args) -> float:
    """Compiled temp bytes of grad(sum(chain)) per layer and activation element."""
    w = jnp.eye(D) * 0.9

    def loss(x, *args):
        for _ in range(L):
            x = layer(x, *args) @ w
        return x.sum()

    x = jnp.ones((B, D), jnp.float32)
    compiled = jax.jit(jax.grad(loss)).lower(x, *args).compile()
    return compiled.memory_analysis().temp_size_in_bytes / (B * D * L)


def test_gelu_keeps_one_array_per_layer():
    for op, plain in (PAIRS["gelu"], PAIRS["gelu_tanh"]):
        kept, kept_plain = _temp_per_layer_element(op), _temp_per_layer_element(plain)
        assert kept <= 4.5, kept  # one fp32 array per layer (the input)
        assert kept < 0.6 * kept_plain, (kept, kept_plain)


def test_rms_norm_keeps_no_more_than_plain():
    s = jnp.ones((D,))
    kept = _temp_per_layer_element(lambda x, s: ops.rms_norm(x, s, 1e-6), s)
    kept_plain = _temp_per_layer_element(lambda x, s: _plain_rms_norm(x, s, 1e-6), s)
    assert kept <= kept_plain + 0.1, (kept, kept_plain)


def test_dropout_mask_is_kept_packed():
    """A dropout mask costs an eighth of a byte per element until the backward pass; the 32-bit draws
    (jax.random.bernoulli: two uint32 words per element under threefry) are not kept."""

    def dropout_chain(x, key):
        drop = layers.DropoutRng(key)
        for _ in range(L):
            x = drop(x, 0.1) @ (jnp.eye(D) * 0.9)
        return x.sum()

    def bernoulli_chain(x, key):
        for i in range(L):
            keep = jax.random.bernoulli(jax.random.fold_in(key, i), 0.9, x.shape)
            x = jnp.where(keep, x / 0.9, 0.0) @ (jnp.eye(D) * 0.9)
        return x.sum()

    x, key = jnp.ones((B, D)), jax.random.key(0)
    temp = {f.__name__: jax.jit(jax.grad(f)).lower(x, key).compile().memory_analysis().temp_size_in_bytes
            / (B * D * L) for f in (dropout_chain, bernoulli_chain)}
    assert temp["dropout_chain"] < temp["bernoulli_chain"] - 3.5, temp  # 4 bytes per element less, at least


def test_dropout_keep_rate_and_scale():
    x = jnp.ones((200_000,))
    y = layers.DropoutRng(jax.random.key(1))(x, 0.25)
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.75) < 0.005
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)
    # different sites draw different masks; no key means no dropout
    drop = layers.DropoutRng(jax.random.key(1))
    assert not np.array_equal(drop(x, 0.25) != 0, drop(x, 0.25) != 0)
    assert layers.DropoutRng(None)(x, 0.25) is x


def test_bf16_dense_backward_runs_on_the_bf16_weights():
    """With bf16 frozen weights, every matmul that reads a weight, forward and backward, takes it in bf16
    (the backward pass does not run on fp32 copies) and accumulates in fp32 (the form the CPU's bf16 dot
    units and GPU/TPU matrix units run); the input gradient stays close to fp32's."""
    import re

    from flax import nnx

    p = layers.Precision(jnp.bfloat16, jnp.bfloat16)
    lin = layers.dense(D, 3 * D, ("embed", "mlp"), p, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (B, D), jnp.bfloat16)

    def loss(x):
        return jnp.sum(jnp.tanh(lin(x).astype(jnp.float32)))

    hlo = jax.jit(jax.grad(loss)).lower(x).as_text()
    dots = re.findall(r"stablehlo.dot_general.*?: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)", hlo)
    assert len(dots) == 2, dots  # forward and the input gradient; none for the frozen weight
    weight = f"tensor<{D}x{3 * D}x"
    assert all(w.startswith(weight) and w.endswith("bf16>") for _, w, _ in dots), dots
    assert all(x.endswith("bf16>") and out.endswith("f32>") for x, _, out in dots), dots
    kernel = lin.kernel[...].astype(jnp.float32)
    want = jax.grad(lambda x: jnp.sum(jnp.tanh(x @ kernel + lin.bias[...].astype(jnp.float32))))(x.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(jax.grad(loss)(x), np.float32), want, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("spec", ["btgrk,bgsk->bgrts", "bgrts,bgsk->btgrk", "btd,vd->btv", "vd,nd->vn"])
def test_half_einsum_values_and_gradients_match_fp32(spec):
    sa, sb = spec.split("->")[0].split(",")
    size = dict(b=2, t=5, g=2, r=3, k=8, s=7, d=16, v=11, n=4)
    k = jax.random.split(jax.random.key(0), 3)
    a = jax.random.normal(k[0], [size[c] for c in sa])
    b = jax.random.normal(k[1], [size[c] for c in sb])
    w = jax.random.normal(k[2], jnp.einsum(spec, a, b).shape)

    def loss(fn):
        return jax.value_and_grad(lambda a, b: jnp.sum(w * fn(spec, a, b).astype(jnp.float32)), argnums=(0, 1))

    want = loss(jnp.einsum)(a, b)
    half = loss(ops.einsum)(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))
    for got, ref in zip(jax.tree.leaves(half), jax.tree.leaves(want)):
        assert got.dtype == (jnp.float32 if got.ndim == 0 else jnp.bfloat16)
        scale = float(jnp.max(jnp.abs(ref)))
        np.testing.assert_allclose(np.asarray(got, np.float32), ref, atol=0.03 * scale)
    # fp32 operands: exactly jnp.einsum
    np.testing.assert_array_equal(ops.einsum(spec, a, b), jnp.einsum(spec, a, b))


@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
def test_half_attention_backward_form_per_backend(backend, monkeypatch):
    """A bf16 attention's forward and backward products as each backend runs them: on a GPU or TPU every dot
    reads bf16 operands as the einsum states them and accumulates in fp32; XLA:CPU multiplies the two
    gradients whose contracted axis is major (dk and dv) on fp32 copies. Both forms compute the same."""
    import re

    Bq, T, H, G, K = 2, 6, 4, 2, 8
    ks = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(ks[0], (Bq, T, H, K), jnp.bfloat16)
    k, v = (jax.random.normal(x, (Bq, G, T, K), jnp.bfloat16) for x in ks[1:3])
    w = jax.random.normal(ks[3], (Bq, T, H, K))
    mask = layers.causal_mask(jnp.arange(T), jnp.arange(T))[None, None]

    def loss(q, k, v):
        out = layers.dot_product_attention(q, k, v, mask, scale=K ** -0.5)
        return jnp.sum(w * out.astype(jnp.float32))

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
    want = grad(q, k, v)  # this machine's form
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    hlo = jax.jit(grad).lower(q, k, v).as_text()
    dots = re.findall(r"stablehlo.dot_general.*?: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)", hlo)
    assert len(dots) == 6, dots  # scores and output, forward; dq, dk, dprobs, dv
    half = [a.endswith("bf16>") and b.endswith("bf16>") and out.endswith("f32>") for a, b, out in dots]
    assert sum(half) == (4 if backend == "cpu" else 6), dots
    got = grad(q, k, v)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), atol=0.02, rtol=0.02)


@pytest.mark.parametrize("dn, shapes", [
    ((((1,), (0,)), ((), ())), ((3, 4), (4, 5))),
    ((((2,), (1,)), ((0,), (0,))), ((2, 3, 4), (2, 4, 5))),
    ((((0, 2), (2, 0)), ((), ())), ((4, 3, 6), (6, 5, 4))),
    ((((3,), (1,)), ((0,), (0,))), ((2, 3, 5, 4), (2, 4, 6))),
])
def test_dot_general_spec_matches_dot_general(dn, shapes):
    a = jax.random.normal(jax.random.key(0), shapes[0])
    b = jax.random.normal(jax.random.key(1), shapes[1])
    spec = ops.dot_general_spec(dn, a.ndim, b.ndim)
    np.testing.assert_allclose(jnp.einsum(spec, a, b), jax.lax.dot_general(a, b, dn), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(layers.ACTIVATIONS))
def test_activation_matches_transformers(name):
    """Every activation name jsoft accepts is the function transformers' ACT2FN gives that name."""
    torch = pytest.importorskip("torch")
    from transformers.activations import ACT2FN

    x = np.linspace(-12.0, 12.0, 4001, dtype=np.float32)
    ref = ACT2FN[name](torch.tensor(x)).numpy()
    np.testing.assert_allclose(np.asarray(layers.activation(name)(jnp.asarray(x))), ref, atol=3e-6, rtol=1e-6)


def test_unknown_activation_names_the_valid_ones():
    with pytest.raises(ValueError, match="unsupported activation 'prelu'.*'quick_gelu'"):
        layers.activation("prelu")


def test_param_rngs_draws_nnx_rngs_keys_and_traces():
    """`layers.param_rngs(key)` hands out `nnx.Rngs(params=key)`'s keys in the same order, eagerly and traced."""
    from flax import nnx

    ours, theirs = layers.param_rngs(3), nnx.Rngs(params=3)
    for _ in range(3):
        np.testing.assert_array_equal(jax.random.key_data(ours.params()), jax.random.key_data(theirs.params()))
    p = layers.Precision()
    built = jax.jit(lambda: nnx.state(layers.dense(4, 5, ("embed", "mlp"), p, rngs=layers.param_rngs(7))))()
    want = nnx.state(layers.dense(4, 5, ("embed", "mlp"), p, rngs=nnx.Rngs(params=7)))
    np.testing.assert_allclose(built["kernel"].get_value(), want["kernel"].get_value(), rtol=1e-5, atol=1e-7)
