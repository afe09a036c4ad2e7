"""Mamba-2's chunked scan against its token-by-token recurrence (transformers' two torch forms), and Granite 4's
Mamba-2 layers against transformers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsoft
from jsoft.models.mamba2 import ssd_scan, ssd_step
from tests import tiny
from tests.models.test_parity import batch


def inputs(B, T, H, N, P, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(B, T, H, P)), jnp.float32)
    log_decay = -jnp.abs(jnp.asarray(rng.normal(size=(B, T, H)), jnp.float32))
    b, c = (jnp.asarray(rng.normal(size=(B, T, H, N)), jnp.float32) for _ in range(2))
    memory = jnp.asarray(rng.normal(size=(B, H, N, P)), jnp.float32)
    return x, log_decay, b, c, memory


def recurrence(x, log_decay, b, c, memory):
    def body(m, xs):
        out, m = ssd_step(*(t[:, None] for t in xs), m)
        return m, out[:, 0]

    memory, out = jax.lax.scan(body, memory, tuple(jnp.moveaxis(t, 1, 0) for t in (x, log_decay, b, c)))
    return jnp.moveaxis(out, 0, 1), memory


@pytest.mark.parametrize("chunk", [None, 64])  # this backend's size; an accelerator's
@pytest.mark.parametrize("T", [1, 10, 64, 100, 150])  # one chunk, a full one, a padded last one, several
def test_chunked_scan_equals_the_recurrence(T, chunk):
    x, log_decay, b, c, memory = inputs(2, T, 3, 8, 12)
    scan = functools.partial(ssd_scan, chunk=chunk)
    for start in (None, memory):
        got, got_memory = jax.jit(scan)(x, log_decay, b, c, start)
        want, want_memory = recurrence(x, log_decay, b, c, jnp.zeros_like(memory) if start is None else start)
        np.testing.assert_allclose(got, want, atol=1e-4 * float(jnp.abs(want).max()), rtol=0)
        np.testing.assert_allclose(got_memory, want_memory, atol=1e-4 * float(jnp.abs(want_memory).max()), rtol=0)
    # and its gradients (a loss that weights every output differently)
    w = jnp.asarray(np.random.default_rng(1).normal(size=want.shape), jnp.float32)
    loss = lambda f: lambda x, log_decay, b, c: jnp.sum(f(x, log_decay, b, c, memory)[0] * w)
    got = jax.jit(jax.grad(loss(scan), argnums=(0, 1, 2, 3)))(x, log_decay, b, c)
    want = jax.grad(loss(recurrence), argnums=(0, 1, 2, 3))(x, log_decay, b, c)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, atol=1e-4 * max(1.0, float(jnp.abs(e).max())), rtol=0)


def test_mamba2_layers_matter_and_follow_transformers(tiny_dir):
    """Granite 4.0-H's tiny model: zeroing one Mamba-2 layer's output moves jsoft's logits and transformers' alike (so
    the parity tests see those layers)."""
    import torch

    path = tiny_dir("granitemoehybrid", "causal_lm")
    ids, mask = batch("granitemoehybrid")
    ref = tiny.build("granitemoehybrid", "causal_lm")
    model = jsoft.from_pretrained(path, task="causal_lm")
    before = np.asarray(model(input_ids=ids, attention_mask=mask).logits)
    model.model.layers[2].mamba.out_proj.kernel[...] = jnp.zeros_like(model.model.layers[2].mamba.out_proj.kernel[...])
    after = np.asarray(model(input_ids=ids, attention_mask=mask).logits)
    with torch.no_grad():
        ref.model.layers[2].mamba.out_proj.weight.zero_()
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    keep = mask.astype(bool)
    assert np.abs(after - before)[keep].max() > 0.1
    np.testing.assert_allclose(after[keep], want[keep], atol=1e-4, rtol=0)


def test_a_stack_of_mamba2_layers_only_generates_what_full_passes_pick(tiny_dir):
    """No attention layer, so no key buffer tells the decoding cache its slots (transformers' generate refuses such
    a stack: "get_seq_length can only be called on Attention layers"): greedy decoding from the recurrent states
    equals the argmax of a full forward pass at each step, from a left-padded row too."""
    path = tiny_dir("granitemoehybrid", "causal_lm", layer_types=["mamba", "mamba"], num_hidden_layers=2,
                    initializer_range=0.5)
    pm = jsoft.PeftModel(jsoft.from_pretrained(path, task="causal_lm"), None)
    ids = np.random.default_rng(4).integers(3, tiny.VOCAB, size=(2, 7))
    mask = np.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    got = np.asarray(pm.generate(ids, mask, max_new_tokens=6, eos_token_id=[]))[:, 7:]
    for b in range(2):
        row = ids[b, mask[b].astype(bool)][None]
        for t in range(6):
            logits = np.asarray(pm.base_model(input_ids=row).logits)[0, -1]
            assert got[b, t] == logits.argmax()
            row = np.concatenate([row, [[got[b, t]]]], axis=1)
    assert len(set(got[0])) > 1
