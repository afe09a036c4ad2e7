"""Mamba-2 (Dao & Gu 2024, state space duality), the recurrent layers of Granite 4's hybrids and Bamba, as transformers
computes them (GraniteMoeHybridMambaLayer, BambaMixer, with their torch fallbacks of the mamba_ssm kernels).

A layer projects each token to an output gate z, the convolution's input (x `[H, P]`, B and C `[G, N]`) and a step
size per head. x, B and C pass a depthwise causal convolution (`mamba_d_conv` taps, with a bias) and the activation.
Each head h keeps a memory `S [N, P]` that decays by exp(dt A) (A = -exp(A_log), dt = softplus(step + dt_bias)) and
takes in dt B x^T, B of the head's group (consecutive heads share one); it reads C^T S, plus D x. The output, times
SiLU(z), is RMS-normed over each group's channels, then `out_proj`. Padding tokens enter as zeros (transformers'
`apply_mask_to_padding_states`, before the projection and after the convolution).

Passes over several tokens run the chunked form (`ssd_scan`: within a chunk, decays between tokens as a lower
triangular mask on C B^T, an attention-like product; a scan carries the memory across chunks), a decoding step the
recurrence once (`ssd_step`), both in fp32 as transformers runs them. The memory is kept `[B, H, N, P]`, the layout
of Gated DeltaNet's, so both share `RecurrentState` and `Config.recurrent_states`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jsoft.models.gated_deltanet import DepthwiseConv, chunk_size, einsum_highest, from_chunks, to_chunks
from jsoft.models.layers import KVCache, Precision, RecurrentState, activation, axes, dense, query_tokens

Array = jax.Array


def ssd_scan(x: Array, log_decay: Array, b: Array, c: Array, memory: Array | None,
             chunk: int | None = None) -> tuple[Array, Array]:
    """The state space recurrence over T tokens, chunk by chunk (transformers' `mamba2_chunk_scan` without D):
    `S_t = exp(log_decay_t) S_{t-1} + b_t x_t^T`, `y_t = S_t^T c_t`.

    x `[B, T, H, P]` (already times dt), log_decay `[B, T, H]` (dt A, <= 0), b, c `[B, T, H, N]`, all fp32;
    memory `[B, H, N, P]` before the first token (None: zeros). Returns y `[B, T, H, P]` and the memory after the
    last token."""
    Bt, T, H, P = x.shape
    N = b.shape[-1]
    C = min(chunk or chunk_size(), T)
    x, log_decay, b, c = (to_chunks(t, C) for t in (x, log_decay, b, c))
    decay = jnp.cumsum(log_decay, axis=-1)  # [K, B, H, C]: from the chunk's start through each token
    lower = jnp.tril(jnp.ones((C, C), bool))
    # decay from token j to token i >= j; exp never sees a positive argument (masked entries would overflow)
    pair = jnp.where(lower, jnp.exp(jnp.minimum(decay[..., :, None] - decay[..., None, :], 0.0)), 0.0)
    intra = einsum_highest("kbhin,kbhjn->kbhij", c, b) * pair
    c_decayed = c * jnp.exp(decay)[..., None]
    b_decayed = b * jnp.exp(decay[..., -1:] - decay)[..., None]
    chunk_decay = jnp.exp(decay[..., -1])[..., None, None]

    def step(memory, xs):
        x, intra, c_decayed, b_decayed, chunk_decay = xs
        out = einsum_highest("bhij,bhjp->bhip", intra, x) + einsum_highest("bhin,bhnp->bhip", c_decayed, memory)
        return memory * chunk_decay + einsum_highest("bhjn,bhjp->bhnp", b_decayed, x), out

    if memory is None:
        memory = jnp.zeros((Bt, H, N, P), jnp.float32)
    memory, out = jax.lax.scan(step, memory, (x, intra, c_decayed, b_decayed, chunk_decay))
    return from_chunks(out, T), memory


def ssd_step(x: Array, log_decay: Array, b: Array, c: Array, memory: Array) -> tuple[Array, Array]:
    """One token of the recurrence (transformers' `mamba2_selective_state_update` without D): x `[B, 1, H, P]`,
    log_decay `[B, 1, H]`, b, c `[B, 1, H, N]`, memory `[B, H, N, P]`."""
    x, log_decay, b, c = (t[:, 0] for t in (x, log_decay, b, c))
    memory = memory * jnp.exp(log_decay)[..., None, None] + b[..., :, None] * x[..., None, :]
    return einsum_highest("bhnp,bhn->bhp", memory, c)[:, None], memory


class GroupedGatedRMSNorm(nnx.Module):
    """GraniteMoeHybridRMSNormGated: x times SiLU(gate), RMS-normed over each of `groups` equal slices of the
    channels, times the weight; in fp32."""

    def __init__(self, d: int, groups: int, eps: float, p: Precision):
        self.groups, self.eps = groups, eps
        self.weight = nnx.Param(jnp.ones((d,), p.param_dtype), **axes(None))

    def __call__(self, x: Array, gate: Array) -> Array:
        h = x.astype(jnp.float32) * jax.nn.silu(gate.astype(jnp.float32))
        grouped = h.reshape(*h.shape[:-1], self.groups, -1)
        grouped = grouped * jax.lax.rsqrt(jnp.mean(grouped * grouped, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(jnp.float32) * grouped.reshape(h.shape)


class Mamba2(nnx.Module):
    """A Mamba-2 layer under transformers' module names (`mamba.in_proj`, `conv1d`, `dt_bias`, `A_log`, `D`, `norm`,
    `out_proj`). Its shape, in `Config`'s linear-layer fields: heads `linear_value_heads` x `linear_value_head_dim`
    (H x P), groups `linear_key_heads` x state `linear_key_head_dim` (G x N)."""

    def __init__(self, c, p: Precision, rngs: nnx.Rngs):
        self.c, self.dtype = c, p.dtype
        d, H, width = c.hidden_size, c.linear_value_heads, c.linear_value_heads * c.linear_value_head_dim
        self.in_proj = dense(d, width + c.linear_conv_channels + H, ("embed", None), p, bias=c.linear_proj_bias,
                             rngs=rngs)
        self.conv1d = DepthwiseConv(c.linear_conv_channels, c.linear_conv_kernel, p, rngs, bias=c.linear_conv_bias)
        self.dt_bias = nnx.Param(jnp.ones((H,), p.param_dtype), **axes(None))
        self.A_log = nnx.Param(jnp.log(jnp.arange(1, H + 1, dtype=jnp.float32)).astype(p.param_dtype), **axes(None))
        self.D = nnx.Param(jnp.ones((H,), p.param_dtype), **axes(None))
        self.norm = GroupedGatedRMSNorm(width, c.linear_key_heads, c.rms_norm_eps, p)
        self.out_proj = dense(width, d, (None, "embed"), p, bias=c.linear_proj_bias, rngs=rngs)
        self.act = activation(c.linear_activation or c.activation)

    def __call__(self, x, mask, rope, *, layer, cache: KVCache | None, prefix_kv, prefix_mask, drop):
        c = self.c
        B, T, _ = x.shape
        H, P, N = c.linear_value_heads, c.linear_value_head_dim, c.linear_key_head_dim
        real = query_tokens(mask, T, cache)[..., None].astype(x.dtype)
        state = None if cache is None else cache.states[layer]
        z, xbc, step_size = jnp.split(self.in_proj(x * real), [H * P, H * P + c.linear_conv_channels], axis=-1)
        conv_before = jnp.zeros((B, c.linear_conv_kernel - 1, xbc.shape[-1]), x.dtype) if state is None else state.conv
        xbc, conv_after = self.conv1d(xbc, conv_before)
        xbc = (self.act(xbc).astype(x.dtype) * real).astype(jnp.float32)  # padding zeroed again
        xs, b, cs = jnp.split(xbc, [H * P, H * P + c.linear_key_heads * N], axis=-1)
        repeat = H // c.linear_key_heads  # consecutive heads share a group's B and C
        b, cs = (jnp.repeat(t.reshape(B, T, -1, N), repeat, axis=2) for t in (b, cs))
        xs = xs.reshape(B, T, H, P)
        dt = jax.nn.softplus(step_size.astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32))
        a = -jnp.exp(self.A_log[...].astype(jnp.float32))
        if state is not None and T == 1:  # transformers' decoding step leaves dt unclamped
            y, memory = ssd_step(xs * dt[..., None], dt * a, b, cs, state.memory)
        else:
            dt = jnp.clip(dt, *c.linear_dt_limit)
            y, memory = ssd_scan(xs * dt[..., None], dt * a, b, cs, None if state is None else state.memory)
        y = y + xs * self.D[...].astype(jnp.float32)[:, None]
        out = self.norm(y.reshape(B, T, H * P), z).astype(self.dtype)
        new_state = None if cache is None else RecurrentState(conv_after, memory)
        return self.out_proj(out), new_state
