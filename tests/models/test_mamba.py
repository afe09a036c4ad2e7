"""Mamba's selective scan (jsoft.models.mamba) against a direct loop over the recurrence, its memory carried across
passes, its gradients against JAX's of the plain recurrence, and FalconMamba's norms against Mamba with the same
weights."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsoft
from jsoft.models import llama
from jsoft.models.mamba import selective_scan
from tests import tiny
from tests.models.test_parity import batch


def test_selective_scan_follows_the_recurrence_and_carries_its_memory():
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t, y_t = h_t C_t per channel, from a given memory; two passes with the
    memory carried between them equal one."""
    rng = np.random.default_rng(0)
    B, T, D, N = 2, 9, 5, 4
    x, dt = (jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32) for _ in range(2))
    dt = jnp.abs(dt)
    a = -jnp.asarray(rng.uniform(0.1, 2.0, size=(D, N)), jnp.float32)
    b, c = (jnp.asarray(rng.normal(size=(B, T, N)), jnp.float32) for _ in range(2))
    h = np.asarray(rng.normal(size=(B, D, N)), np.float32)
    y, memory = selective_scan(x, dt, a, b, c, jnp.asarray(h))
    want = []
    for t in range(T):
        h = np.exp(np.asarray(dt[:, t])[..., None] * np.asarray(a)) * h + (
            np.asarray(dt[:, t] * x[:, t])[..., None] * np.asarray(b[:, t])[:, None, :])
        want.append(np.einsum("bdn,bn->bd", h, np.asarray(c[:, t])))
    np.testing.assert_allclose(np.asarray(y), np.stack(want, axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(memory), h, rtol=1e-5, atol=1e-5)
    first, mid = selective_scan(x[:, :4], dt[:, :4], a, b[:, :4], c[:, :4], None)
    second, end = selective_scan(x[:, 4:], dt[:, 4:], a, b[:, 4:], c[:, 4:], mid)
    whole, whole_end = selective_scan(x, dt, a, b, c, None)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(end, whole_end, rtol=1e-6, atol=1e-6)


def _scan_by_autodiff(x, dt, a, b, c, h):
    """The recurrence as a plain `lax.scan`, differentiated by JAX."""
    def step(h, inputs):
        x, dt, b, c = inputs
        h = jnp.exp(dt[..., None] * a) * h + (dt * x)[..., None] * b[:, None, :]
        return h, jnp.einsum("bdn,bn->bd", h, c, precision=jax.lax.Precision.HIGHEST)

    h, y = jax.lax.scan(step, h, tuple(jnp.swapaxes(t, 0, 1) for t in (x, dt, b, c)))
    return jnp.swapaxes(y, 0, 1), h


def test_selective_scan_gradients_equal_autodiffs_of_the_recurrence():
    """The written-out backward pass gives JAX's gradients of the plain recurrence, for every input: x, dt, A, B, C
    and the memory before the pass (a loss reading both the outputs and the memory after)."""
    rng = np.random.default_rng(1)
    B, T, D, N = 3, 11, 6, 4
    x = jnp.asarray(rng.normal(size=(B, T, D)), jnp.float32)
    dt = jnp.asarray(np.abs(rng.normal(size=(B, T, D))), jnp.float32)
    a = -jnp.asarray(rng.uniform(0.1, 2.0, size=(D, N)), jnp.float32)
    b, c = (jnp.asarray(rng.normal(size=(B, T, N)), jnp.float32) for _ in range(2))
    h = jnp.asarray(rng.normal(size=(B, D, N)), jnp.float32)
    wy, wh = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((B, T, D), (B, D, N)))

    def loss(scan, *args):
        y, memory = scan(*args)
        return (y * wy).sum() + (memory * wh).sum()

    got = jax.grad(lambda *args: loss(selective_scan, *args), argnums=tuple(range(6)))(x, dt, a, b, c, h)
    want = jax.grad(lambda *args: loss(_scan_by_autodiff, *args), argnums=tuple(range(6)))(x, dt, a, b, c, h)
    for name, g, w in zip(("x", "dt", "A", "B", "C", "memory"), got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5, err_msg=name)


def test_falcon_mamba_norms_change_what_mamba_computes(tiny_dir, tmp_path):
    """FalconMamba's weightless RMS norms on the steps, B and C: the same weights as Mamba's give other logits (so the
    parity tests against transformers see them)."""
    ids, mask = batch("mamba")
    falcon = tiny_dir("falcon_mamba", "causal_lm")
    got = np.asarray(jsoft.from_pretrained(falcon, task="causal_lm")(input_ids=ids, attention_mask=mask).logits)
    shutil.copytree(falcon, tmp_path / "as_mamba")
    hf = json.loads((falcon / "config.json").read_text()) | {"model_type": "mamba", "architectures": None}
    (tmp_path / "as_mamba" / "config.json").write_text(json.dumps(hf))
    plain = np.asarray(jsoft.from_pretrained(tmp_path / "as_mamba", task="causal_lm")(
        input_ids=ids, attention_mask=mask).logits)
    keep = mask.astype(bool)
    assert np.abs(got - plain)[keep].max() > 0.05


def test_mamba_config_reads_its_shape():
    """`intermediate_size` the channels (default expand x hidden_size), `time_step_rank` "auto" = ceil(hidden / 16),
    `state_size`; FalconMamba's `mixer_rms_eps`; the LM head tied by default, as MambaConfig ties it."""
    hf = json.loads(tiny.CONFIGS["mamba"]().to_json_string())
    c = llama.Config.from_hf({k: v for k, v in hf.items() if k not in ("intermediate_size", "tie_word_embeddings")})
    assert (c.linear_kind, c.linear_value_heads, c.linear_key_head_dim, c.linear_dt_rank, c.linear_conv_channels) == (
        "mamba", 96, 8, 3, 96)
    assert (c.layer_blocks, c.tie_word_embeddings, c.linear_bcdt_norm_eps) == (("mixer",) * 3, True, None)
    falcon = json.loads(tiny.CONFIGS["falcon_mamba"](mixer_rms_eps=1e-4, time_step_rank=7).to_json_string())
    assert (llama.Config.from_hf(falcon).linear_bcdt_norm_eps, llama.Config.from_hf(falcon).linear_dt_rank) == (1e-4, 7)
    assert "mamba's Mamba layers keep a recurrent state" in llama.Config.from_hf(hf).no_prefix_reason


def test_jamba_config_reads_its_layer_periods():
    """Jamba: attention where i % attn_layer_period == attn_layer_offset, experts where i % expert_layer_period ==
    expert_layer_offset (none with one expert); Mamba's steps, B and C normed with weights at rms_norm_eps."""
    hf = json.loads(tiny.CONFIGS["jamba"]().to_json_string())
    c = llama.Config.from_hf(hf)
    assert (c.linear_layers, c.moe_layers, c.nope_layers) == ((True, False) * 2, (True, False) * 2, (True,) * 4)
    assert (c.linear_kind, c.linear_value_heads, c.linear_dt_rank, c.linear_bcdt_norm_weights, c.norm_topk_prob) == (
        "mamba", 96, 3, True, False)
    assert llama.Config.from_hf(hf | dict(num_experts=1)).moe_layers == ()
    with pytest.raises(ValueError, match="attn_layer_offset=2 must be below attn_layer_period=2"):
        llama.Config.from_hf(hf | dict(attn_layer_offset=2))
