"""jsoft.optim: schedules, optimizer choice, clipping, and errors that name the config key."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jsoft import build, optim


def cfg(**kw):
    c = build.default_config().train
    c.unlock()
    for k, v in kw.items():
        c[k] = v
    return c


@pytest.mark.parametrize("name", optim.SCHEDULES)
def test_schedule_warmup_then_shape(name):
    f = optim.schedule(name, 0.1, warmup_steps=10, num_steps=110)
    assert float(f(0)) == 0.0
    assert float(f(5)) == pytest.approx(0.05)
    assert float(f(10)) == pytest.approx(0.1)
    mid, end = float(f(60)), float(f(110))
    if name == "constant":
        assert mid == pytest.approx(0.1) and end == pytest.approx(0.1)
    elif name == "linear":
        assert mid == pytest.approx(0.05) and end == pytest.approx(0.0, abs=1e-9)
    else:
        assert mid == pytest.approx(0.05, rel=1e-5) and end == pytest.approx(0.0, abs=1e-9)


def test_no_warmup():
    assert float(optim.schedule("constant", 0.3, 0, 100)(0)) == pytest.approx(0.3)


@pytest.mark.parametrize("kw,key", [(dict(schedule="step"), "train.schedule"),
                                    (dict(optimizer="adam"), "train.optimizer"),
                                    (dict(learning_rate=0.0), "train.learning_rate"),
                                    (dict(warmup_steps=-1), "train.warmup_steps")])
def test_errors_name_the_key(kw, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        optim.make(cfg(**kw), 100)


def _run(tx, params, grads, steps=3):
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_optimizers_descend(name):
    params = {"prompt": jnp.ones((4, 130)), "head": jnp.ones((3,))}
    grads = {"prompt": jnp.full((4, 130), 0.5), "head": jnp.full((3,), 0.5)}
    tx, lr = optim.make(cfg(optimizer=name, learning_rate=0.01), 10)
    out = _run(tx, params, grads)
    assert all(bool(jnp.all(out[k] < params[k])) for k in params)


def test_adafactor_is_lesters_recipe():
    """Factored second moments for matrices, no parameter scaling: the first update of a matrix with a
    constant gradient is -lr * sign(g) (Adafactor's update is RMS-normalised and clipped at 1)."""
    params = {"prompt": jnp.zeros((200, 130))}
    grads = {"prompt": jnp.full((200, 130), 3.0)}
    tx, _ = optim.make(cfg(optimizer="adafactor", learning_rate=0.3, max_grad_norm=0.0), 10)
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    np.testing.assert_allclose(np.asarray(updates["prompt"]), -0.3, rtol=1e-5)
    factored = [x for x in optax.tree_utils.tree_get_all_with_path(state, "v_row")]
    assert factored and factored[0][1]["prompt"].shape in ((200,), (130,))  # factored, not [200, 130]


def test_global_norm_clipping():
    params = {"a": jnp.zeros((2,))}
    grads = {"a": jnp.array([30.0, 40.0])}  # norm 50
    tx, _ = optim.make(cfg(optimizer="sgd", learning_rate=1.0, max_grad_norm=5.0), 10)
    out = _run(tx, params, grads, steps=1)
    np.testing.assert_allclose(np.asarray(out["a"]), [-3.0, -4.0], rtol=1e-6)
    tx, _ = optim.make(cfg(optimizer="sgd", learning_rate=1.0, max_grad_norm=0.0), 10)
    np.testing.assert_allclose(np.asarray(_run(tx, params, grads, steps=1)["a"]), [-30.0, -40.0])


def test_adamw_weight_decay_default_zero():
    params = {"a": jnp.full((3,), 2.0)}
    tx, _ = optim.make(cfg(learning_rate=0.1), 10)
    out = _run(tx, params, {"a": jnp.zeros((3,))}, steps=2)
    np.testing.assert_array_equal(np.asarray(out["a"]), 2.0)
    tx, _ = optim.make(cfg(learning_rate=0.1, weight_decay=0.5), 10)
    assert float(_run(tx, params, {"a": jnp.zeros((3,))}, steps=1)["a"][0]) == pytest.approx(2.0 - 0.1 * 0.5 * 2.0)


def test_config_section_is_a_configdict():
    assert isinstance(cfg(), ml_collections.ConfigDict)
