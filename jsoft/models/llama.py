"""Llama (pre-RMSNorm decoder, rotary positions, grouped-query attention, SiLU-gated MLP), and the checkpoint families
that are Llama with other defaults: Mistral (a sliding attention window), Qwen2 (biases on the query, key and value
projections; optional sliding window), Qwen3 (query/key norms), Gemma, Gemma 2 (sandwich norms, soft-capping,
alternating sliding and full layers; VaultGemma: without the output norms), Gemma 3 (query/key norms, five sliding
layers with their own RoPE base per full one), Ministral 3 (queries scaled by their position), Phi-3 / Phi-4 (fused
qkv_proj and gate_up_proj, partial rotary, LongRoPE), OLMo 2 (norms after attention and MLP only; query/key norms
over the whole projection), Granite (embedding, residual, attention and logit multipliers; Granite 4: a shared MLP
in each layer), and the mixture-of-experts Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, GPT-OSS, GraniteMoE /
GraniteMoeShared, GLM-4.5, dots.llm1 and DeepSeek-V3 / R1 (jsoft.models.moe; GPT-OSS also adds a sink logit per
head to every attention softmax, and its checkpoints are read by jsoft.models.gpt_oss; DeepSeek-V3 attends through
compressed latents, `LatentAttention`), and the hybrids Qwen3-Next / Qwen3.5, whose "linear_attention" layers are
Gated DeltaNet (jsoft.models.gated_deltanet) beside attention with a sigmoid output gate, and Granite 4.0-H and
Bamba, whose "mamba" layers are Mamba-2 (jsoft.models.mamba2), Jamba, whose are Mamba (jsoft.models.mamba), and
Nemotron-H and the stacks of Mamba-2 (Mamba-Codestral) or Mamba layers only, each of whose layers holds one block
(`Config.layer_blocks`: Mamba-2 or Mamba, attention, an MLP or experts; jsoft.models.nemotron_h names them). How each
family's config.json maps to `Config`: jsoft.models.llama_config; RoPE: jsoft.models.rotary.

Module tree mirrors transformers' (`model.layers.0.self_attn.q_proj`, `lm_head`, `score`) so
checkpoint names map one to one; every weight is a torch nn.Linear (`[out, in]`), hence transposed."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jsoft.models import gated_deltanet, heads, llama_config, mamba, mamba2, moe, ops, rotary
from jsoft.models.base import TransformerConfig, hf_name, is_kernel
from jsoft.models.layers import (
    Buffer,
    DropoutRng,
    KVCache,
    LayerNorm,
    Precision,
    RecurrentState,
    RMSNorm,
    activation,
    axes,
    chunked,
    dense,
    dot_product_attention,
    embed,
    heads_major,
    merge_heads,
    query_slot,
    run_layers,
    self_attention_kv,
    sliding_window,
    split_heads,
)

TASKS = (None, "causal_lm", "seq_cls", "token_cls")
BASE_PREFIX = "model"


@dataclasses.dataclass
class Config(TransformerConfig):
    intermediate_size: int = 11008
    activation: str = "silu"
    rms_norm_eps: float = 1e-6
    max_positions: int = 2048
    rope_type: str = "default"
    rope_theta: float = 10000.0
    rope_factor: float = 1.0  # linear, llama3, dynamic and yarn
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    rope_original_max_positions: int = 8192  # llama3, longrope, yarn
    rope_short_factor: tuple[float, ...] = ()  # longrope: per-frequency divisors up to the original length
    rope_long_factor: tuple[float, ...] = ()  # longrope: past it
    rope_beta_fast: float = 32.0  # yarn: rotations (over the original length) above which frequencies are kept
    rope_beta_slow: float = 1.0  # yarn: below which they are interpolated
    rope_truncate: bool = True  # yarn: the ramp's bounds rounded to whole dims
    rope_attention_factor: float = 1.0  # longrope, yarn: cos and sin times this
    rotary_dim: int | None = None  # leading dims of each head that RoPE rotates (None: all)
    rope_interleaved: bool = False  # RoPE turns dims (2i, 2i + 1) (GPT-J, Cohere), not (i, i + rotary_dim / 2)
    rope_reversed: bool = False  # RoPE turns each pair the other way (NanoChat's rotate_half: (x2, -x1))
    attention_bias: bool = False  # q_proj, k_proj, v_proj
    attention_out_bias: bool = False  # o_proj (Llama: = attention_bias; Qwen2: none)
    mlp_bias: bool = False
    gated_mlp: bool = True  # down(act(gate(x)) * up(x)); else down(act(up(x))) (Arcee)
    sliding_window: int | None = None  # how many key slots a sliding layer's query sees, its own included
    sliding_layers: tuple[bool, ...] = ()  # which layers are transformers' "sliding_attention" ones
    local_rope_theta: float | None = None  # Gemma 3: the sliding layers' own (default) RoPE base
    nope_layers: tuple[bool, ...] = ()  # layers whose queries and keys skip RoPE (SmolLM3, EXAONE 4, Cohere 2)
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0  # on the attention and MLP outputs (Phi-3)
    embd_dropout: float = 0.0  # on the input embeddings (Phi-3)
    fused_qkv: bool = False  # Phi-3: one qkv_proj
    fused_gate_up: bool = False  # Phi-3, GLM: one gate_up_proj
    tie_word_embeddings: bool = False
    lm_head_bias: bool = False  # ERNIE 4.5 MoE with use_bias
    classifier_dropout: float = 0.1
    token_cls_bias: bool = True
    embed_scale: float = 1.0  # token embeddings times this (Gemma: sqrt(hidden_size))
    norm_offset: float = 0.0  # RMS norms scale by offset + weight (Gemma: 1)
    query_scale: float | None = None  # scores' scale (default head_dim ** -0.5; Gemma 2: query_pre_attn_scalar ** -0.5)
    attn_softcap: float | None = None  # scores -> cap * tanh(scores / cap) (Gemma 2)
    final_softcap: float | None = None  # the same on the LM head's logits (Gemma 2)
    # where a layer's RMS norms sit (NORM_NAMES): "pre" (on the attention's and MLP's inputs; "vaultgemma",
    # "apertus": the same under other names), "sandwich" (Gemma 2 / 3: on their outputs too;
    # post_attention_layernorm is one of those), "glm4" (GLM-4-0414's sandwich, other names), "post" (OLMo 2 / 3:
    # on their outputs only)
    norm_placement: str = "pre"
    # checkpoint names: a layer's feed-forward block (Mixtral's, GraniteMoE's, MiniMax-M2's `block_sparse_moe`; Llama
    # 4's, Bamba's `feed_forward`), the final norm (Bamba's `final_layernorm`; Nemotron-H's, Mamba-2's `norm_f`)
    ffn_name: str = "mlp"
    final_norm_name: str = "norm"
    # the layers' and final norms: "rms" (eps `rms_norm_eps`), "layer" (LayerNorms with weight and bias, the same
    # eps: Jais 2), "weightless" (LayerNorms without weight or bias: OLMo), "weightless_rms" (RMS norms without a
    # weight: NanoChat)
    norm_type: str = "rms"
    embedding_norm: bool = False  # NanoChat: the final norm on the input embeddings too (soft prompts with them)
    qk_norm: str | None = None  # RMS norms on queries and keys before RoPE: over each "head" (Qwen3, Gemma 3) or
    # over the whole projection "width" (OLMo 2); or after RoPE over each head, "rotated_head" (Hunyuan:
    # `query_layernorm`, `key_layernorm`)
    embedding_multiplier: float = 1.0  # Granite: every input embedding (soft prompts too) times this
    residual_multiplier: float = 1.0  # Granite: attention and MLP outputs times this before the residual sum
    logits_scaling: float = 1.0  # Granite: LM logits divided by this
    clip_qkv: float | None = None  # OLMoE: queries, keys and values clipped to +-this
    num_experts: int = 0  # mixture of experts: the experts of each sparse layer (0: none)
    experts_per_token: int = 2
    moe_intermediate_size: int = 0  # an expert's MLP width
    norm_topk_prob: bool = True  # the chosen experts' router weights renormalised to sum to one
    moe_layers: tuple[bool, ...] = ()  # which layers' MLPs are sparse
    # an MLP every token runs too (0: none): Qwen2-MoE's `shared_expert`, sigmoid-gated; DeepSeek-V3's
    # `shared_experts`, ungated
    shared_expert_intermediate_size: int = 0
    # GraniteMoeShared's and Granite 4's `shared_mlp` (0: none), a SiLU-gated MLP beside the layer's experts (fused
    # `input_linear`, gate first, then `output_linear`), summed with them; a Granite 4 layer without experts has only it
    shared_mlp_intermediate_size: int = 0
    # how sparse layers route and run their experts: "softmax_topk" (Mixtral, Qwen-MoE, OLMoE: moe.SparseMoE),
    # "clamped_swiglu" (GPT-OSS: top-k logits softmaxed, experts with biases and a clamped SwiGLU,
    # moe.TopKSoftmaxMoE), "granite" (GraniteMoE: top-k logits softmaxed, fused gate / up experts, moe.GraniteMoE),
    # "grouped_sigmoid" (DeepSeek-V3, GLM-4.5, dots.llm1: sigmoid scores, group-limited choice, moe.GroupLimitedMoE),
    # "grouped_softmax" (DeepSeek-V2: softmax scores, group-limited choice), "llama4" (Llama 4: top-k logits'
    # sigmoids scale each token into its experts, a shared expert, moe.ScaledInputMoE), "hunyuan" (softmax top-k
    # renormalised, an fp32 router, a shared MLP: moe.HunyuanMoE)
    moe_kind: str = "softmax_topk"
    swiglu_alpha: float = 1.702  # GPT-OSS's clamped SwiGLU: the sigmoid's gain
    swiglu_limit: float = 7.0  # and the clamp on gate (above) and up (both sides)
    attention_sinks: bool = False  # GPT-OSS: a learned sink logit per head in every attention softmax
    moe_groups: int = 1  # "grouped_*": the groups the experts are ranked in (n_group)
    moe_topk_groups: int = 1  # and how many of them a token's experts may come from (topk_group)
    moe_group_rank: int = 2  # "grouped_*": a group ranks by the sum of its best this many (DeepSeek-V2: its best)
    stored_experts: bool = False  # experts held as transformers 5 stores them, [E, out, in] (Mistral 4)
    routed_scaling_factor: float = 1.0  # "grouped_*": the routed experts' weights times this
    # multi-head latent attention (DeepSeek-V3, `LatentAttention`; 0: none): keys and values expanded from a
    # `kv_lora_rank`-wide latent, queries from a `q_lora_rank`-wide one (None: q_proj); a head's query / key is
    # `qk_nope_head_dim` dims without RoPE then `rotary_dim` rotated ones, its value `v_head_dim` wide
    kv_lora_rank: int = 0
    q_lora_rank: int | None = None
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    # Llama 4: "chunked_attention" layers see only the keys in their query's block of `chunk_size` slots; RoPE
    # layers' queries and keys RMS-normed without a weight after RoPE (`qk_l2_norm`)
    chunk_size: int | None = None
    chunked_layers: tuple[bool, ...] = ()
    qk_l2_norm: bool = False
    # queries times 1 + temperature_scale * log1p(floor((position + temperature_offset) / temperature_floor)):
    # Llama 4's NoPE layers' (`attn_temperature_tuning`; offset 1), every Ministral 3 and Mistral 4 layer's
    # (`llama_4_scaling_beta` over the original length; offset 0)
    temperature_floor: float | None = None
    temperature_scale: float = 0.1
    temperature_offset: float = 1.0
    temperature_nope_only: bool = True
    # Qwen3-Next / Qwen3.5: every head's attention output times the sigmoid of a gate q_proj also projects
    attention_output_gate: bool = False
    # and their "linear_attention" layers: Gated DeltaNet (jsoft.models.gated_deltanet) in place of attention,
    # keeping a recurrent state rather than keys and values
    linear_layers: tuple[bool, ...] = ()
    linear_key_heads: int = 0
    linear_value_heads: int = 0
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_conv_kernel: int = 4
    linear_fused_projections: bool = False  # Qwen3-Next's in_proj_qkvz / in_proj_ba (Qwen3.5: four projections)
    # or Granite 4's Mamba-2 layers ("mamba2": jsoft.models.mamba2, `mamba`), shaped in the fields above: heads
    # linear_value_heads x linear_value_head_dim, B / C groups linear_key_heads x state linear_key_head_dim; or Mamba's
    # ("mamba": jsoft.models.mamba): channels linear_value_heads of width 1, state linear_key_head_dim, no groups
    linear_kind: str = "gated_deltanet"
    linear_conv_bias: bool = False  # Mamba-2: `mamba_conv_bias`, `mamba_proj_bias`, `time_step_limit`
    linear_proj_bias: bool = False
    linear_dt_limit: tuple[float, float] = (0.0, math.inf)
    linear_activation: str | None = None  # Mamba's convolution's (None: `activation`; Nemotron-H: its own)
    linear_dt_rank: int = 0  # Mamba: the rank of its step sizes (`time_step_rank`)
    linear_bcdt_norm_eps: float | None = None  # FalconMamba: RMS norms without weights on the steps, B and C
    linear_bcdt_norm_weights: bool = False  # Jamba: those norms with weights
    # Nemotron-H: each layer one block, per layer "mixer" (Mamba-2 or attention) or "ffn" (an MLP or experts); ():
    # every layer a mixer then a feed-forward block
    layer_blocks: tuple[str, ...] = ()
    moe_latent_size: int = 0  # Nemotron-H: the width its experts work in, between fc1_latent_proj / fc2_ (0: none)

    def is_sliding(self, layer: int) -> bool:
        return bool(self.sliding_layers) and self.sliding_layers[layer]

    def is_nope(self, layer: int) -> bool:
        return bool(self.nope_layers) and self.nope_layers[layer]

    def is_chunked(self, layer: int) -> bool:
        return bool(self.chunked_layers) and self.chunked_layers[layer]

    def is_sparse(self, layer: int) -> bool:
        return bool(self.moe_layers) and self.moe_layers[layer]

    def is_linear(self, layer: int) -> bool:
        return bool(self.linear_layers) and self.linear_layers[layer]

    def has_block(self, layer: int, block: str) -> bool:
        """Whether layer `layer` holds a "mixer" (attention or a linear layer) / an "ffn" (MLP or experts)."""
        return not self.layer_blocks or self.layer_blocks[layer] == block

    @property
    def cacheless_layers(self) -> tuple[bool, ...]:
        return tuple(not self.has_block(i, "mixer") for i in range(self.num_layers)) if self.layer_blocks else ()

    def is_tempered(self, layer: int) -> bool:
        return self.temperature_floor is not None and (self.is_nope(layer) or not self.temperature_nope_only)

    @property
    def no_prefix_reason(self) -> str | None:
        if self.kv_lora_rank:
            return (f"{self.model_type}'s multi-head latent attention caches compressed latents, and its keys "
                    f"({self.qk_nope_head_dim + self.rope_dim} dims a head) and values ({self.v_head_dim}) differ "
                    "in width, so no key/value prefix fits it (PEFT's fails there too)")
        if self.keeps_recurrent_state:
            return (f"{self.model_type}'s {LINEAR_NAMES[self.linear_kind]} layers keep a recurrent state, not keys "
                    "and values, so no key/value prefix fits them (PEFT's fails there too)")
        return None

    @property
    def keeps_recurrent_state(self) -> bool:
        return any(self.linear_layers)

    @property
    def linear_conv_channels(self) -> int:
        """What a linear layer's convolution mixes: its queries, keys and values."""
        return 2 * self.linear_key_heads * self.linear_key_head_dim + self.linear_value_heads * (
            self.linear_value_head_dim)

    def recurrent_states(self, batch: int, dtype) -> tuple[RecurrentState | None, ...]:
        if not self.keeps_recurrent_state:
            return ()
        memory = (batch, self.linear_value_heads, self.linear_key_head_dim, self.linear_value_head_dim)
        return tuple(RecurrentState(jnp.zeros((batch, self.linear_conv_kernel - 1, self.linear_conv_channels), dtype),
                                    jnp.zeros(memory, jnp.float32)) if self.is_linear(i) else None
                     for i in range(self.num_layers))

    @property
    def cache_layout(self) -> tuple[int, int]:
        if self.kv_lora_rank:  # LatentAttention.attend_latents: the normed latent and the rotated key dims
            return 1, self.kv_lora_rank + self.rope_dim
        return super().cache_layout

    @property
    def cache_values(self) -> bool:
        return not self.kv_lora_rank

    @property
    def rope_dim(self) -> int:
        """The leading dims of each head that RoPE rotates."""
        return self.head_dim if self.rotary_dim is None else self.rotary_dim

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        return cls(**llama_config.fields_from_hf(hf))


class Attention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        d, q_width, kv_width = c.hidden_size, c.num_heads * c.head_dim, c.kv_width
        if c.attention_output_gate:  # q_proj: each head's query then its gate
            self.q_proj = dense(d, 2 * q_width, ("embed", "joined_kv"), p, bias=c.attention_bias, rngs=rngs)
            self.k_proj = dense(d, kv_width, ("embed", "joined_kv"), p, bias=c.attention_bias, rngs=rngs)
            self.v_proj = dense(d, kv_width, ("embed", "joined_kv"), p, bias=c.attention_bias, rngs=rngs)
        elif c.fused_qkv:
            self.qkv_proj = dense(d, q_width + 2 * kv_width, ("embed", "joined_kv"), p, bias=c.attention_bias,
                                  rngs=rngs)
        else:
            self.q_proj = dense(d, q_width, ("embed", "joined_kv"), p, bias=c.attention_bias, rngs=rngs)
            self.k_proj = dense(d, kv_width, ("embed", "joined_kv"), p, bias=c.attention_bias, rngs=rngs)
            self.v_proj = dense(d, kv_width, ("embed", "joined_kv"), p, bias=c.attention_bias, rngs=rngs)
        self.o_proj = dense(q_width, d, ("joined_kv", "embed"), p, bias=c.attention_out_bias, rngs=rngs)
        if c.qk_norm == "head":
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps, p, c.norm_offset, names=(None,))
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps, p, c.norm_offset, names=(None,))
        elif c.qk_norm == "width":
            self.q_norm = RMSNorm(q_width, c.rms_norm_eps, p, c.norm_offset, names=("joined_kv",))
            self.k_norm = RMSNorm(kv_width, c.rms_norm_eps, p, c.norm_offset, names=("joined_kv",))
        elif c.qk_norm == "rotated_head":
            self.query_layernorm = RMSNorm(c.head_dim, c.rms_norm_eps, p, c.norm_offset, names=(None,))
            self.key_layernorm = RMSNorm(c.head_dim, c.rms_norm_eps, p, c.norm_offset, names=(None,))
        if c.attention_sinks:  # GPT-OSS: one logit per head that each softmax also spreads over
            self.sinks = nnx.Param(jnp.zeros((c.num_heads,), p.param_dtype), **axes("heads"))

    def __call__(self, x, mask, rope: dict, *, layer, cache, prefix_kv, prefix_mask, drop: DropoutRng):
        sliding = self.c.is_sliding(layer)
        cos_sin = rope["local" if sliding and "local" in rope else "global"]
        q, k, v, gate = self.project(x)
        q, k = self.norm_heads(q, k)
        if not self.c.is_nope(layer):
            q, k = (rotary.apply(t, *cos_sin, interleaved=self.c.rope_interleaved) for t in (q, k))
            q, k = self.norm_rotated(q, k)
        # Prefix keys join after RoPE, unrotated: HF treats them as an already-filled cache.
        k, v, mask, new_cache = self_attention_kv(k, v, mask, layer=layer, cache=cache,
                                                  prefix_kv=prefix_kv, prefix_mask=prefix_mask)
        first_query = query_slot(mask, x.shape[1], cache)
        if sliding and self.c.sliding_window is not None:
            mask = sliding_window(mask, self.c.sliding_window, first_query)
        if self.c.is_chunked(layer):
            mask = chunked(mask, self.c.chunk_size, first_query)
        if self.c.is_tempered(layer):
            q = tempered(self.c, q, rope["positions"])
        scale = self.c.head_dim ** -0.5 if self.c.query_scale is None else self.c.query_scale
        out = dot_product_attention(q, k, v, mask, scale=scale, softcap=self.c.attn_softcap, dropout=drop,
                                    dropout_rate=self.c.attn_dropout,
                                    sinks=self.sinks[...] if self.c.attention_sinks else None)
        out = merge_heads(out)
        if gate is not None:
            out = out * jax.nn.sigmoid(gate)
        return self.o_proj(out), new_cache

    def norm_rotated(self, q, k):
        """Queries and keys of a RoPE layer after RoPE: RMS-normed per head without a weight (Llama 4) or with
        `query_layernorm` / `key_layernorm` (Hunyuan)."""
        if self.c.qk_l2_norm:
            return l2_norm(q, self.c.rms_norm_eps), l2_norm(k, self.c.rms_norm_eps)
        if self.c.qk_norm == "rotated_head":
            return self.query_layernorm(q), self.key_layernorm(k)
        return q, k

    def norm_heads(self, q, k):
        """Queries `[B, T, N, K]` and keys `[B, T, G, K]` before RoPE: normalised per head (Qwen3, Gemma 3)."""
        return (self.q_norm(q), self.k_norm(k)) if self.c.qk_norm == "head" else (q, k)

    def project(self, x):
        """Queries `[B, T, N, K]`, keys and values `[B, T, G, K]`, and the output gates `[B, T, N * K]` (None without
        `attention_output_gate`)."""
        c = self.c
        gate = None
        if c.attention_output_gate:
            q, gate = jnp.split(split_heads(self.q_proj(x), c.num_heads), 2, axis=-1)
            q, gate = merge_heads(q), merge_heads(gate)
            k, v = self.k_proj(x), self.v_proj(x)
        elif c.fused_qkv:
            q_width = c.num_heads * c.head_dim
            q, k, v = jnp.split(self.qkv_proj(x), [q_width, q_width + c.kv_width], axis=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if c.qk_norm == "width":
            q, k = self.q_norm(q), self.k_norm(k)
        if c.clip_qkv is not None:
            q, k, v = (jnp.clip(t, -c.clip_qkv, c.clip_qkv) for t in (q, k, v))
        return split_heads(q, c.num_heads), split_heads(k, c.num_kv_heads), split_heads(v, c.num_kv_heads), gate


def tempered(c: Config, q_BxTxNxK: jax.Array, positions_BxT: jax.Array) -> jax.Array:
    """Queries times 1 + scale * log1p(floor((position + offset) / floor)) (Llama 4's NoPE layers, every Ministral 3
    and Mistral 4 layer). Llama 4 in transformers counts the query's slot (`arange + past`): the same position
    wherever a row's tokens sit where transformers would put them, and in a mixed batch or left-padded decoding the
    position the row has alone."""
    pos = positions_BxT[:, :, None, None].astype(jnp.float32)
    scale = jnp.log1p(jnp.floor((pos + c.temperature_offset) / c.temperature_floor)) * c.temperature_scale + 1.0
    return (q_BxTxNxK * scale).astype(q_BxTxNxK.dtype)


def l2_norm(x, eps: float):
    """Llama 4's query / key norm: RMS norm without a weight, in fp32."""
    return ops.rms_norm(x, jnp.ones((), jnp.float32), eps).astype(x.dtype)


class LatentAttention(nnx.Module):
    """DeepSeek-V3's multi-head latent attention (transformers' DeepseekV3Attention). Keys and values come from one
    `kv_lora_rank`-wide latent (`kv_a_proj_with_mqa`, normed, then `kv_b_proj`) plus `rotary_dim` rotated key dims
    every head shares; queries from `q_proj`, or a `q_lora_rank` latent (`q_a_proj`, normed, `q_b_proj`). A head's
    query / key is its `qk_nope_head_dim` unrotated dims then the rotated ones.

    What a decoding cache or a cached prompt holds is each token's `[latent, rotated key]` row, `kv_lora_rank +
    rotary_dim` wide (`Config.cache_layout`), not every head's keys and values. Queries over several tokens
    (training, scoring, a prompt's first pass) attend to keys and values expanded from those rows, as transformers
    computes them (`attend_expanded`); one token's query (a decoding step) attends to the rows themselves
    (`attend_latents`)."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        d, N, qk = c.hidden_size, c.num_heads, c.qk_nope_head_dim + c.rope_dim
        if c.q_lora_rank is None:
            self.q_proj = dense(d, N * qk, ("embed", "joined_kv"), p, bias=False, rngs=rngs)
        else:
            self.q_a_proj = dense(d, c.q_lora_rank, ("embed", None), p, bias=c.attention_bias, rngs=rngs)
            self.q_a_layernorm = RMSNorm(c.q_lora_rank, LATENT_NORM_EPS, p, names=(None,))
            self.q_b_proj = dense(c.q_lora_rank, N * qk, (None, "joined_kv"), p, bias=False, rngs=rngs)
        self.kv_a_proj_with_mqa = dense(d, c.kv_lora_rank + c.rope_dim, ("embed", None), p, bias=c.attention_bias,
                                        rngs=rngs)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, LATENT_NORM_EPS, p, names=(None,))
        self.kv_b_proj = dense(c.kv_lora_rank, N * (c.qk_nope_head_dim + c.v_head_dim), (None, "joined_kv"), p,
                               bias=False, rngs=rngs)
        self.o_proj = dense(N * c.v_head_dim, d, ("joined_kv", "embed"), p, bias=c.attention_bias, rngs=rngs)

    def __call__(self, x, mask, rope: dict, *, layer, cache, prefix_kv, prefix_mask, drop: DropoutRng):
        c = self.c
        q = self.q_proj(x) if c.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = split_heads(q, c.num_heads)
        latent, k_rot = jnp.split(self.kv_a_proj_with_mqa(x), [c.kv_lora_rank], axis=-1)
        rotate = lambda t: rotary.apply(t, *rope["global"], interleaved=c.rope_interleaved)
        q = jnp.concatenate([q[..., :c.qk_nope_head_dim], rotate(q[..., c.qk_nope_head_dim:])], axis=-1)
        if c.is_tempered(layer):  # Mistral 4
            q = tempered(c, q, rope["positions"])
        rows = jnp.concatenate([self.kv_a_layernorm(latent), rotate(k_rot[:, :, None, :])[:, :, 0]], axis=-1)
        rows, _, mask, new_cache = self_attention_kv(rows[:, :, None], rows[:, :, None], mask, layer=layer,
                                                     cache=cache, prefix_kv=prefix_kv, prefix_mask=prefix_mask)
        rows = rows.reshape(x.shape[0], -1, rows.shape[-1])  # [B, S, r + rotary_dim]: grouped or not, one head
        attend = self.attend_latents if x.shape[1] == 1 else self.attend_expanded
        out = attend(q, rows, mask, drop)
        return self.o_proj(merge_heads(out)), new_cache

    def kv_weight(self, dtype) -> jax.Array:
        """`kv_b_proj`'s kernel per head, `[N, kv_lora_rank, qk_nope_head_dim + v_head_dim]`."""
        c = self.c
        w = self.kv_b_proj.kernel[...].astype(dtype)
        return jnp.transpose(w.reshape(c.kv_lora_rank, c.num_heads, -1), (1, 0, 2))

    def attend_expanded(self, q, rows, mask, drop):
        """Each head's keys and values expanded from the rows `[B, S, r + rotary_dim]`: its `kv_b_proj` block
        times the latent, the rotated dims shared."""
        c = self.c
        B, S, _ = rows.shape
        kv = split_heads(self.kv_b_proj(rows[..., :c.kv_lora_rank]), c.num_heads)  # [B, S, N, nope + v]
        k_rot = jnp.broadcast_to(rows[:, :, None, c.kv_lora_rank:], (B, S, c.num_heads, c.rope_dim))
        k = heads_major(jnp.concatenate([kv[..., :c.qk_nope_head_dim], k_rot], axis=-1))
        v = heads_major(kv[..., c.qk_nope_head_dim:])
        return dot_product_attention(q, k, v, mask, scale=c.query_scale, dropout=drop, dropout_rate=c.attn_dropout)

    def attend_latents(self, q, rows, mask, drop):
        """The same attention over the rows themselves, one key / value head every query head shares (DeepSeek's
        weight absorption): a head's unrotated query times its `kv_b_proj` key block scores against the latent,
        and the latents weighted by the scores, times its value block, are its output."""
        c = self.c
        nope, r = c.qk_nope_head_dim, c.kv_lora_rank
        w = self.kv_weight(q.dtype)
        einsum = functools.partial(ops.einsum, out_dtype=q.dtype)
        q = jnp.concatenate([einsum("btnk,nrk->btnr", q[..., :nope], w[..., :nope]), q[..., nope:]], axis=-1)
        latents = rows[:, None]  # [B, 1, S, r + rotary_dim]
        out = dot_product_attention(q, latents, latents[..., :r], mask, scale=c.query_scale, dropout=drop,
                                    dropout_rate=c.attn_dropout)
        return einsum("btnr,nrv->btnv", out, w[..., nope:])


LATENT_NORM_EPS = 1e-6  # DeepseekV3RMSNorm's default, which its latent norms keep whatever config.json says


class XIELU(nnx.Module):
    """xIELU (arXiv 2411.13010), Apertus' MLP activation, as transformers' XIELUActivation computes it: learned
    `alpha_p`, `alpha_n` (through softplus) and stored `beta`, `eps`, initialised as transformers initialises them."""

    def __init__(self, p: Precision, alpha_p: float = 0.8, alpha_n: float = 0.8, beta: float = 0.5,
                 eps: float = -1e-6):
        inverse_softplus = lambda v: math.log(math.expm1(v))
        self.alpha_p = nnx.Param(jnp.full((1,), inverse_softplus(alpha_p), p.param_dtype), **axes(None))
        self.alpha_n = nnx.Param(jnp.full((1,), inverse_softplus(alpha_n - beta), p.param_dtype), **axes(None))
        self.beta = Buffer(jnp.asarray(beta, p.param_dtype), **axes())
        self.eps = Buffer(jnp.asarray(eps, p.param_dtype), **axes())

    def __call__(self, x):
        f32 = jnp.float32
        beta, eps = self.beta[...].astype(f32), self.eps[...].astype(f32)
        alpha_p = jax.nn.softplus(self.alpha_p[...].astype(f32))
        alpha_n = beta + jax.nn.softplus(self.alpha_n[...].astype(f32))
        x32 = x.astype(f32)
        negative = (jnp.expm1(jnp.minimum(x32, eps)) - x32) * alpha_n + beta * x32
        return jnp.where(x32 > 0, alpha_p * x32 * x32 + beta * x32, negative).astype(x.dtype)


class MLP(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        # Apertus' xIELU has parameters of its own (`mlp.act_fn.alpha_p` ...); every other activation is a function
        self.act_fn = XIELU(p) if c.activation == "xielu" else activation(c.activation)
        d, f = c.hidden_size, c.intermediate_size
        self.fused, self.gated = c.fused_gate_up, c.gated_mlp
        if c.fused_gate_up:
            self.gate_up_proj = dense(d, 2 * f, ("embed", "mlp"), p, bias=c.mlp_bias, rngs=rngs)
        else:
            if c.gated_mlp:
                self.gate_proj = dense(d, f, ("embed", "mlp"), p, bias=c.mlp_bias, rngs=rngs)
            self.up_proj = dense(d, f, ("embed", "mlp"), p, bias=c.mlp_bias, rngs=rngs)
        self.down_proj = dense(f, d, ("mlp", "embed"), p, bias=c.mlp_bias, rngs=rngs)

    def __call__(self, x):
        if not self.gated:
            return self.down_proj(self.act_fn(self.up_proj(x)))
        gate, up = jnp.split(self.gate_up_proj(x), 2, axis=-1) if self.fused else (self.gate_proj(x), self.up_proj(x))
        return self.down_proj(self.act_fn(gate) * up)


# each norm placement's RMS norms by where they sit, under their checkpoint names
NORM_NAMES = {
    "pre": {"attention_in": "input_layernorm", "mlp_in": "post_attention_layernorm"},
    "sandwich": {"attention_in": "input_layernorm", "attention_out": "post_attention_layernorm",
                 "mlp_in": "pre_feedforward_layernorm", "mlp_out": "post_feedforward_layernorm"},
    "post": {"attention_out": "post_attention_layernorm", "mlp_out": "post_feedforward_layernorm"},
    "vaultgemma": {"attention_in": "input_layernorm", "mlp_in": "pre_feedforward_layernorm"},
    "apertus": {"attention_in": "attention_layernorm", "mlp_in": "feedforward_layernorm"},
    "bamba": {"attention_in": "input_layernorm", "mlp_in": "pre_ff_layernorm"},
    "single": {"attention_in": "norm", "mlp_in": "norm"},  # Nemotron-H: one block a layer, one norm before it
    # GLM-4-0414's sandwich, its own names
    "glm4": {"attention_in": "input_layernorm", "attention_out": "post_self_attn_layernorm",
             "mlp_in": "post_attention_layernorm", "mlp_out": "post_mlp_layernorm"},
}


class WeightlessLayerNorm(nnx.Module):
    """OLMo's LayerNorm: no weight or bias, eps 1e-5 whatever config.json says, in fp32."""

    def __init__(self, p: Precision):
        self.dtype = p.dtype

    def __call__(self, x):
        return ops.layer_norm(x, jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32), 1e-5).astype(self.dtype)


class WeightlessRMSNorm(nnx.Module):
    """NanoChat's RMS norm: no weight, in fp32."""

    def __init__(self, eps: float):
        self.eps = eps

    def __call__(self, x):
        return l2_norm(x, self.eps)


def stack_norm(c: Config, p: Precision) -> nnx.Module:
    """A layer's (or the final) norm over the hidden size."""
    if c.norm_type == "weightless":
        return WeightlessLayerNorm(p)
    if c.norm_type == "weightless_rms":
        return WeightlessRMSNorm(c.rms_norm_eps)
    if c.norm_type == "layer":
        return LayerNorm(c.hidden_size, c.rms_norm_eps, p)
    return RMSNorm(c.hidden_size, c.rms_norm_eps, p, c.norm_offset)


class GraniteSharedMLP(nnx.Module):
    """GraniteMoeShared's and Granite 4's `shared_mlp`: `input_linear` (gate then up, fused), `output_linear`."""

    def __init__(self, d: int, f: int, act: str, p: Precision, rngs: nnx.Rngs):
        self.act = activation(act)
        self.input_linear = dense(d, 2 * f, ("embed", "mlp"), p, bias=False, rngs=rngs)
        self.output_linear = dense(f, d, ("mlp", "embed"), p, bias=False, rngs=rngs)

    def __call__(self, x):
        gate, up = jnp.split(self.input_linear(x), 2, axis=-1)
        return self.output_linear(self.act(gate) * up)


def feed_forward_block(c: Config, p: Precision, rngs: nnx.Rngs, index: int) -> nnx.Module:
    """Layer `index`'s MLP, or its mixture of experts (`moe_kind`) where `moe_layers` marks it sparse."""
    if not c.is_sparse(index):
        return MLP(c, p, rngs)
    d, f, E, k = c.hidden_size, c.moe_intermediate_size, c.num_experts, c.experts_per_token
    if c.moe_kind == "clamped_swiglu":
        return moe.TopKSoftmaxMoE(d, f, E, k, c.swiglu_alpha, c.swiglu_limit, p, rngs)
    if c.moe_kind == "granite":
        return moe.GraniteMoE(d, f, E, k, c.activation, p, rngs)
    width = c.shared_expert_intermediate_size
    grouped = c.moe_kind in ("grouped_sigmoid", "grouped_softmax")
    # DeepSeek-V2 with `mlp_bias` and no shared experts: transformers' 0-wide shared MLP still adds its down_proj bias
    shared = width or (grouped and c.mlp_bias)
    shared = MLP(dataclasses.replace(c, intermediate_size=width, fused_gate_up=False), p, rngs) if shared else None
    if c.moe_kind == "hunyuan":
        return moe.HunyuanMoE(d, f, E, k, c.activation, p, rngs, shared_mlp=shared)
    if c.moe_kind == "llama4":
        return moe.ScaledInputMoE(d, f, E, k, c.activation, p, rngs, shared_expert=shared)
    names = moe.EXPERT_NAMES.get(c.model_type, moe.DEFAULT_EXPERT_NAMES)
    if grouped:
        experts = moe.StoredExperts(E, d, f, c.activation, p, rngs) if c.stored_experts else moe.Experts(
            E, c.moe_latent_size or d, f, names, c.activation, p, rngs)
        return moe.GroupLimitedMoE(d, E, k, c.moe_groups, c.moe_topk_groups, c.moe_kind.removeprefix("grouped_"),
                                   c.norm_topk_prob, c.routed_scaling_factor, experts, p, rngs,
                                   shared_experts=shared, statics=c.model_type == "ernie4_5_moe",
                                   group_rank=c.moe_group_rank, latent=c.moe_latent_size, latent_bias=c.mlp_bias)
    return moe.SparseMoE(d, f, E, k, c.norm_topk_prob, names, c.activation, p, rngs, shared_expert=shared)


LINEAR_NAMES = {"gated_deltanet": "linear-attention", "mamba2": "Mamba-2", "mamba": "Mamba"}
# each kind of linear layer's checkpoint name and module
LINEAR_MIXERS = {"gated_deltanet": ("linear_attn", gated_deltanet.GatedDeltaNet), "mamba2": ("mamba", mamba2.Mamba2),
                 "mamba": ("mamba", mamba.Mamba)}


class DecoderLayer(nnx.Module):
    """A token mixer then feed-forward blocks, each after its norm and added to the residual; a Nemotron-H layer holds
    one of the two (`Config.layer_blocks`)."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs, index: int):
        # the token mixer, under its checkpoint name: on linear layers Gated DeltaNet's `linear_attn` or Mamba-2's
        # `mamba`
        self.mixer_name = None
        if c.has_block(index, "mixer"):
            self.mixer_name, mixer = LINEAR_MIXERS[c.linear_kind] if c.is_linear(index) else (
                "self_attn", LatentAttention if c.kv_lora_rank else Attention)
            setattr(self, self.mixer_name, mixer(c, p, rngs))
        # the feed-forward blocks, under their checkpoint names: Mixtral's sparse ones are `block_sparse_moe`;
        # Granite's `shared_mlp` beside or in place of them
        self.ffn_names = ()
        if c.has_block(index, "ffn") and not (c.shared_mlp_intermediate_size and not c.is_sparse(index)):
            setattr(self, c.ffn_name, feed_forward_block(c, p, rngs, index))
            self.ffn_names += (c.ffn_name,)
        if c.has_block(index, "ffn") and c.shared_mlp_intermediate_size:
            self.shared_mlp = GraniteSharedMLP(c.hidden_size, c.shared_mlp_intermediate_size, c.activation, p, rngs)
            self.ffn_names += ("shared_mlp",)
        self.resid_dropout, self.residual_multiplier = c.resid_dropout, c.residual_multiplier
        self.norm_names = NORM_NAMES[c.norm_placement]
        for name in dict.fromkeys(self.norm_names.values()):
            setattr(self, name, stack_norm(c, p))

    def __call__(self, x, mask, rope, **kw):
        drop, new_cache = kw["drop"], (None, None)  # a layer without a mixer caches nothing
        if self.mixer_name:
            a, new_cache = getattr(self, self.mixer_name)(self.normed("attention_in", x), mask, rope, **kw)
            x = x + self.residual(drop(self.normed("attention_out", a), self.resid_dropout))
        if self.ffn_names:
            h = self.feed_forward(self.normed("mlp_in", x))
            x = x + self.residual(drop(self.normed("mlp_out", h), self.resid_dropout))
        return x, new_cache

    def normed(self, where: str, x):
        """The layer's norm at `where` (attention_in / _out, mlp_in / _out) on x, or x where it has none."""
        name = self.norm_names.get(where)
        return x if name is None else getattr(self, name)(x)

    def feed_forward(self, x):
        first, *others = self.ffn_names
        h = getattr(self, first)(x)
        for name in others:
            h = h + getattr(self, name)(x)
        return h

    def residual(self, h):
        return h if self.residual_multiplier == 1.0 else h * self.residual_multiplier


class LlamaModel(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.dtype = p.dtype
        self.embed_tokens = embed(c.vocab_size, c.hidden_size, p, rngs=rngs, scale=c.embed_scale)
        self.layers = nnx.List([DecoderLayer(c, p, rngs, i) for i in range(c.num_layers)])
        setattr(self, c.final_norm_name, stack_norm(c, p))

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                 prefix_kv=None, prefix_mask=None, cache: KVCache | None = None, drop=None):
        drop = drop or DropoutRng(None)
        x, rope, mask = rotary.stack_inputs(self.c, self.embed_tokens, input_ids, attention_mask, position_ids,
                                            inputs_embeds, prefix_kv, cache, self.dtype)
        if self.c.embedding_multiplier != 1.0:
            x = x * jnp.asarray(self.c.embedding_multiplier, x.dtype)
        final_norm = getattr(self, self.c.final_norm_name)
        if self.c.embedding_norm:
            x = final_norm(x)
        x = drop(x, self.c.embd_dropout)
        x, cache = run_layers(self.layers, x, mask, rope, cache=cache, prefix_kv=prefix_kv,
                              prefix_mask=prefix_mask, drop=drop)
        return final_norm(x), cache


class Llama(heads.DecoderOnlyLM):
    """Llama with the head for `task` (None, causal_lm, seq_cls, token_cls)."""

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.model = LlamaModel(c, p, rngs)
        self.final_logit_softcap, self.logits_scaling = c.final_softcap, c.logits_scaling
        self.add_heads(c, task, num_labels, p, rngs, token_cls_name="score", token_cls_bias=c.token_cls_bias,
                       lm_head_bias=c.lm_head_bias)

    @property
    def decoder(self) -> LlamaModel:
        return self.model

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.model.embed_tokens


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> Llama:
    return Llama(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    """Every kernel is a torch nn.Linear `[out, in]`; so is each expert's slice of a stacked expert weight, whose
    per-expert names have `{}` for the expert (hub.load_state stacks them)."""
    if len(path) >= 2 and str(path[-2]) == "experts":
        return hf_name((*path[:-1], "{}", path[-1], "kernel")), True
    if str(path[-1]) == "e_score_correction_bias":  # DeepSeek's router holds it; MiniMax-M2's MoE block does
        return (hf_name(path), hf_name((*path[:-2], path[-1]))), False
    return hf_name(path), is_kernel(path)
