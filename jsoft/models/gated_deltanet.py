"""Gated DeltaNet (Yang et al. 2024), the linear-attention layers of Qwen3-Next and Qwen3.5, as transformers computes
them (Qwen3NextGatedDeltaNet, Qwen3_5GatedDeltaNet, with their torch fallbacks of the FLA kernels).

A layer projects each token to queries and keys (`linear_num_key_heads` heads), values and output gates
(`linear_num_value_heads` heads; each key head serves consecutive value heads), a per-head write strength `beta` and
decay `g`. Queries, keys and values first pass a depthwise causal convolution (`linear_conv_kernel_dim` taps, SiLU).
A per-head memory `S [key dim, value dim]` then follows the delta rule: decay by exp(g), write beta * (v - S k)
along k, read S q. Queries and keys are L2-normed, queries scaled by key_dim ** -0.5. Padding tokens enter as zeros
(transformers' `apply_mask_to_padding_states`), so a left-padded row equals the row alone.

Passes over several tokens run the chunked form (`gated_delta_rule`: within a chunk, a unit triangular system inverted
by matmuls, then matmuls; a scan carries the memory across chunks); a decoding step runs the recurrence once
(`gated_delta_step`).
Both in fp32, as transformers runs them. What a decoding cache keeps per layer is a `RecurrentState`: the last
inputs of the convolution and the memory, not keys and values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jsoft.models import ops
from jsoft.models.layers import KVCache, Precision, RecurrentState, activation, axes, dense, query_tokens

Array = jax.Array
# tokens a chunk (transformers': 64). The result is the same for any; the inverse's cost grows with its cube, and on
# CPU a training step's rule ran 2.2x faster with 16 than with 64 (9 of a Qwen3.5-shaped model's 12 layers: 0.3 s of
# its 7.6 s step at 64); accelerators multiply 64-wide blocks far better
def chunk_size() -> int:
    return 16 if jax.default_backend() == "cpu" else 64
_HIGHEST = jax.lax.Precision.HIGHEST


def l2_normed(x: Array) -> Array:
    """FLA's L2 norm: x / sqrt(sum(x^2) + 1e-6), in fp32."""
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-6)


def einsum_highest(spec: str, a: Array, b: Array) -> Array:
    return jnp.einsum(spec, a, b, precision=_HIGHEST)


def gated_delta_rule(q: Array, k: Array, v: Array, g: Array, beta: Array, memory: Array | None,
                     chunk: int | None = None) -> tuple[Array, Array]:
    """The gated delta rule over T tokens, chunk by chunk (transformers' `torch_chunk_gated_delta_rule`).

    q, k `[B, T, H, K]` (normed and scaled), v `[B, T, H, V]`, g (log decay) and beta `[B, T, H]`, all fp32;
    memory `[B, H, K, V]` before the first token (None: zeros). Returns the outputs `[B, T, H, V]` and the memory
    after the last token."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    C = min(chunk or chunk_size(), T)
    q, k, v, g, beta = (to_chunks(x, C) for x in (q, k, v, g, beta))
    k_beta, v_beta = k * beta[..., None], v * beta[..., None]
    decay = jnp.cumsum(g, axis=-1)  # [N, B, H, C]: log decay from the chunk's start through each token
    lower = jnp.tril(jnp.ones((C, C), bool))
    # decay between token j and token i >= j of a chunk, 0 above the diagonal; exp never sees a positive argument
    # (there it would overflow, and XLA may evaluate it before masking)
    pair = jnp.where(lower, jnp.exp(jnp.minimum(decay[..., :, None] - decay[..., None, :], 0.0)), 0.0)
    # (I + A)^-1, A the strictly lower part of k_beta k^T * pair, solves each chunk's delta updates at once (the UT
    # transform)
    strictly_lower = jnp.tril(jnp.ones((C, C), bool), -1)
    inverse = unit_lower_inverse(jnp.where(strictly_lower, einsum_highest("nbhik,nbhjk->nbhij", k_beta, k) * pair, 0.0))
    new_values = einsum_highest("nbhij,nbhjv->nbhiv", inverse, v_beta)
    k_decayed = einsum_highest("nbhij,nbhjk->nbhik", inverse, k_beta * jnp.exp(decay)[..., None])
    intra = einsum_highest("nbhik,nbhjk->nbhij", q, k) * pair
    q = q * jnp.exp(decay)[..., None]
    k = k * jnp.exp(decay[..., -1:] - decay)[..., None]
    chunk_decay = jnp.exp(decay[..., -1])[..., None, None]

    def step(memory, xs):
        new_values, k_decayed, q, k, intra, chunk_decay = xs
        v_new = new_values - einsum_highest("bhck,bhkv->bhcv", k_decayed, memory)
        out = einsum_highest("bhck,bhkv->bhcv", q, memory) + einsum_highest("bhij,bhjv->bhiv", intra, v_new)
        return memory * chunk_decay + einsum_highest("bhck,bhcv->bhkv", k, v_new), out

    if memory is None:
        memory = jnp.zeros((B, H, K, V), jnp.float32)
    memory, out = jax.lax.scan(step, memory, (new_values, k_decayed, q, k, intra, chunk_decay))
    return from_chunks(out, T), memory


def to_chunks(x: Array, C: int) -> Array:
    """`[B, T, H, ...]` -> `[N, B, H, C, ...]`: the tokens in N chunks of C, the last padded with zeros."""
    B, T, H = x.shape[:3]
    pad = -T % C
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(B, (T + pad) // C, C, H, *x.shape[3:]), (1, 3), (0, 2))


def from_chunks(out: Array, T: int) -> Array:
    """`[N, B, H, C, V]` -> `[B, T, H, V]`, `to_chunks`' padding dropped."""
    N, B, H, C, V = out.shape
    return jnp.moveaxis(out, (0, 2), (1, 3)).reshape(B, N * C, H, V)[:, :T]


def unit_lower_inverse(a: Array) -> Array:
    """(I + A)^-1 for strictly lower triangular `A [..., C, C]`: A is nilpotent (A^C = 0), so the inverse is
    I - A + A^2 - ... = (I - A)(I + A^2)(I + A^4)..., log2(C) rounds of matmuls. (A triangular solve's gradient
    hung XLA:CPU at training shapes; accelerators run matmuls far better anyway.)"""
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    inverse, power = eye - a, a
    for _ in range(max(a.shape[-1] - 1, 1).bit_length() - 1):
        power = einsum_highest("...ij,...jk->...ik", power, power)
        inverse = einsum_highest("...ij,...jk->...ik", inverse, eye + power)
    return inverse


def gated_delta_step(q: Array, k: Array, v: Array, g: Array, beta: Array, memory: Array) -> tuple[Array, Array]:
    """One token of the rule (transformers' `torch_recurrent_gated_delta_rule`): q, k `[B, 1, H, K]`, v
    `[B, 1, H, V]`, g, beta `[B, 1, H]`, memory `[B, H, K, V]`."""
    q, k, v, g, beta = (x[:, 0] for x in (q, k, v, g, beta))
    memory = memory * jnp.exp(g)[..., None, None]
    delta = (v - einsum_highest("bhkv,bhk->bhv", memory, k)) * beta[..., None]
    memory = memory + k[..., :, None] * delta[..., None, :]
    return einsum_highest("bhkv,bhk->bhv", memory, q)[:, None], memory


class DepthwiseConv(nnx.Module):
    """torch's depthwise nn.Conv1d, its weight `[channels, 1, taps]` as stored; a bias with `bias` (Mamba-2's)."""

    def __init__(self, channels: int, taps: int, p: Precision, rngs: nnx.Rngs, bias: bool = False):
        init = nnx.initializers.normal(0.02)(rngs.params(), (channels, 1, taps), p.param_dtype)
        self.weight = nnx.Param(init, **axes(None, None, None))
        self.bias = nnx.Param(jnp.zeros((channels,), p.param_dtype), **axes(None)) if bias else None

    def __call__(self, x_BxTxC: Array, inputs_before: Array) -> tuple[Array, Array]:
        """Causal: output t sees inputs t - taps + 1 .. t, the earliest from `inputs_before [B, taps - 1, C]`
        (zeros at a sequence's start). Returns the output (fp32) and the last taps - 1 inputs."""
        w = self.weight[...][:, 0].astype(jnp.float32)  # [C, taps]
        taps, T = w.shape[1], x_BxTxC.shape[1]
        full = jnp.concatenate([inputs_before.astype(x_BxTxC.dtype), x_BxTxC], axis=1).astype(jnp.float32)
        out = sum(full[:, j:j + T] * w[:, j] for j in range(taps))
        if self.bias is not None:
            out = out + self.bias[...].astype(jnp.float32)
        return out, full[:, T:].astype(x_BxTxC.dtype)


class GatedRMSNorm(nnx.Module):
    """Qwen3NextRMSNormGated: RMS norm over a head's values (weight * x / rms(x)), times SiLU of its gate."""

    def __init__(self, d: int, eps: float, p: Precision):
        self.eps, self.dtype = eps, p.dtype
        self.weight = nnx.Param(jnp.ones((d,), p.param_dtype), **axes(None))

    def __call__(self, x: Array, gate: Array) -> Array:
        normed = ops.rms_norm(x, jnp.ones((), jnp.float32), self.eps).astype(x.dtype)
        h = self.weight[...].astype(x.dtype) * normed
        return (h.astype(jnp.float32) * jax.nn.silu(gate.astype(jnp.float32))).astype(self.dtype)


class GatedDeltaNet(nnx.Module):
    """A linear-attention layer under transformers' module names (`linear_attn.in_proj_qkv`, `conv1d`, `A_log`,
    `dt_bias`, `norm`, `out_proj`). Qwen3-Next fuses its projections per key head (`in_proj_qkvz`, `in_proj_ba`);
    Qwen3.5 keeps them apart (`in_proj_qkv`, `in_proj_z`, `in_proj_b`, `in_proj_a`)."""

    def __init__(self, c, p: Precision, rngs: nnx.Rngs):
        self.c = c
        d, Hv = c.hidden_size, c.linear_value_heads
        key_dim, value_dim = c.linear_key_heads * c.linear_key_head_dim, Hv * c.linear_value_head_dim
        proj = lambda n: dense(d, n, ("embed", None), p, bias=False, rngs=rngs)
        if c.linear_fused_projections:
            self.in_proj_qkvz = proj(2 * key_dim + 2 * value_dim)
            self.in_proj_ba = proj(2 * Hv)
        else:
            self.in_proj_qkv, self.in_proj_z, self.in_proj_b, self.in_proj_a = (
                proj(c.linear_conv_channels), proj(value_dim), proj(Hv), proj(Hv))
        self.conv1d = DepthwiseConv(c.linear_conv_channels, c.linear_conv_kernel, p, rngs)
        self.dt_bias = nnx.Param(jnp.ones((Hv,), p.param_dtype), **axes(None))
        self.A_log = nnx.Param(jnp.log(jnp.linspace(1.0, 16.0, Hv)).astype(p.param_dtype), **axes(None))
        self.norm = GatedRMSNorm(c.linear_value_head_dim, c.rms_norm_eps, p)
        self.out_proj = dense(value_dim, d, (None, "embed"), p, bias=False, rngs=rngs)
        self.act = activation(c.activation)

    def __call__(self, x, mask, rope, *, layer, cache: KVCache | None, prefix_kv, prefix_mask, drop):
        c = self.c
        B, T, _ = x.shape
        x = x * query_tokens(mask, T, cache)[..., None].astype(x.dtype)  # padding enters as zeros
        state = None if cache is None else cache.states[layer]
        qkv, z, b, a = self.project(x)
        conv_before = jnp.zeros((B, c.linear_conv_kernel - 1, qkv.shape[-1]), x.dtype) if state is None else state.conv
        qkv, conv_after = self.conv1d(qkv, conv_before)
        qkv = self.act(qkv).astype(x.dtype).astype(jnp.float32)
        key_dim = c.linear_key_heads * c.linear_key_head_dim
        q, k, v = jnp.split(qkv, [key_dim, 2 * key_dim], axis=-1)
        repeat = c.linear_value_heads // c.linear_key_heads  # each key head serves consecutive value heads
        q, k = (jnp.repeat(l2_normed(t.reshape(B, T, -1, c.linear_key_head_dim)), repeat, axis=2) for t in (q, k))
        q = q * c.linear_key_head_dim ** -0.5
        v = v.reshape(B, T, -1, c.linear_value_head_dim)
        beta = jax.nn.sigmoid(b.astype(jnp.float32))
        g = -jnp.exp(self.A_log[...].astype(jnp.float32)) * jax.nn.softplus(
            a.astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32))
        if state is not None and T == 1:
            out, memory = gated_delta_step(q, k, v, g, beta, state.memory)
        else:
            out, memory = gated_delta_rule(q, k, v, g, beta, None if state is None else state.memory)
        out = self.norm(out.astype(x.dtype), z.reshape(B, T, -1, c.linear_value_head_dim))
        new_state = None if cache is None else RecurrentState(conv_after, memory)
        return self.out_proj(out.reshape(B, T, -1)), new_state

    def project(self, x):
        """The convolution's input (queries, keys, values) `[B, T, C]`, the output gates `[B, T, Hv * V]`, beta's and
        the decay's inputs `[B, T, Hv]`."""
        c = self.c
        if not c.linear_fused_projections:
            return self.in_proj_qkv(x), self.in_proj_z(x), self.in_proj_b(x), self.in_proj_a(x)
        # Qwen3-Next: per key head, [q, k, its value heads' v, their z] and [their b, their a]
        B, T, _ = x.shape
        Hk, K, V = c.linear_key_heads, c.linear_key_head_dim, c.linear_value_head_dim
        r = c.linear_value_heads // Hk
        q, k, v, z = jnp.split(self.in_proj_qkvz(x).reshape(B, T, Hk, -1), [K, 2 * K, 2 * K + r * V], axis=-1)
        b, a = jnp.split(self.in_proj_ba(x).reshape(B, T, Hk, 2 * r), 2, axis=-1)
        flat = lambda t: t.reshape(B, T, -1)
        return jnp.concatenate([flat(q), flat(k), flat(v)], axis=-1), flat(z), flat(b), flat(a)
