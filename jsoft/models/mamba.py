"""Mamba (Gu & Dao 2023, selective state spaces), the layers of Mamba and FalconMamba stacks and of Jamba, as
transformers computes them (MambaMixer, FalconMambaMixer, JambaMambaMixer, with their torch fallbacks of the mamba_ssm
kernels).

A layer projects each token to x and a gate z (`in_proj`), passes x through a depthwise causal convolution (with a
bias) and the activation, and reads from it a low-rank step (`x_proj`'s first `time_step_rank` outputs, widened by
`dt_proj`, whose bias is added before the softplus) and B, C `[N]` that every channel shares (FalconMamba RMS-normalises
the step, B and C without weights first; Jamba with weights: `dt_layernorm`, `b_layernorm`, `c_layernorm`). Channel d
keeps a memory `h [N]` that decays by exp(dt_d A_d) (A = -exp(A_log), `[D, N]`: unlike Mamba-2's, a rate per state
entry) and takes in dt_d B x_d; it reads C.h, plus D x; times SiLU(z), then `out_proj`. Padding tokens enter as zeros
(before the projection and after the convolution).

The recurrence runs token by token over the pass (`selective_scan`, fp32, the memory carried in a scan), a decoding step
once. The memory is kept `[B, D, N, 1]`: Mamba-2's `[B, H, N, P]` with a head a channel of width 1, so both share
`RecurrentState` and `Config.recurrent_states` (`linear_value_heads` D, `linear_key_head_dim` N)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jsoft.models import ops
from jsoft.models.gated_deltanet import DepthwiseConv
from jsoft.models.layers import KVCache, Precision, RecurrentState, RMSNorm, activation, axes, dense, query_tokens

Array = jax.Array


def selective_scan(x: Array, dt: Array, a: Array, b: Array, c: Array, memory: Array | None) -> tuple[Array, Array]:
    """`h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t`, `y_t = h_t C_t` per channel, over T tokens: x, dt `[B, T, D]`,
    a `[D, N]`, b, c `[B, T, N]`, all fp32; memory `[B, D, N]` before the first token (None: zeros). Returns y
    `[B, T, D]` and the memory after the last token.

    The memory runs channels-minor (`[B, N, D]`: a token's update is elementwise over contiguous channels, the read
    `C.h` a sum of N rows), and its gradient is written out (`_scan`'s reverse recurrence) rather than derived from
    the scan: on this CPU a layer's forward and backward pass at Mamba-130m's width (8 x 148 tokens) took 1.5-1.8x less
    time than JAX's transpose of the scan, which also kept more than the states for the backward pass."""
    if memory is None:
        memory = jnp.zeros((x.shape[0], *a.shape), jnp.float32)
    y, memory = _scan(x, dt, a.T, b, c, jnp.swapaxes(memory, 1, 2))
    return y, jnp.swapaxes(memory, 1, 2)


def _tokens_major(*ts: Array) -> tuple[Array, ...]:
    return tuple(jnp.swapaxes(t, 0, 1) for t in ts)


def _scan_forward(x, dt, a, b, c, h):
    """The recurrence in `[B, N, D]` (a `[N, D]`): y `[B, T, D]`, the last memory, and each token's memory before it
    `[T, B, N, D]` (what the backward pass reads)."""
    def step(h, inputs):
        x, dt, b, c = inputs
        after = jnp.exp(dt[:, None, :] * a) * h + (dt * x)[:, None, :] * b[..., None]
        return after, ((after * c[..., None]).sum(1), h)

    h, (y, before) = jax.lax.scan(step, h, _tokens_major(x, dt, b, c))
    return jnp.swapaxes(y, 0, 1), h, before


@jax.custom_vjp
def _scan(x, dt, a, b, c, h):
    y, h, _ = _scan_forward(x, dt, a, b, c, h)
    return y, h


def _scan_fwd(x, dt, a, b, c, h):
    y, last, before = _scan_forward(x, dt, a, b, c, h)
    return (y, last), (x, dt, a, b, c, before)


def _scan_bwd(residuals, grads):
    """Backward through the tokens: the gradient reaching h_t is the next token's, decayed (exp(dt_{t+1} A)), plus
    y_t's (`gy_t C_t`); from it, and the memory before the token, follow the gradients of that token's x, dt, B, C and
    of A (summed over tokens)."""
    x, dt, a, b, c, before = residuals
    gy, g_last = grads

    def step(carry, inputs):
        g_after, ga = carry
        gy, x, dt, b, c, h_before = inputs
        decay = jnp.exp(dt[:, None, :] * a)
        g = g_after + gy[:, None, :] * c[..., None]  # of h_t, [B, N, D]
        g_decay = g * h_before * decay  # of dt_t A
        g_input = (g * b[..., None]).sum(1)  # of dt_t x_t, [B, D]
        gc = ((decay * h_before + (dt * x)[:, None, :] * b[..., None]) * gy[:, None, :]).sum(-1)
        outputs = (g_input * dt, (g_decay * a).sum(1) + g_input * x, (g * (dt * x)[:, None, :]).sum(-1), gc)
        return (g * decay, ga + g_decay * dt[:, None, :]), outputs  # A's summed over the batch once, after

    (g_first, ga), (gx, gdt, gb, gc) = jax.lax.scan(
        step, (g_last, jnp.zeros_like(g_last)), (*_tokens_major(gy, x, dt, b, c), before), reverse=True)
    return (*_tokens_major(gx, gdt), ga.sum(0), *_tokens_major(gb, gc), g_first)


_scan.defvjp(_scan_fwd, _scan_bwd)


class Mamba(nnx.Module):
    """A Mamba layer under transformers' module names (`mixer.in_proj`, `conv1d`, `x_proj`, `dt_proj`, `A_log`, `D`,
    `out_proj`). Its shape, in `Config`'s linear-layer fields: channels `linear_value_heads` (D), state
    `linear_key_head_dim` (N), step rank `linear_dt_rank`; `linear_bcdt_norm_eps` FalconMamba's norms (Jamba's, with
    weights, under `linear_bcdt_norm_weights`)."""

    def __init__(self, c, p: Precision, rngs: nnx.Rngs):
        self.c, self.dtype = c, p.dtype
        d, D, N, R = c.hidden_size, c.linear_value_heads, c.linear_key_head_dim, c.linear_dt_rank
        self.in_proj = dense(d, 2 * D, ("embed", "mlp"), p, bias=c.linear_proj_bias, rngs=rngs)
        self.conv1d = DepthwiseConv(D, c.linear_conv_kernel, p, rngs, bias=c.linear_conv_bias)
        self.x_proj = dense(D, R + 2 * N, ("mlp", None), p, bias=False, rngs=rngs)
        self.dt_proj = dense(R, D, (None, "mlp"), p, bias=True, rngs=rngs)
        a_log = jnp.broadcast_to(jnp.log(jnp.arange(1, N + 1, dtype=jnp.float32)), (D, N))
        self.A_log = nnx.Param(a_log.astype(p.param_dtype), **axes("mlp", None))
        self.D = nnx.Param(jnp.ones((D,), p.param_dtype), **axes("mlp"))
        self.out_proj = dense(D, d, ("mlp", "embed"), p, bias=c.linear_proj_bias, rngs=rngs)
        self.act = activation(c.linear_activation or c.activation)
        if c.linear_bcdt_norm_weights:  # Jamba
            eps = c.linear_bcdt_norm_eps
            self.dt_layernorm, self.b_layernorm, self.c_layernorm = (
                RMSNorm(width, eps, p, names=(None,)) for width in (R, N, N))

    def __call__(self, x, mask, rope, *, layer, cache: KVCache | None, prefix_kv, prefix_mask, drop):
        c = self.c
        B, T, _ = x.shape
        N, R = c.linear_key_head_dim, c.linear_dt_rank
        real = query_tokens(mask, T, cache)[..., None].astype(x.dtype)
        state = None if cache is None else cache.states[layer]
        xs, z = jnp.split(self.in_proj(x * real), 2, axis=-1)
        conv_before = jnp.zeros((B, c.linear_conv_kernel - 1, xs.shape[-1]), x.dtype) if state is None else state.conv
        xs, conv_after = self.conv1d(xs, conv_before)
        xs = self.act(xs).astype(x.dtype) * real  # padding zeroed again
        step, b, cs = jnp.split(self.x_proj(xs), [R, R + N], axis=-1)
        if c.linear_bcdt_norm_weights:  # Jamba
            step, b, cs = self.dt_layernorm(step), self.b_layernorm(b), self.c_layernorm(cs)
        elif c.linear_bcdt_norm_eps is not None:  # FalconMamba
            step, b, cs = (ops.rms_norm(t, jnp.ones((), jnp.float32), c.linear_bcdt_norm_eps).astype(t.dtype)
                           for t in (step, b, cs))
        dt = jax.nn.softplus(self.dt_proj(step).astype(jnp.float32))
        a = -jnp.exp(self.A_log[...].astype(jnp.float32))
        x32 = xs.astype(jnp.float32)
        y, memory = selective_scan(x32, dt, a, b.astype(jnp.float32), cs.astype(jnp.float32),
                                   None if state is None else state.memory[..., 0])
        y = (y + x32 * self.D[...].astype(jnp.float32)) * jax.nn.silu(z.astype(jnp.float32))
        new_state = None if cache is None else RecurrentState(conv_after, memory[..., None])
        return self.out_proj(y.astype(self.dtype)), new_state
