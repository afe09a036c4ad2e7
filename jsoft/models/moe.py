"""Sparse mixture-of-experts feed-forward blocks (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE; GPT-OSS's, GraniteMoE's;
DeepSeek-V2's and V3's, which GLM-4.5, dots.llm1 and Mistral 4 share; Llama 4's, Hunyuan's): a
router picks each token's top-k experts, whose gated MLPs run as grouped matmuls (`jax.lax.ragged_dot`) over the
tokens sorted by expert: a token costs its k experts where the backend has grouped-matmul kernels (TPU); XLA's CPU
backend computes every expert's group over all the rows. With fewer (token, expert) rows than experts (a decoding
step), each row's expert's weights are gathered instead.

Experts' weights are stacked `[E, in, out]`; checkpoints store one tensor per expert
(`...experts.{e}.w1.weight`), which `hub.load_state` stacks (`checkpoint_key` names them with a `{}`). GPT-OSS's,
Llama 4's, GraniteMoE's and Mistral 4's checkpoints store them stacked already, `[E, in, out]` or `[E, out, in]`,
and are read as stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jsoft.models.layers import Fp32Buffer, Fp32Param, Precision, activation, axes, dense

# an expert's (gate, up, down) projections as checkpoints name them; (up, down) where experts have no gate
EXPERT_NAMES = {"mixtral": ("w1", "w3", "w2"), "minimax_m2": ("w1", "w3", "w2"),
                "nemotron_h": ("up_proj", "down_proj")}
DEFAULT_EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj")


class Groups(NamedTuple):
    """Rows sorted by expert: `sizes[e]` of them for expert e, and each row's expert."""

    sizes: jax.Array
    expert_of_row: jax.Array


def check_top_k(top_k: int, num_experts: int, key: str = "num_experts_per_tok") -> None:
    """A router's experts per token must be between 1 and its experts; the error names config.json's `key`."""
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"config.json {key}={top_k} must be between 1 and the {num_experts} experts")


class Experts(nnx.Module):
    """E MLPs under their checkpoint names: gated, `names` (gate, up, down), `[E, D, F]`, `[E, D, F]`, `[E, F, D]`
    (SiLU-gated in most families); or ungated, `names` (up, down) (Nemotron-H's ReLU² experts)."""

    def __init__(self, num_experts: int, d: int, f: int, names: tuple[str, ...], act: str, p: Precision,
                 rngs: nnx.Rngs):
        self.names, self.act, self.dtype = names, activation(act), p.dtype
        init = nnx.initializers.normal(0.02)
        inputs = (("embed", "mlp"),) * (len(names) - 1)  # the gate's and up's, or the up's alone
        for name, axis_names in zip(names, (*inputs, ("mlp", "embed"))):
            shape = tuple({"embed": d, "mlp": f}[a] for a in axis_names)
            value = init(rngs.params(), (num_experts, *shape), p.param_dtype)
            setattr(self, name, nnx.Param(value, **axes("expert", *axis_names)))

    def __call__(self, x_NxD: jax.Array, groups: Groups) -> jax.Array:
        """Rows of `x` sorted by expert (`groups`) through their experts."""
        *inputs, down = (getattr(self, n)[...] for n in self.names)
        h = self.act(grouped_matmul(x_NxD, inputs[0], groups))
        if len(inputs) == 2:  # gate, up
            h = h * grouped_matmul(x_NxD, inputs[1], groups)
        return grouped_matmul(h.astype(self.dtype), down, groups)


def grouped_linear(x_NxI: jax.Array, w_ExOxI: jax.Array, groups: Groups) -> jax.Array:
    """Each row times its expert's `w[e].T` (each `w[e]` a torch nn.Linear weight `[out, in]`), accumulated in fp32,
    in x's dtype (`grouped_matmul`'s two ways)."""
    if x_NxI.shape[0] < w_ExOxI.shape[0]:
        return _each_rows_expert("ni,noi->no", x_NxI, w_ExOxI, groups)
    dims = jax.lax.RaggedDotDimensionNumbers(dot_dimension_numbers=(((1,), (2,)), ((), ())),
                                             lhs_ragged_dimensions=[0], rhs_group_dimensions=[0])
    out = jax.lax.ragged_dot_general(x_NxI, w_ExOxI.astype(x_NxI.dtype), groups.sizes, dims,
                                     preferred_element_type=jnp.float32)
    return out.astype(x_NxI.dtype)


def grouped_matmul(x_NxI: jax.Array, w_ExIxO: jax.Array, groups: Groups) -> jax.Array:
    """Each row times its expert's `w[e]`, accumulated in fp32, in x's dtype: a grouped matmul over the rows as
    sorted (`jax.lax.ragged_dot`); with fewer rows than experts (a decoding step), each row's expert's weights gathered
    instead, so only the chosen experts are read (XLA's CPU ragged_dot runs every expert over every row)."""
    if x_NxI.shape[0] < w_ExIxO.shape[0]:
        return _each_rows_expert("ni,nio->no", x_NxI, w_ExIxO, groups)
    out = jax.lax.ragged_dot(x_NxI, w_ExIxO.astype(x_NxI.dtype), groups.sizes, preferred_element_type=jnp.float32)
    return out.astype(x_NxI.dtype)


def _each_rows_expert(spec: str, x_NxI: jax.Array, w_Ex__: jax.Array, groups: Groups) -> jax.Array:
    w = w_Ex__[groups.expert_of_row].astype(x_NxI.dtype)
    return jnp.einsum(spec, x_NxI, w, preferred_element_type=jnp.float32).astype(x_NxI.dtype)


class SparseMoE(nnx.Module):
    """transformers' sparse MoE block: softmax router over E experts, the top k per token (their weights
    renormalised to sum to one when `normalize`), each token's output the weighted sum of its experts'; plus, with a
    `shared_expert` (Qwen2-MoE), that module's output on every token times a sigmoid gate."""

    def __init__(self, d: int, f: int, num_experts: int, top_k: int, normalize: bool, names: tuple[str, str, str],
                 act: str, p: Precision, rngs: nnx.Rngs, shared_expert: nnx.Module | None = None):
        check_top_k(top_k, num_experts)
        self.top_k, self.normalize = top_k, normalize
        self.gate = dense(d, num_experts, ("embed", None), p, bias=False, rngs=rngs)
        self.experts = Experts(num_experts, d, f, names, act, p, rngs)
        self.shared_expert = shared_expert
        if shared_expert is not None:
            self.shared_expert_gate = dense(d, 1, ("embed", None), p, bias=False, rngs=rngs)

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        B, T, D = x_BxTxD.shape
        x = x_BxTxD.reshape(B * T, D)
        probs = jax.nn.softmax(self.gate(x).astype(jnp.float32), axis=-1)
        weights, experts = jax.lax.top_k(probs, self.top_k)  # [N, k]
        if self.normalize:
            weights = weights / weights.sum(axis=-1, keepdims=True)
        out = dispatch(x, experts, weights, probs.shape[-1], self.experts)
        if self.shared_expert is not None:
            out = out + jax.nn.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out.reshape(B, T, D)


class ClampedSwiGLUExperts(nnx.Module):
    """GPT-OSS's experts: `gate_up_proj [E, D, 2F]` (gate and up interleaved, column 2i the gate and 2i + 1 the up
    of unit i) and `down_proj [E, F, D]`, each with a bias, stored `[in, out]` as transformers' GptOssExperts holds
    them. An expert computes `down((clip(up, +-limit) + 1) * g * sigmoid(alpha * g))`, `g = min(gate, limit)`."""

    def __init__(self, num_experts: int, d: int, f: int, alpha: float, limit: float, p: Precision, rngs: nnx.Rngs):
        self.alpha, self.limit, self.dtype = alpha, limit, p.dtype
        init = nnx.initializers.normal(0.02)
        self.gate_up_proj = nnx.Param(init(rngs.params(), (num_experts, d, 2 * f), p.param_dtype),
                                      **axes("expert", "embed", "mlp"))
        self.gate_up_proj_bias = nnx.Param(jnp.zeros((num_experts, 2 * f), p.param_dtype), **axes("expert", "mlp"))
        self.down_proj = nnx.Param(init(rngs.params(), (num_experts, f, d), p.param_dtype),
                                   **axes("expert", "mlp", "embed"))
        self.down_proj_bias = nnx.Param(jnp.zeros((num_experts, d), p.param_dtype), **axes("expert", "embed"))

    def __call__(self, x_NxD: jax.Array, groups: Groups) -> jax.Array:
        """Rows sorted by expert (`groups`; each row's expert picks its biases)."""
        gate_up = grouped_matmul(x_NxD, self.gate_up_proj[...], groups).astype(jnp.float32)
        gate_up = gate_up + self.gate_up_proj_bias[...][groups.expert_of_row].astype(jnp.float32)
        gate = jnp.minimum(gate_up[:, ::2], self.limit)
        up = jnp.clip(gate_up[:, 1::2], -self.limit, self.limit)
        h = ((up + 1) * gate * jax.nn.sigmoid(gate * self.alpha)).astype(self.dtype)
        out = grouped_matmul(h, self.down_proj[...], groups).astype(jnp.float32)
        return (out + self.down_proj_bias[...][groups.expert_of_row].astype(jnp.float32)).astype(self.dtype)


class TopKSoftmaxMoE(nnx.Module):
    """transformers' GptOssMLP: a router with a bias picks each token's top-k experts by logit, and their softmax
    over those k logits weights the experts' outputs."""

    def __init__(self, d: int, f: int, num_experts: int, top_k: int, alpha: float, limit: float, p: Precision,
                 rngs: nnx.Rngs):
        check_top_k(top_k, num_experts)
        self.top_k = top_k
        self.router = dense(d, num_experts, ("embed", None), p, rngs=rngs)
        self.experts = ClampedSwiGLUExperts(num_experts, d, f, alpha, limit, p, rngs)

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        B, T, D = x_BxTxD.shape
        x = x_BxTxD.reshape(B * T, D)
        logits, experts = jax.lax.top_k(self.router(x).astype(jnp.float32), self.top_k)  # [N, k]
        out = dispatch(x, experts, jax.nn.softmax(logits, axis=-1), self.router.kernel.shape[-1], self.experts)
        return out.reshape(B, T, D)


def dispatch(x_NxD: jax.Array, experts_Nxk: jax.Array, weights_Nxk: jax.Array, num_experts: int,
             run: Callable[[jax.Array, Groups], jax.Array]) -> jax.Array:
    """Each token's output: its k experts' outputs weighted. `run(rows, groups)` computes the N * k (token, expert)
    pairs' rows sorted by expert (`groups`)."""
    N, k = experts_Nxk.shape
    flat = experts_Nxk.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    group_sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    y = run(x_NxD[order // k], Groups(group_sizes, flat[order]))  # [N * k, D]
    y = y[jnp.argsort(order)].reshape(N, k, -1)  # back in (token, choice) order
    return jnp.einsum("nkd,nk->nd", y.astype(jnp.float32), weights_Nxk).astype(x_NxD.dtype)


class ParallelExperts(nnx.Module):
    """GraniteMoE's stacked expert projection: `weight [E, out, in]`, as its checkpoints store it (each expert's slice
    a torch nn.Linear weight), multiplied as it is stored."""

    def __init__(self, num_experts: int, d_in: int, d_out: int, names: tuple, p: Precision, rngs: nnx.Rngs):
        value = nnx.initializers.normal(0.02)(rngs.params(), (num_experts, d_out, d_in), p.param_dtype)
        self.weight = nnx.Param(value, **axes("expert", *names))

    def __call__(self, x_NxI: jax.Array, groups: Groups) -> jax.Array:
        return grouped_linear(x_NxI, self.weight[...], groups)


class Router(nnx.Module):
    """GraniteMoE's `router.layer`: a linear map to the expert logits, no bias."""

    def __init__(self, d: int, num_experts: int, p: Precision, rngs: nnx.Rngs):
        self.layer = dense(d, num_experts, ("embed", None), p, bias=False, rngs=rngs)


class GraniteMoE(nnx.Module):
    """transformers' GraniteMoeMoE: a router without bias (`router.layer`) whose top-k logits are softmaxed, and
    experts whose gate and up projections are one `input_linear` (gate the first half), then `output_linear`."""

    def __init__(self, d: int, f: int, num_experts: int, top_k: int, act: str, p: Precision, rngs: nnx.Rngs):
        check_top_k(top_k, num_experts)
        self.top_k, self.act, self.dtype = top_k, activation(act), p.dtype
        self.router = Router(d, num_experts, p, rngs)
        self.input_linear = ParallelExperts(num_experts, d, 2 * f, ("mlp", "embed"), p, rngs)
        self.output_linear = ParallelExperts(num_experts, f, d, ("embed", "mlp"), p, rngs)

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        B, T, D = x_BxTxD.shape
        x = x_BxTxD.reshape(B * T, D)
        logits, experts = jax.lax.top_k(self.router.layer(x).astype(jnp.float32), self.top_k)

        def run(rows, groups):
            gate, up = jnp.split(self.input_linear(rows, groups), 2, axis=-1)
            return self.output_linear((self.act(gate) * up).astype(self.dtype), groups)

        out = dispatch(x, experts, jax.nn.softmax(logits, axis=-1), self.input_linear.weight.shape[0], run)
        return out.reshape(B, T, D)


class GroupRouter(nnx.Module):
    """DeepSeek's `gate`: a linear map to the expert logits (`weight`, no bias; ERNIE 4.5's and Hunyuan's kept in
    fp32);
    DeepSeek-V3's also holds `e_score_correction_bias` (an fp32 buffer, as in transformers), added to the experts'
    scores only to choose them."""

    def __init__(self, d: int, num_experts: int, corrected: bool, fp32: bool, p: Precision, rngs: nnx.Rngs):
        kernel_type, dtype = (Fp32Param, jnp.float32) if fp32 else (nnx.Param, p.param_dtype)
        self.kernel = kernel_type(nnx.initializers.normal(0.02)(rngs.params(), (d, num_experts), dtype),
                                  **axes("embed", None))
        if corrected:
            self.e_score_correction_bias = Fp32Buffer(jnp.zeros((num_experts,), jnp.float32), **axes(None))


class MoeStatics(nnx.Module):
    """ERNIE 4.5's `moe_statics`: the correction bias `[1, E]`, a parameter (counted, as PEFT counts it) in fp32."""

    def __init__(self, num_experts: int):
        self.e_score_correction_bias = Fp32Param(jnp.zeros((1, num_experts), jnp.float32), **axes(None, None))


class GroupLimitedMoE(nnx.Module):
    """transformers' DeepseekV3MoE (GLM-4.5's and dots.llm1's too; MiniMax-M2's with one group) and DeepseekV2Moe:
    the experts are ranked in `num_groups` groups, and a token's top k come from its best `topk_groups` groups only.
    `scoring`:

    - "sigmoid" (V3): each expert scores the sigmoid of its logit (fp32); choosing, the scores plus the correction
      bias rank the groups by their `group_rank` (2) best and the experts; the chosen experts weigh their uncorrected
      scores, renormalised to sum to one when `normalize`.
    - "softmax" (V2): the softmax over all experts' logits (fp32) scores them; groups rank by their best
      (`group_rank` 1; Mistral 4: their two best); the chosen experts weigh their scores, renormalised when
      `normalize`. ERNIE 4.5 MoE: one group, experts chosen by their scores plus `moe_statics`' correction bias
      (`statics`).

    Weights are then times `scale` (`routed_scaling_factor`); `shared_experts`, an MLP every token runs, is added
    ungated. With a `latent` width (Nemotron-H's `moe_latent_size`), the experts work in it: `fc1_latent_proj` takes
    the tokens there and `fc2_latent_proj` their weighted outputs back (both with biases under `latent_bias`)."""

    def __init__(self, d: int, num_experts: int, top_k: int, num_groups: int, topk_groups: int, scoring: str,
                 normalize: bool, scale: float, experts: nnx.Module, p: Precision, rngs: nnx.Rngs,
                 shared_experts: nnx.Module | None = None, statics: bool = False, group_rank: int = 1,
                 latent: int = 0, latent_bias: bool = False):
        if num_groups < 1 or num_experts % num_groups or num_experts // num_groups < group_rank:
            raise ValueError(f"config.json n_group={num_groups} must split the {num_experts} experts into groups "
                             f"of at least {group_rank} (each group is ranked by its {group_rank} best)")
        if not 1 <= topk_groups <= num_groups:
            raise ValueError(f"config.json topk_group={topk_groups} must be between 1 and n_group={num_groups}")
        if not 1 <= top_k <= topk_groups * (num_experts // num_groups):
            raise ValueError(f"config.json num_experts_per_tok={top_k} must be between 1 and the "
                             f"{topk_groups * (num_experts // num_groups)} experts of the topk_group={topk_groups} "
                             "groups a token may use")
        self.top_k, self.num_groups, self.topk_groups, self.scoring = top_k, num_groups, topk_groups, scoring
        self.normalize, self.scale, self.group_rank = normalize, scale, group_rank
        self.gate = GroupRouter(d, num_experts, scoring == "sigmoid", statics, p, rngs)
        self.moe_statics = MoeStatics(num_experts) if statics else None
        self.experts = experts
        self.shared_experts = shared_experts
        self.latent = latent
        if latent:
            self.fc1_latent_proj = dense(d, latent, ("embed", None), p, bias=latent_bias, rngs=rngs)
            self.fc2_latent_proj = dense(latent, d, (None, "embed"), p, bias=latent_bias, rngs=rngs)

    def route(self, x_NxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Each token's experts `[N, k]` and their weights `[N, k]` (fp32)."""
        logits = jnp.dot(x_NxD.astype(jnp.float32), self.gate.kernel[...].astype(jnp.float32))
        N, E = logits.shape
        if self.scoring == "sigmoid":
            scores = jax.nn.sigmoid(logits)
            choice = scores + self.gate.e_score_correction_bias[...]
        else:
            scores = choice = jax.nn.softmax(logits, axis=-1)
            if self.moe_statics is not None:
                choice = scores + self.moe_statics.e_score_correction_bias[0]
        group_scores = jax.lax.top_k(choice.reshape(N, self.num_groups, -1), self.group_rank)[0].sum(-1)  # [N, G]
        _, groups = jax.lax.top_k(group_scores, self.topk_groups)
        allowed = jax.nn.one_hot(groups, self.num_groups, dtype=jnp.bool_).any(axis=1)  # [N, G]
        choice = jnp.where(jnp.repeat(allowed, E // self.num_groups, axis=1), choice, -jnp.inf)
        _, experts = jax.lax.top_k(choice, self.top_k)
        weights = jnp.take_along_axis(scores, experts, axis=1)
        if self.normalize:
            weights = weights / (weights.sum(axis=-1, keepdims=True) + 1e-20)
        return experts, weights * self.scale

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        B, T, D = x_BxTxD.shape
        x = x_BxTxD.reshape(B * T, D)
        experts, weights = self.route(x)
        rows = self.fc1_latent_proj(x) if self.latent else x
        out = dispatch(rows, experts, weights, self.gate.kernel.shape[-1], self.experts)
        if self.latent:
            out = self.fc2_latent_proj(out)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out.reshape(B, T, D)


class StoredExperts(nnx.Module):
    """SiLU-gated experts stacked as transformers 5 holds them where no conversion splits them (Mistral 4):
    `gate_up_proj [E, 2F, D]` (the gate the first F rows) and `down_proj [E, D, F]`, each expert's slice a torch
    nn.Linear weight, multiplied as stored."""

    def __init__(self, num_experts: int, d: int, f: int, act: str, p: Precision, rngs: nnx.Rngs):
        self.act, self.dtype = activation(act), p.dtype
        init = nnx.initializers.normal(0.02)
        self.gate_up_proj = nnx.Param(init(rngs.params(), (num_experts, 2 * f, d), p.param_dtype),
                                      **axes("expert", "mlp", "embed"))
        self.down_proj = nnx.Param(init(rngs.params(), (num_experts, d, f), p.param_dtype),
                                   **axes("expert", "embed", "mlp"))

    def __call__(self, x_NxD: jax.Array, groups: Groups) -> jax.Array:
        gate, up = jnp.split(grouped_linear(x_NxD, self.gate_up_proj[...], groups), 2, axis=-1)
        return grouped_linear((self.act(gate) * up).astype(self.dtype), self.down_proj[...], groups)


class StackedExperts(nnx.Module):
    """Llama 4's experts, stored stacked `[in, out]` as transformers' Llama4TextExperts holds them: `gate_up_proj
    [E, D, 2F]` (the gate the first F columns) and `down_proj [E, F, D]`, SiLU-gated."""

    def __init__(self, num_experts: int, d: int, f: int, act: str, p: Precision, rngs: nnx.Rngs):
        self.act, self.dtype = activation(act), p.dtype
        init = nnx.initializers.normal(0.02)
        self.gate_up_proj = nnx.Param(init(rngs.params(), (num_experts, d, 2 * f), p.param_dtype),
                                      **axes("expert", "embed", "mlp"))
        self.down_proj = nnx.Param(init(rngs.params(), (num_experts, f, d), p.param_dtype),
                                   **axes("expert", "mlp", "embed"))

    def __call__(self, x_NxD: jax.Array, groups: Groups) -> jax.Array:
        gate, up = jnp.split(grouped_matmul(x_NxD, self.gate_up_proj[...], groups), 2, axis=-1)
        return grouped_matmul((self.act(gate) * up).astype(self.dtype), self.down_proj[...], groups)


class ScaledInputMoE(nnx.Module):
    """transformers' Llama4TextMoe: a router without bias takes each token's top-k logits, and their sigmoids scale
    the token on its way into each chosen expert (not the expert's output); the experts' outputs are summed, plus
    `shared_expert`, an MLP every token runs."""

    def __init__(self, d: int, f: int, num_experts: int, top_k: int, act: str, p: Precision, rngs: nnx.Rngs,
                 shared_expert: nnx.Module):
        check_top_k(top_k, num_experts)
        self.top_k = top_k
        self.router = dense(d, num_experts, ("embed", None), p, bias=False, rngs=rngs)
        self.experts = StackedExperts(num_experts, d, f, act, p, rngs)
        self.shared_expert = shared_expert

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        B, T, D = x_BxTxD.shape
        x = x_BxTxD.reshape(B * T, D)
        logits, experts = jax.lax.top_k(self.router(x), self.top_k)  # [N, k]
        scores = jax.nn.sigmoid(logits.astype(jnp.float32)).astype(x.dtype)
        rows = (x[:, None, :] * scores[..., None]).reshape(-1, D)  # each (token, choice) scaled: [N * k, D]
        routed = dispatch(rows, experts.reshape(-1, 1), jnp.ones((rows.shape[0], 1), jnp.float32),
                          self.router.kernel.shape[-1], self.experts)
        out = self.shared_expert(x) + routed.reshape(B * T, self.top_k, D).sum(axis=1)
        return out.reshape(B, T, D)


class HunyuanGate(nnx.Module):
    """Hunyuan's `gate`: `wg`, its router (fp32, as transformers keeps it)."""

    def __init__(self, d: int, num_experts: int, p: Precision, rngs: nnx.Rngs):
        self.wg = GroupRouter(d, num_experts, corrected=False, fp32=True, p=p, rngs=rngs)


class HunyuanMoE(nnx.Module):
    """transformers' HunYuanMoEV1Moe: a softmax router in fp32 (`gate.wg`) whose top-k weights are renormalised to
    sum to one, and `shared_mlp`, an MLP every token runs, added ungated."""

    def __init__(self, d: int, f: int, num_experts: int, top_k: int, act: str, p: Precision, rngs: nnx.Rngs,
                 shared_mlp: nnx.Module):
        check_top_k(top_k, num_experts, key="moe_topk")
        self.top_k = top_k
        self.gate = HunyuanGate(d, num_experts, p, rngs)
        self.experts = Experts(num_experts, d, f, DEFAULT_EXPERT_NAMES, act, p, rngs)
        self.shared_mlp = shared_mlp

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        B, T, D = x_BxTxD.shape
        x = x_BxTxD.reshape(B * T, D)
        probs = jax.nn.softmax(jnp.dot(x.astype(jnp.float32), self.gate.wg.kernel[...]), axis=-1)
        weights, experts = jax.lax.top_k(probs, self.top_k)
        weights = weights / weights.sum(axis=-1, keepdims=True)
        out = dispatch(x, experts, weights, probs.shape[-1], self.experts)
        return (out + self.shared_mlp(x)).reshape(B, T, D)
