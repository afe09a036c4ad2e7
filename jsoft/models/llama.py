"""Llama (pre-RMSNorm decoder, rotary positions, grouped-query attention, SiLU-gated MLP), and the checkpoint
families that are Llama with other defaults: Mistral (a sliding attention window), Qwen2 (biases on the query,
key and value projections; optional sliding window), Qwen3 (query/key norms), Gemma, Gemma 2 (sandwich norms,
soft-capping, alternating sliding and full layers), Gemma 3 (query/key norms, five sliding layers with their
own RoPE base per full one), Phi-3 / Phi-4 (fused qkv_proj and gate_up_proj, partial rotary, LongRoPE), OLMo 2
(norms after attention and MLP only; query/key norms over the whole projection), Granite (embedding, residual,
attention and logit multipliers), and the mixture-of-experts Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, GPT-OSS,
GraniteMoE, GLM-4.5, dots.llm1 and DeepSeek-V3 / R1 (jsoft.models.moe; GPT-OSS also adds a sink logit per head
to every attention softmax, and its checkpoints are read by jsoft.models.gpt_oss; DeepSeek-V3 attends through
compressed latents, `LatentAttention`).

Module tree mirrors transformers' (`model.layers.0.self_attn.q_proj`, `lm_head`, `score`) so
checkpoint names map one to one; every weight is a torch nn.Linear (`[out, in]`), hence transposed."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jsoft.models import heads, moe, ops
from jsoft.models.base import TransformerConfig, default_positions, hf_name, is_kernel
from jsoft.models.layers import (
    DropoutRng,
    KVCache,
    Precision,
    RMSNorm,
    activation,
    attention_mask_4d,
    axes,
    chunked,
    dense,
    dot_product_attention,
    embed,
    merge_heads,
    query_slot,
    run_layers,
    self_attention_kv,
    sliding_window,
    split_heads,
)

TASKS = (None, "causal_lm", "seq_cls", "token_cls")
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2", "granite",
               "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "smollm3", "olmo3", "ministral", "glm", "glm4", "exaone4",
               "seed_oss", "helium", "arcee", "ernie4_5", "olmo", "gpt_oss", "granitemoe", "glm4_moe", "dots1",
               "deepseek_v3", "glm4_moe_lite", "deepseek_v2", "minimax_m2", "exaone_moe", "llama4_text",
               "ernie4_5_moe", "hunyuan_v1_dense", "hunyuan_v1_moe")
BASE_PREFIX = "model"
ROPE_TYPES = ("default", "linear", "llama3", "dynamic", "longrope", "yarn")


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
    # where a layer's RMS norms sit (NORM_NAMES): "pre" (on the attention's and MLP's inputs), "sandwich" (Gemma 2 / 3:
    # on their outputs too; post_attention_layernorm is one of those), "glm4" (GLM-4-0414's sandwich, other names),
    # "post" (OLMo 2 / 3: on their outputs only)
    norm_placement: str = "pre"
    weightless_norms: bool = False  # OLMo: the layers' and final norms are LayerNorms without weight or bias
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
    routed_scaling_factor: float = 1.0  # "grouped_*": the routed experts' weights times this
    # multi-head latent attention (DeepSeek-V3, `LatentAttention`; 0: none): keys and values expanded from a
    # `kv_lora_rank`-wide latent, queries from a `q_lora_rank`-wide one (None: q_proj); a head's query / key is
    # `qk_nope_head_dim` dims without RoPE then `rotary_dim` rotated ones, its value `v_head_dim` wide
    kv_lora_rank: int = 0
    q_lora_rank: int | None = None
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    # Llama 4: "chunked_attention" layers see only the keys in their query's block of `chunk_size` slots; RoPE
    # layers' queries and keys RMS-normed without a weight after RoPE (`qk_l2_norm`); NoPE layers' queries times
    # 1 + temperature_scale * log1p(floor((slot + 1) / temperature_floor)) (`attn_temperature_tuning`)
    chunk_size: int | None = None
    chunked_layers: tuple[bool, ...] = ()
    qk_l2_norm: bool = False
    temperature_floor: float | None = None
    temperature_scale: float = 0.1

    def is_sliding(self, layer: int) -> bool:
        return bool(self.sliding_layers) and self.sliding_layers[layer]

    def is_nope(self, layer: int) -> bool:
        return bool(self.nope_layers) and self.nope_layers[layer]

    def is_chunked(self, layer: int) -> bool:
        return bool(self.chunked_layers) and self.chunked_layers[layer]

    @property
    def no_prefix_reason(self) -> str | None:
        if self.kv_lora_rank:
            return (f"{self.model_type}'s multi-head latent attention caches compressed latents, and its keys "
                    f"({self.qk_nope_head_dim + self.rope_dim} dims a head) and values ({self.v_head_dim}) differ "
                    "in width, so no key/value prefix fits it (PEFT's fails there too)")
        return None

    @property
    def rope_dim(self) -> int:
        """The leading dims of each head that RoPE rotates."""
        return self.head_dim if self.rotary_dim is None else self.rotary_dim

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        d, h = hf["hidden_size"], hf["num_attention_heads"]
        model_type = hf.get("model_type", "llama")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type={model_type!r} is not Llama-like; jsoft.models.llama reads {MODEL_TYPES}")
        rope, local_rope, sliding = rope_from_hf(hf), _local_rope_theta(hf), _sliding_layers(hf)
        gemma = model_type in ("gemma", "gemma2", "gemma3_text")
        gemma2_style = model_type in ("gemma2", "gemma3_text")  # sandwich norms, query_pre_attn_scalar, final cap
        if model_type == "gpt_oss" and not (hf.get("rope_parameters") or hf.get("rope_scaling")):
            hf = {**hf, "rope_parameters": GPT_OSS_ROPE}  # GptOssConfig's default: YaRN
            rope = rope_from_hf(hf)
        if model_type in HUNYUANS and rope["rope_type"] == "dynamic" and rope.get("alpha"):
            # NTK alpha: a fixed base, theta * alpha ** (dim / (dim - 2)), whatever the length
            dim = hf.get("head_dim") or d // h
            rope = {"rope_type": "default", "rope_theta": float(rope["rope_theta"]) * float(rope["alpha"]) ** (
                dim / (dim - 2))}
        if hf.get("use_bidirectional_attention"):
            raise ValueError(f"config.json use_bidirectional_attention=True ({model_type}) is not supported by jsoft")
        act = hf.get("hidden_act", "silu")
        if gemma2_style:
            act = hf.get("hidden_activation") or act
        family = FAMILIES.get(model_type, {})
        if model_type == "glm4_moe" and hf.get("use_qk_norm"):
            family = {**family, "qk_norm": "head"}
        head_dim = hf.get("head_dim") or d // h
        rotary = float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor",
                                                                 0.5 if model_type in GLMS else 1.0)))
        if model_type == "minimax_m2" and "partial_rotary_factor" not in rope and hf.get("rotary_dim"):
            rotary = hf["rotary_dim"] / head_dim  # its released checkpoints' spelling
        rotary_dims = int(head_dim * rotary)  # as transformers truncates it
        latent = _latent_attention_fields(hf, rope)
        if latent:  # the cache holds queries / keys and values at one width, the wider
            head_dim, rotary_dims = latent.pop("head_dim"), hf["qk_rope_head_dim"]
        latent_scale = latent.pop("query_scale", None)
        return cls(
            model_type=model_type, vocab_size=hf["vocab_size"], hidden_size=d,
            num_layers=hf["num_hidden_layers"], num_heads=h,
            num_kv_heads=h if latent else hf.get("num_key_value_heads") or h, head_dim=head_dim,
            pad_token_id=hf.get("pad_token_id"), eos_token_id=hf.get("eos_token_id"),
            bos_token_id=hf.get("bos_token_id"),
            # Llama 4: its dense layers' width (`intermediate_size` is its experts')
            intermediate_size=hf.get("intermediate_size_mlp", 16384) if model_type == "llama4_text"
            else hf["intermediate_size"],
            # legacy Gemma configs say "gelu" for the tanh approximation (transformers reads it so)
            activation="gelu_pytorch_tanh" if gemma and act == "gelu" else act,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            max_positions=hf.get("max_position_embeddings", 2048),
            **rope_fields(hf, rope, rotary_dims), rotary_dim=None if rotary_dims == head_dim else rotary_dims,
            **_bias_fields(hf),
            sliding_window=(hf.get("sliding_window") or None) if any(sliding) else None, sliding_layers=sliding,
            local_rope_theta=local_rope, nope_layers=_nope_layers(hf),
            attn_dropout=float(hf.get("attention_dropout") or 0.0),
            resid_dropout=float(hf.get("resid_pdrop") or hf.get("residual_dropout") or 0.0),
            embd_dropout=float(hf.get("embd_pdrop") or 0.0),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", model_type == "ernie4_5_moe")),
            lm_head_bias=model_type == "ernie4_5_moe" and bool(hf.get("use_bias", False)),
            classifier_dropout=heads.classifier_dropout_rate(hf, "resid_pdrop" if model_type == "phi3"
                                                             else "hidden_dropout"),
            token_cls_bias=bool(hf.get("token_classification_bias", True)),
            embed_scale=d ** 0.5 if gemma else 1.0,
            query_scale=(float(hf.get("query_pre_attn_scalar", 256)) ** -0.5 if gemma2_style
                         else float(hf.get("attention_multiplier", 1.0)) if model_type in GRANITES
                         else latent_scale),
            # transformers' Gemma 3 attention never applies attn_logit_softcapping (its config still has one), nor
            # its multimodal model final_logit_softcapping
            attn_softcap=hf.get("attn_logit_softcapping") if model_type == "gemma2" else None,
            final_softcap=hf.get("final_logit_softcapping") if gemma2_style and not hf.get("multimodal_type") else None,
            clip_qkv=hf.get("clip_qkv"),
            **family, **(_granite_multipliers(hf) if model_type in GRANITES else {}), **_moe_fields(hf), **latent,
            **(_llama4_fields(hf) if model_type == "llama4_text" else {}),
        )


# what each family fixes in its modelling code rather than in config.json (the rest: Config's defaults)
FAMILIES: dict[str, dict] = {
    "gemma": dict(norm_offset=1.0),
    "gemma2": dict(norm_offset=1.0, norm_placement="sandwich"),
    "gemma3_text": dict(norm_offset=1.0, norm_placement="sandwich", qk_norm="head"),
    "qwen3": dict(qk_norm="head"),
    "qwen3_moe": dict(qk_norm="head"),
    "olmo2": dict(norm_placement="post", qk_norm="width"),
    "olmo3": dict(norm_placement="post", qk_norm="width"),
    "olmoe": dict(qk_norm="width"),
    "exaone4": dict(norm_placement="post", qk_norm="head"),
    "phi3": dict(fused_qkv=True, fused_gate_up=True),
    "glm": dict(fused_gate_up=True, rope_interleaved=True),
    "glm4": dict(fused_gate_up=True, rope_interleaved=True, norm_placement="glm4"),
    "helium": dict(rope_interleaved=True),
    "ernie4_5": dict(rope_interleaved=True),
    "arcee": dict(gated_mlp=False),
    "olmo": dict(weightless_norms=True),
    "gpt_oss": dict(attention_sinks=True, moe_kind="clamped_swiglu"),
    "granitemoe": dict(moe_kind="granite"),
    "glm4_moe": dict(moe_kind="grouped_sigmoid"),  # use_qk_norm: qk_norm="head"
    "dots1": dict(qk_norm="head", moe_kind="grouped_sigmoid"),
    "deepseek_v3": dict(moe_kind="grouped_sigmoid"),
    "glm4_moe_lite": dict(moe_kind="grouped_sigmoid"),  # DeepSeek-V3's latent attention, GLM-4.5's router
    "deepseek_v2": dict(moe_kind="grouped_softmax"),
    "minimax_m2": dict(qk_norm="width", moe_kind="grouped_sigmoid"),  # one group: the corrected top k, renormalised
    "exaone_moe": dict(qk_norm="head", moe_kind="grouped_sigmoid"),  # EXAONE 4's attention in pre-norm layers
    "llama4_text": dict(rope_interleaved=True, moe_kind="llama4"),
    "ernie4_5_moe": dict(rope_interleaved=True, moe_kind="grouped_softmax"),  # one group, moe_statics' correction
    "hunyuan_v1_dense": dict(qk_norm="rotated_head"),
    "hunyuan_v1_moe": dict(qk_norm="rotated_head", moe_kind="hunyuan"),
}
HUNYUANS = ("hunyuan_v1_dense", "hunyuan_v1_moe")
EXAONES = ("exaone4", "exaone_moe")  # sliding_window_pattern; with a sliding window, full layers without RoPE
GLMS = ("glm", "glm4", "glm4_moe")  # half of each head rotated by default
GRANITES = ("granite", "granitemoe")  # Granite's multipliers (Config.embedding_multiplier ...)
GPT_OSS_ROPE = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                "original_max_position_embeddings": 4096, "rope_theta": 150000.0}


def _bias_fields(hf: dict) -> dict:
    """Which projections have biases, as each family's code reads config.json: `attention_bias` on the query / key /
    value and output projections (Qwen2: `qkv_bias`, default on, none on the output; GLM: on by default (GLM-4.5:
    off), none on the output; Helium: none on the output; Seed-OSS: `attention_out_bias` for the output),
    `mlp_bias` (ERNIE 4.5: one `use_bias` for every projection)."""
    model_type = hf.get("model_type", "llama")
    if model_type in ("ernie4_5", "ernie4_5_moe"):
        bias = bool(hf.get("use_bias", False))
        return dict(attention_bias=bias, attention_out_bias=bias, mlp_bias=bias)
    qwen2, glm = model_type in ("qwen2", "qwen2_moe"), model_type in GLMS
    glm_default = model_type in ("glm", "glm4")  # on unless config.json says otherwise
    qkv = bool(hf.get("qkv_bias", True)) if qwen2 else bool(hf.get("attention_bias", glm_default
                                                                   or model_type == "gpt_oss"))
    if model_type == "seed_oss":
        out = bool(hf.get("attention_out_bias", False))
    else:
        out = qkv and not (qwen2 or glm or model_type == "helium")
    return dict(attention_bias=qkv, attention_out_bias=out, mlp_bias=bool(hf.get("mlp_bias", False)))


def _moe_fields(hf: dict) -> dict:
    """A mixture of experts' Config fields, as transformers reads config.json: every Mixtral and OLMoE layer sparse;
    Qwen2-MoE's and Qwen3-MoE's every `decoder_sparse_step`-th layer outside `mlp_only_layers`; Qwen2-MoE's shared
    expert; DeepSeek's routers' families by `_grouped_fields`; ERNIE 4.5 MoE's, Hunyuan-A13B's and MiniMax-M2's
    here (Llama 4's: `_llama4_fields`)."""
    model_type, n = hf.get("model_type"), hf["num_hidden_layers"]
    if model_type in GROUPED_DEFAULTS:
        return _grouped_fields(hf)
    if model_type == "ernie4_5_moe":  # softmax scores, corrected to choose, renormalised; every interval-th layer
        first, last, every = (hf.get("moe_layer_start_index", 1), hf.get("moe_layer_end_index", -1),
                              hf.get("moe_layer_interval", 1))
        last = n - 1 if last == -1 else last
        width = hf.get("moe_intermediate_size", 1536)
        return dict(num_experts=hf.get("moe_num_experts", 64), experts_per_token=hf.get("moe_k", 6),
                    moe_layers=tuple((i + 1) % every == 0 and first <= i <= last for i in range(n)),
                    moe_intermediate_size=width, norm_topk_prob=True,
                    shared_expert_intermediate_size=width * hf.get("moe_num_shared_experts", 2))
    if model_type == "hunyuan_v1_moe":  # every layer: softmax top-k renormalised, a shared MLP as wide as the experts
        experts, top_k = (_same_per_layer(hf, key, default) for key, default in (("num_experts", 1), ("moe_topk", 1)))
        width = hf["intermediate_size"]
        return dict(num_experts=experts, experts_per_token=top_k, moe_layers=(True,) * n,
                    moe_intermediate_size=width, shared_expert_intermediate_size=width)
    if model_type == "minimax_m2":  # DeepSeek-V3's router with one group, no shared expert, no scaling
        return dict(num_experts=hf.get("num_local_experts", 256), experts_per_token=hf.get("num_experts_per_tok", 8),
                    moe_layers=(True,) * n, moe_intermediate_size=hf["intermediate_size"], norm_topk_prob=True)
    if model_type not in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", "granitemoe"):
        return {}
    experts = hf.get("num_local_experts") or hf.get("num_experts") or 0
    if model_type in ("qwen2_moe", "qwen3_moe"):
        dense_layers, step = set(hf.get("mlp_only_layers") or []), hf.get("decoder_sparse_step", 1)
        sparse = tuple(i not in dense_layers and experts > 0 and (i + 1) % step == 0 for i in range(n))
    else:
        sparse = (experts > 0,) * n
    if model_type == "granitemoe":
        return dict(num_experts=experts, experts_per_token=hf.get("num_experts_per_tok", 2), moe_layers=sparse,
                    moe_intermediate_size=hf["intermediate_size"])
    if model_type == "gpt_oss":
        return dict(num_experts=experts or 128, experts_per_token=hf.get("num_experts_per_tok", 4),
                    moe_layers=(True,) * n, moe_intermediate_size=hf["intermediate_size"],
                    swiglu_alpha=float(hf.get("swiglu_alpha", 1.702)), swiglu_limit=float(hf.get("swiglu_limit", 7.0)))
    return dict(num_experts=experts, experts_per_token=hf.get("num_experts_per_tok", 2), moe_layers=sparse,
                moe_intermediate_size=hf.get("moe_intermediate_size") if model_type in ("qwen2_moe", "qwen3_moe")
                else hf["intermediate_size"],
                shared_expert_intermediate_size=hf.get("shared_expert_intermediate_size") or 0,
                norm_topk_prob=True if model_type == "mixtral" else bool(hf.get("norm_topk_prob", False)))


# DeepSeek's routers (moe.GroupLimitedMoE) in each family: its config class's defaults (None: config.json must say)
GROUPED_DEFAULTS = {
    "deepseek_v3": dict(n_routed_experts=256, num_experts_per_tok=8, first_k_dense_replace=3, n_shared_experts=1,
                        norm_topk_prob=True, n_group=8, topk_group=4, routed_scaling_factor=2.5),
    "glm4_moe": dict(n_routed_experts=128, num_experts_per_tok=8, first_k_dense_replace=1, n_shared_experts=1,
                     norm_topk_prob=True, n_group=1, topk_group=1, routed_scaling_factor=1.0),
    "dots1": dict(n_routed_experts=None, num_experts_per_tok=None, first_k_dense_replace=0, n_shared_experts=None,
                  norm_topk_prob=False, n_group=1, topk_group=1, routed_scaling_factor=1.0),
    # which layers are sparse: `mlp_layer_types` (default: all but the first)
    "glm4_moe_lite": dict(n_routed_experts=64, num_experts_per_tok=4, n_shared_experts=1, norm_topk_prob=True,
                          n_group=1, topk_group=1, routed_scaling_factor=1.8),
    # n_group / topk_group only with topk_method "group_limited_greedy"; weights never renormalised (transformers
    # ignores norm_topk_prob there)
    "deepseek_v2": dict(n_routed_experts=64, num_experts_per_tok=None, first_k_dense_replace=0, n_shared_experts=2,
                        norm_topk_prob=False, n_group=None, topk_group=None, routed_scaling_factor=1.0),
    # EXAONE-MoE (its names: num_experts, num_shared_experts): `mlp_layer_types`, else first_k_dense_replace
    "exaone_moe": dict(n_routed_experts=64, num_experts_per_tok=8, first_k_dense_replace=1, n_shared_experts=1,
                       norm_topk_prob=True, n_group=1, topk_group=1, routed_scaling_factor=2.5),
}
GROUPED_KEY_ALIASES = {"exaone_moe": {"num_experts": "n_routed_experts", "num_shared_experts": "n_shared_experts"}}
TOPK_METHODS = ("greedy", "group_limited_greedy")  # DeepSeek-V2's


def _same_per_layer(hf: dict, key: str, default: int) -> int:
    """A config value that may be given per layer (Hunyuan's `num_experts`, `moe_topk`): jsoft runs one for all."""
    value = hf.get(key, default)
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise ValueError(f"config.json {key}={value!r} differs between layers; jsoft runs one value for all")
        value = value[0]
    return int(value)


def _grouped_fields(hf: dict) -> dict:
    """DeepSeek's MoE fields as transformers reads config.json: the first `first_k_dense_replace` layers dense
    (GLM-4.7-Flash: those `mlp_layer_types` calls "dense"), the rest sparse, each with `n_shared_experts` experts'
    width of shared MLP; DeepSeek-V2's groups only under `topk_method` "group_limited_greedy"."""
    defaults, n = GROUPED_DEFAULTS[hf["model_type"]], hf["num_hidden_layers"]
    hf = {**hf, **{ours: hf[theirs] for theirs, ours in GROUPED_KEY_ALIASES.get(hf["model_type"], {}).items()
                   if theirs in hf}}
    if hf["model_type"] == "deepseek_v2":
        method = hf.get("topk_method") or "greedy"
        if method not in TOPK_METHODS:
            raise ValueError(f"config.json topk_method={method!r} is not supported by jsoft's DeepSeek-V2; valid: "
                             f"{list(TOPK_METHODS)}")
        hf = {**hf, "norm_topk_prob": False}
        if method == "greedy":
            hf = {**hf, "n_group": 1, "topk_group": 1}

    def get(key):
        value = hf[key] if hf.get(key) is not None else defaults[key]
        if value is None:
            raise ValueError(f"config.json of a {hf['model_type']} model needs {key}")
        return value

    if hf["model_type"] in ("glm4_moe_lite", "exaone_moe"):
        first_dense = get("first_k_dense_replace") if hf["model_type"] == "exaone_moe" else 1
        kinds = hf.get("mlp_layer_types") or ["dense" if i < first_dense else "sparse" for i in range(n)]
        if len(kinds) != n or not set(kinds) <= {"dense", "sparse"}:
            raise ValueError(f"config.json mlp_layer_types={kinds!r}: expected {n} entries (num_hidden_layers), each "
                             "'dense' or 'sparse'")
        sparse = tuple(k == "sparse" for k in kinds)
    else:
        sparse = tuple(i >= get("first_k_dense_replace") for i in range(n))
    width = hf["moe_intermediate_size"]
    return dict(num_experts=get("n_routed_experts"), experts_per_token=get("num_experts_per_tok"), moe_layers=sparse,
                moe_intermediate_size=width, shared_expert_intermediate_size=width * get("n_shared_experts"),
                norm_topk_prob=bool(get("norm_topk_prob")), moe_groups=get("n_group"),
                moe_topk_groups=get("topk_group"), routed_scaling_factor=float(get("routed_scaling_factor")))


def _latent_attention_fields(hf: dict, rope: dict) -> dict:
    """Multi-head latent attention's fields (DeepSeek-V3; {} for other attention), with the cache's `head_dim` and
    the scores' scale: `(qk_nope_head_dim + qk_rope_head_dim) ** -0.5`, times YaRN's mscale(factor,
    mscale_all_dim) squared under any RoPE scaling that sets `mscale_all_dim` (transformers' yarn_apply_mscale)."""
    if not hf.get("kv_lora_rank"):
        return {}
    nope, rot, v = hf["qk_nope_head_dim"], hf["qk_rope_head_dim"], hf.get("v_head_dim") or hf["qk_nope_head_dim"]
    scale = (nope + rot) ** -0.5
    if rope["rope_type"] != "default" and rope.get("mscale_all_dim"):
        factor = float(rope["factor"])
        mscale = 1.0 if factor <= 1 else 0.1 * float(rope["mscale_all_dim"]) * math.log(factor) + 1.0
        scale *= mscale * mscale
    return dict(kv_lora_rank=hf["kv_lora_rank"], q_lora_rank=hf.get("q_lora_rank"), qk_nope_head_dim=nope,
                v_head_dim=v, head_dim=max(nope + rot, v), query_scale=scale,
                # DeepSeek-V2 always rotates pairs (2i, 2i + 1), as complex numbers
                rope_interleaved=hf["model_type"] == "deepseek_v2" or bool(hf.get("rope_interleave", True)))


def _llama4_fields(hf: dict) -> dict:
    """Llama 4's fields as transformers reads config.json: sparse layers `moe_layers` (default every
    `interleave_moe_layer_step`-th), their experts and shared expert `intermediate_size` wide, dense layers
    `intermediate_size_mlp`; chunked layers by `layer_types` (default: the RoPE layers)."""
    n, step = hf["num_hidden_layers"], hf.get("interleave_moe_layer_step", 1)
    sparse_at = hf.get("moe_layers")
    sparse_at = set(range(step - 1, n, step) if sparse_at is None else sparse_at)
    kinds = hf.get("layer_types") or ["full_attention" if nope else "chunked_attention"
                                      for nope in _nope_layers(hf) or (False,) * n]
    if len(kinds) != n or not set(kinds) <= {"chunked_attention", "full_attention"}:
        raise ValueError(f"config.json layer_types={kinds!r}: expected {n} entries (num_hidden_layers), each "
                         "'chunked_attention' or 'full_attention'")
    chunked = tuple(k == "chunked_attention" for k in kinds)
    chunk = hf.get("attention_chunk_size", 8192)
    if any(chunked) and not chunk:
        raise ValueError("config.json has chunked_attention layers but no attention_chunk_size")
    width = hf.get("intermediate_size", 8192)
    return dict(moe_intermediate_size=width, shared_expert_intermediate_size=width,
                num_experts=hf.get("num_local_experts", 16), experts_per_token=hf.get("num_experts_per_tok", 1),
                moe_layers=tuple(i in sparse_at for i in range(n)),
                chunk_size=chunk if any(chunked) else None, chunked_layers=chunked if any(chunked) else (),
                qk_l2_norm=bool(hf.get("use_qk_norm", True)),
                temperature_floor=float(hf.get("floor_scale", 8192)) if hf.get("attn_temperature_tuning", True)
                else None, temperature_scale=float(hf.get("attn_scale", 0.1)))


def _granite_multipliers(hf: dict) -> dict:
    """Granite's scalars on the embeddings, each residual branch and the LM logits (its attention_multiplier is
    the score scale, `query_scale`)."""
    return dict(embedding_multiplier=float(hf.get("embedding_multiplier", 1.0)),
                residual_multiplier=float(hf.get("residual_multiplier", 1.0)),
                logits_scaling=float(hf.get("logits_scaling", 1.0)))


def _sliding_layers(hf: dict) -> tuple[bool, ...]:
    """Which layers are sliding-window ones, as transformers reads config.json: every Mistral, Phi-3 and Mixtral
    layer when `sliding_window` is set (Qwen3-MoE: and `use_sliding_window`; Ministral: without `layer_types`);
    otherwise those `layer_types` marks "sliding_attention", or, in configs without it, the defaults of
    transformers' configs (Qwen2 / Qwen3: layers from `max_window_layers` on when `use_sliding_window`; Qwen2-MoE:
    every other layer from the first, below `max_window_layers`; Gemma 2: every other layer from the first;
    Gemma 3, Cohere 2, OLMo 3 and EXAONE 4: all but each `sliding_window_pattern`-th (OLMo 3: 4th); SmolLM3: its
    NoPE layers when `use_sliding_window`; GPT-OSS: every other layer from the first; dots.llm1: layers from
    `max_window_layers` on when `sliding_window` is set). () where none is."""
    model_type, n, window = hf.get("model_type"), hf["num_hidden_layers"], hf.get("sliding_window")
    every_layer = model_type in ("mistral", "phi3", "mixtral", "qwen3_moe")
    if every_layer or (model_type == "ministral" and "layer_types" not in hf):
        on = bool(window) and (model_type != "qwen3_moe" or bool(hf.get("use_sliding_window")))
        return (True,) * n if on else ()
    if model_type not in ("qwen2", "qwen3", "qwen2_moe", "gemma2", "gemma3_text", "smollm3", "cohere2", "olmo3",
                          "ministral", *EXAONES, "gpt_oss", "dots1") or (model_type in EXAONES and not window):
        return ()
    kinds = hf.get("layer_types")
    if not kinds and model_type == "smollm3":  # its NoPE layers slide, when any does
        on = bool(hf.get("use_sliding_window")) and bool(window)
        kinds = ["sliding_attention" if on and nope else "full_attention" for nope in _nope_layers(hf) or [False] * n]
    if not kinds:
        on = bool(hf.get("use_sliding_window")) and bool(window)
        windowed = hf.get("max_window_layers", 28)
        sliding = {"qwen2": lambda i: on and i >= windowed, "qwen3": lambda i: on and i >= windowed,
                   "qwen2_moe": lambda i: on and i % 2 == 0 and i < windowed, "gemma2": lambda i: i % 2 == 0,
                   "gemma3_text": lambda i: (i + 1) % hf.get("sliding_window_pattern", 6) != 0,
                   "cohere2": lambda i: (i + 1) % hf.get("sliding_window_pattern", 4) != 0,
                   "olmo3": lambda i: (i + 1) % 4 != 0, "exaone4": lambda i: _exaone4_sliding(hf, i),
                   "exaone_moe": lambda i: _exaone4_sliding(hf, i),
                   "gpt_oss": lambda i: i % 2 == 0,
                   "dots1": lambda i: bool(window) and i >= hf.get("max_window_layers", 62)}[model_type]
        kinds = ["sliding_attention" if sliding(i) else "full_attention" for i in range(n)]
    if len(kinds) != n or not set(kinds) <= {"sliding_attention", "full_attention"}:
        raise ValueError(f"config.json layer_types={kinds!r}: expected {n} entries (num_hidden_layers), each "
                         "'sliding_attention' or 'full_attention'")
    sliding = tuple(k == "sliding_attention" for k in kinds)
    return sliding if any(sliding) else ()


def _exaone4_sliding(hf: dict, layer: int) -> bool:
    """EXAONE 4's `sliding_window_pattern`: every layer but each n-th slides, or a string cycled over the layers
    ("LLLG": "L" slides)."""
    pattern = hf.get("sliding_window_pattern", 4)
    if isinstance(pattern, str):
        return pattern[layer % len(pattern)].upper() == "L"
    return (layer + 1) % pattern != 0


def _nope_layers(hf: dict) -> tuple[bool, ...]:
    """The layers without RoPE: SmolLM3's and Llama 4's `no_rope_layers` zeros (1 where a layer rotates; by default
    every `no_rope_layer_interval`-th layer), EXAONE 4's full-attention layers when it has sliding ones. () where
    none is."""
    if hf.get("model_type") in EXAONES:  # with a sliding_window, its full layers skip RoPE
        nope = tuple(not s for s in _sliding_layers(hf) or (False,) * hf["num_hidden_layers"])
        return nope if hf.get("sliding_window") and any(nope) else ()
    if hf.get("model_type") not in ("smollm3", "llama4_text"):
        return ()
    n, interval = hf["num_hidden_layers"], hf.get("no_rope_layer_interval", 4)
    rotates = hf.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
    if len(rotates) != n:
        raise ValueError(f"config.json no_rope_layers has {len(rotates)} entries; expected {n} (num_hidden_layers)")
    nope = tuple(not r for r in rotates)
    return nope if any(nope) else ()


def _local_rope_theta(hf: dict) -> float | None:
    """Gemma 3's and OLMo 3's sliding layers' RoPE base: `rope_parameters["sliding_attention"]` (transformers 5),
    or in older config.json Gemma 3's `rope_local_base_freq`, OLMo 3's `rope_theta`; default RoPE only."""
    if hf.get("model_type") not in ("gemma3_text", "olmo3"):
        return None
    local = dict((hf.get("rope_parameters") or {}).get("sliding_attention") or {})
    if local.get("rope_type", "default") != "default":
        raise ValueError(f"config.json rope_parameters['sliding_attention']['rope_type']={local['rope_type']!r} is "
                         f"not supported by jsoft's {hf['model_type']}; valid: 'default'")
    older = hf.get("rope_local_base_freq") if hf["model_type"] == "gemma3_text" else hf.get("rope_theta")
    return float(local.get("rope_theta", older or 10000.0))


def rope_from_hf(hf: dict) -> dict:
    """One flat dict with rope_type and rope_theta, from either config.json spelling:
    transformers 5 `rope_parameters` (Gemma 3, OLMo 3: its "full_attention" entry), or the older top-level
    `rope_theta` + `rope_scaling`."""
    if hf.get("model_type") in ("gemma3_text", "olmo3") and "full_attention" in (hf.get("rope_parameters") or {}):
        key, rope = "rope_parameters['full_attention']", dict(hf["rope_parameters"]["full_attention"] or {})
    elif hf.get("rope_parameters"):
        key, rope = "rope_parameters", dict(hf["rope_parameters"])
    else:
        key, rope = "rope_scaling", dict(hf.get("rope_scaling") or {})
    type_key = "rope_type" if "rope_type" in rope else "type"
    rope["rope_type"] = rope.get(type_key, "default")
    if hf.get("model_type") == "phi3" and rope["rope_type"] in ("su", "yarn"):  # Phi-3's old names, as transformers
        rope["rope_type"] = "longrope"
    rope.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    if rope["rope_type"] not in ROPE_TYPES:
        raise ValueError(f"config.json {key}[{type_key!r}]={rope['rope_type']!r} is not supported by jsoft's "
                         f"Llama; valid: {list(ROPE_TYPES)}")
    need = {"default": (), "linear": ("factor",), "dynamic": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
            "longrope": ("short_factor", "long_factor"), "yarn": ("factor",)}[rope["rope_type"]]
    for name in need:
        if name not in rope:
            raise ValueError(f"config.json {key} of rope_type {rope['rope_type']!r} lacks {name!r}")
    return rope


def rope_fields(hf: dict, rope: dict, rotary_dims: int) -> dict:
    """The Config fields of a RoPE dict from `rope_from_hf`, for a stack that rotates `rotary_dims` of each head."""
    for name in ("short_factor", "long_factor"):
        if name in rope and len(rope[name]) != rotary_dims // 2:
            raise ValueError(f"config.json rope_parameters[{name!r}] has {len(rope[name])} entries; LongRoPE "
                             f"needs one per rotated frequency: {rotary_dims // 2}")
    return dict(
        rope_type=rope["rope_type"], rope_theta=float(rope["rope_theta"]), rope_factor=float(rope.get("factor", 1.0)),
        rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
        rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
        rope_original_max_positions=_original_max_positions(hf, rope),
        rope_short_factor=tuple(map(float, rope.get("short_factor", ()))),
        rope_long_factor=tuple(map(float, rope.get("long_factor", ()))),
        rope_beta_fast=float(rope.get("beta_fast") or 32.0), rope_beta_slow=float(rope.get("beta_slow") or 1.0),
        rope_truncate=bool(rope.get("truncate", True)), rope_attention_factor=_rope_attention_factor(hf, rope))


def _rope_attention_factor(hf: dict, rope: dict) -> float:
    """LongRoPE's and YaRN's scale on cos and sin, as transformers computes it: `attention_factor` when given;
    else, with `factor` (LongRoPE: default max_position_embeddings over the original length), LongRoPE's
    sqrt(1 + ln(factor) / ln(original length)) and YaRN's 0.1 ln(factor) + 1 (DeepSeek's `mscale` /
    `mscale_all_dim`: the ratio of two such terms)."""
    if rope["rope_type"] not in ("longrope", "yarn"):
        return 1.0
    if rope.get("attention_factor") is not None:
        return float(rope["attention_factor"])
    original = _original_max_positions(hf, rope)
    if rope["rope_type"] == "yarn":
        factor = float(rope["factor"])
        mscale = lambda m: 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0
        if rope.get("mscale") and rope.get("mscale_all_dim"):
            return mscale(rope["mscale"]) / mscale(rope["mscale_all_dim"])
        return mscale(1.0)
    factor = rope.get("factor") or hf["max_position_embeddings"] / original
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


def _original_max_positions(hf: dict, rope: dict) -> int:
    """The pretraining length that llama3, LongRoPE and YaRN scale from (transformers: the rope dict's, else the
    top-level `original_max_position_embeddings` Phi-3 saves, else `max_position_embeddings`)."""
    return int(rope.get("original_max_position_embeddings") or hf.get("original_max_position_embeddings")
               or hf.get("max_position_embeddings", 2048))


def _rope_powers(c: Config) -> np.ndarray:
    """`rope_theta ** (2i / rope_dim)` `[K/2]` in fp32, as torch computes it (the default frequencies' inverses)."""
    f32 = np.float32
    return f32(c.rope_theta) ** (np.arange(0, c.rope_dim, 2).astype(f32) / f32(c.rope_dim))


def rope_inv_freq(c: Config) -> np.ndarray:
    """Inverse frequencies `[K/2]` as transformers computes them, in fp32 like torch so rotations
    match to the last bit that matters."""
    f32 = np.float32
    inv = f32(1.0) / _rope_powers(c)
    if c.rope_type == "linear":
        inv = inv / f32(c.rope_factor)
    elif c.rope_type == "llama3":  # Llama 3.1: slow down low frequencies, interpolate in between
        factor, lo, hi = f32(c.rope_factor), f32(c.rope_low_freq_factor), f32(c.rope_high_freq_factor)
        old = f32(c.rope_original_max_positions)
        wavelen = f32(2 * math.pi) / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        inv = np.where(medium, smoothed, scaled)
    elif c.rope_type == "yarn":  # interpolate low frequencies, keep high ones, ramp linearly in between
        dim, base, original = c.rope_dim, c.rope_theta, c.rope_original_max_positions
        correction = lambda rotations: dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))
        low, high = correction(c.rope_beta_fast), correction(c.rope_beta_slow)
        if c.rope_truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        ramp = np.clip((np.arange(dim // 2, dtype=f32) - f32(low)) / f32(high - low if high != low else 0.001),
                       0, 1).astype(f32)
        keep = f32(1) - ramp
        inv = (f32(1.0) / (f32(c.rope_factor) * _rope_powers(c))) * (f32(1) - keep) + inv * keep
    return inv.astype(f32)


def longrope_inv_freq(c: Config, positions_BxT: jax.Array) -> jax.Array:
    """LongRoPE (Phi-3): the default frequencies divided by the short factors, or by the long ones once the
    positions pass the original length (transformers: `max(position_ids) + 1 > original_max_position_embeddings`)."""
    f32 = np.float32
    short, long = (f32(1.0) / (np.asarray(factors, f32) * _rope_powers(c)) for factors in (c.rope_short_factor,
                                                                                           c.rope_long_factor))
    return jnp.where(jnp.max(positions_BxT) + 1 > c.rope_original_max_positions, long, short)


def dynamic_inv_freq(c: Config, positions_BxT: jax.Array) -> jax.Array:
    """Dynamic NTK scaling, as transformers applies it to one forward: past max_position_embeddings the
    base grows with the sequence, `seq_len = max(position_ids) + 1`; within it, the default frequencies."""
    f32, dim = jnp.float32, c.rope_dim
    length = jnp.maximum(jnp.max(positions_BxT) + 1, c.max_positions).astype(f32)
    base = f32(c.rope_theta) * ((f32(c.rope_factor) * length / f32(c.max_positions)) - f32(c.rope_factor - 1)) ** (
        f32(dim) / f32(dim - 2))
    return f32(1.0) / (base ** (jnp.arange(0, dim, 2, dtype=f32) / f32(dim)))


def rope_cos_sin(c: Config, positions_BxT: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """`cos, sin [B, T, K]` (frequencies repeated twice, HF's rotate_half layout)."""
    if c.rope_type == "dynamic":
        inv = dynamic_inv_freq(c, positions_BxT)
    elif c.rope_type == "longrope":
        inv = longrope_inv_freq(c, positions_BxT)
    else:
        inv = jnp.asarray(rope_inv_freq(c))
    freqs = positions_BxT[..., None].astype(jnp.float32) * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    if c.rope_attention_factor != 1.0:
        cos, sin = cos * c.rope_attention_factor, sin * c.rope_attention_factor
    return cos.astype(dtype), sin.astype(dtype)


def rope_stack_inputs(c: Config, embed_tokens: nnx.Embed, input_ids, attention_mask, position_ids, inputs_embeds,
                      prefix_kv, cache: KVCache | None, dtype) -> tuple[jax.Array, dict, jax.Array]:
    """What a RoPE decoder stack (Llama, GPT-NeoX, Phi) starts from: the input embeddings `[B, T, D]` in `dtype`
    (looked up unless given), RoPE's `{"global": (cos, sin)}` at the positions (default: after the prefix and the
    cache), with Gemma 3's sliding layers' `"local"` one too and the `"positions"` themselves, and the causal mask
    over the input or the cache's slots."""
    if inputs_embeds is None:
        inputs_embeds = embed_tokens(input_ids)
    B, T = inputs_embeds.shape[:2]
    if position_ids is None:
        position_ids = default_positions(B, T, prefix_kv, cache, c)
    S = T if cache is None else cache.slots
    mask = attention_mask_4d(attention_mask, T, S, causal=True, q_offset=0 if cache is None else cache.index)
    rope = {"global": rope_cos_sin(c, position_ids, dtype), "positions": position_ids}
    if c.local_rope_theta is not None:
        local = dataclasses.replace(c, rope_type="default", rope_theta=c.local_rope_theta)
        rope["local"] = rope_cos_sin(local, position_ids, dtype)
    return inputs_embeds.astype(dtype), rope, mask


def apply_rope(x_BxTxNxK: jax.Array, cos_BxTxK: jax.Array, sin_BxTxK: jax.Array,
               interleaved: bool = False) -> jax.Array:
    """Rotates the leading `cos.shape[-1]` dims of each head (all, or GPT-NeoX's partial rotary) and passes the rest.
    Frequency i turns dims (i, i + r/2) (rotate_half), or with `interleaved` dims (2i, 2i + 1) (GPT-J's
    rotate_every_two); `cos`, `sin` hold each frequency twice either way (`rope_cos_sin`)."""
    r = cos_BxTxK.shape[-1]
    if r < x_BxTxNxK.shape[-1]:
        rotated = apply_rope(x_BxTxNxK[..., :r], cos_BxTxK, sin_BxTxK, interleaved)
        return jnp.concatenate([rotated, x_BxTxNxK[..., r:]], axis=-1)
    if interleaved:
        cos, sin = cos_BxTxK[:, :, None, : r // 2], sin_BxTxK[:, :, None, : r // 2]
        even, odd = x_BxTxNxK[..., ::2], x_BxTxNxK[..., 1::2]
        return jnp.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1).reshape(x_BxTxNxK.shape)
    x1, x2 = jnp.split(x_BxTxNxK, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x_BxTxNxK * cos_BxTxK[:, :, None] + rotated * sin_BxTxK[:, :, None]


class Attention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        d, q_width, kv_width = c.hidden_size, c.num_heads * c.head_dim, c.kv_width
        if c.fused_qkv:
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
        q, k, v = self.project(x)
        q, k = self.norm_heads(q, k)
        if not self.c.is_nope(layer):
            interleaved = self.c.rope_interleaved
            q, k = apply_rope(q, *cos_sin, interleaved=interleaved), apply_rope(k, *cos_sin, interleaved=interleaved)
            q, k = self.norm_rotated(q, k)
        # Prefix keys join after RoPE, unrotated: HF treats them as an already-filled cache.
        k, v, mask, new_cache = self_attention_kv(k, v, mask, layer=layer, cache=cache,
                                                  prefix_kv=prefix_kv, prefix_mask=prefix_mask)
        first_query = query_slot(mask, x.shape[1], cache)
        if sliding and self.c.sliding_window is not None:
            mask = sliding_window(mask, self.c.sliding_window, first_query)
        if self.c.is_chunked(layer):
            mask = chunked(mask, self.c.chunk_size, first_query)
        if self.c.temperature_floor is not None and self.c.is_nope(layer):
            q = self.tempered(q, rope["positions"])
        scale = self.c.head_dim ** -0.5 if self.c.query_scale is None else self.c.query_scale
        out = dot_product_attention(q, k, v, mask, scale=scale, softcap=self.c.attn_softcap, dropout=drop,
                                    dropout_rate=self.c.attn_dropout,
                                    sinks=self.sinks[...] if self.c.attention_sinks else None)
        return self.o_proj(merge_heads(out)), new_cache

    def tempered(self, q, positions_BxT):
        """Llama 4's NoPE queries `[B, T, N, K]` times 1 + scale * log1p(floor((position + 1) / floor)).
        transformers counts the query's slot (`arange + past`): the same position wherever a row's tokens sit
        where transformers would put them, and in a mixed batch or left-padded decoding the position the row has
        alone."""
        pos = positions_BxT[:, :, None, None].astype(jnp.float32)
        scale = jnp.log1p(jnp.floor((pos + 1.0) / self.c.temperature_floor)) * self.c.temperature_scale + 1.0
        return (q * scale).astype(q.dtype)

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
        """Queries `[B, T, N, K]`, keys and values `[B, T, G, K]`."""
        c = self.c
        if c.fused_qkv:
            q_width = c.num_heads * c.head_dim
            q, k, v = jnp.split(self.qkv_proj(x), [q_width, q_width + c.kv_width], axis=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if c.qk_norm == "width":
            q, k = self.q_norm(q), self.k_norm(k)
        if c.clip_qkv is not None:
            q, k, v = (jnp.clip(t, -c.clip_qkv, c.clip_qkv) for t in (q, k, v))
        return split_heads(q, c.num_heads), split_heads(k, c.num_kv_heads), split_heads(v, c.num_kv_heads)


def l2_norm(x, eps: float):
    """Llama 4's query / key norm: RMS norm without a weight, in fp32."""
    return ops.rms_norm(x, jnp.ones((), jnp.float32), eps).astype(x.dtype)


class LatentAttention(nnx.Module):
    """DeepSeek-V3's multi-head latent attention (transformers' DeepseekV3Attention). Keys and values come from one
    `kv_lora_rank`-wide latent (`kv_a_proj_with_mqa`, normed, then `kv_b_proj`) plus `rotary_dim` rotated key dims
    every head shares; queries from `q_proj`, or a `q_lora_rank` latent (`q_a_proj`, normed, `q_b_proj`). A head's
    query / key is its `qk_nope_head_dim` unrotated dims then the rotated ones. Queries / keys and values are
    zero-padded to `head_dim`, the wider of the two, so the cache and attention hold one width: zero query / key
    dims add nothing to a score, and zero value dims are dropped from the output."""

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
        B, T, _ = x.shape
        nope, N = c.qk_nope_head_dim, c.num_heads
        q = self.q_proj(x) if c.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = split_heads(q, N)
        latent, k_rot = jnp.split(self.kv_a_proj_with_mqa(x), [c.kv_lora_rank], axis=-1)
        kv = split_heads(self.kv_b_proj(self.kv_a_layernorm(latent)), N)
        rotate = lambda t: apply_rope(t, *rope["global"], interleaved=c.rope_interleaved)
        q = jnp.concatenate([q[..., :nope], rotate(q[..., nope:])], axis=-1)
        k_rot = jnp.broadcast_to(rotate(k_rot[:, :, None]), (B, T, N, c.rope_dim))
        k, v = jnp.concatenate([kv[..., :nope], k_rot], axis=-1), kv[..., nope:]
        q, k, v = (jnp.pad(t, ((0, 0),) * 3 + ((0, c.head_dim - t.shape[-1]),)) for t in (q, k, v))
        k, v, mask, new_cache = self_attention_kv(k, v, mask, layer=layer, cache=cache, prefix_kv=prefix_kv,
                                                  prefix_mask=prefix_mask)
        out = dot_product_attention(q, k, v, mask, scale=c.query_scale, dropout=drop, dropout_rate=c.attn_dropout)
        return self.o_proj(merge_heads(out[..., :c.v_head_dim])), new_cache


LATENT_NORM_EPS = 1e-6  # DeepseekV3RMSNorm's default, which its latent norms keep whatever config.json says


class MLP(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.act = activation(c.activation)
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
            return self.down_proj(self.act(self.up_proj(x)))
        gate, up = jnp.split(self.gate_up_proj(x), 2, axis=-1) if self.fused else (self.gate_proj(x), self.up_proj(x))
        return self.down_proj(self.act(gate) * up)


# each norm placement's RMS norms by where they sit, under their checkpoint names
NORM_NAMES = {
    "pre": {"attention_in": "input_layernorm", "mlp_in": "post_attention_layernorm"},
    "sandwich": {"attention_in": "input_layernorm", "attention_out": "post_attention_layernorm",
                 "mlp_in": "pre_feedforward_layernorm", "mlp_out": "post_feedforward_layernorm"},
    "post": {"attention_out": "post_attention_layernorm", "mlp_out": "post_feedforward_layernorm"},
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


def stack_norm(c: Config, p: Precision) -> nnx.Module:
    """A layer's (or the final) norm over the hidden size."""
    return WeightlessLayerNorm(p) if c.weightless_norms else RMSNorm(c.hidden_size, c.rms_norm_eps, p, c.norm_offset)


def feed_forward_block(c: Config, p: Precision, rngs: nnx.Rngs, index: int) -> nnx.Module:
    """Layer `index`'s MLP, or its mixture of experts (`moe_kind`) where `moe_layers` marks it sparse."""
    if not (c.moe_layers and c.moe_layers[index]):
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
        return moe.GroupLimitedMoE(d, f, E, k, c.moe_groups, c.moe_topk_groups, c.moe_kind.removeprefix("grouped_"),
                                   c.norm_topk_prob, c.routed_scaling_factor, names, c.activation, p, rngs,
                                   shared_experts=shared, statics=c.model_type == "ernie4_5_moe")
    return moe.SparseMoE(d, f, E, k, c.norm_topk_prob, names, c.activation, p, rngs, shared_expert=shared)


class DecoderLayer(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs, index: int):
        self.self_attn = LatentAttention(c, p, rngs) if c.kv_lora_rank else Attention(c, p, rngs)
        # the feed-forward block, under its checkpoint name: Mixtral's sparse ones are `block_sparse_moe`
        self.ffn_name = ("block_sparse_moe" if c.model_type in ("mixtral", "granitemoe", "minimax_m2")
                         else "feed_forward" if c.model_type == "llama4_text" else "mlp")
        setattr(self, self.ffn_name, feed_forward_block(c, p, rngs, index))
        self.resid_dropout, self.residual_multiplier = c.resid_dropout, c.residual_multiplier
        self.norm_names = NORM_NAMES[c.norm_placement]
        for name in self.norm_names.values():
            setattr(self, name, stack_norm(c, p))

    def __call__(self, x, mask, rope, **kw):
        drop = kw["drop"]
        a, new_cache = self.self_attn(self.norm("attention_in", x), mask, rope, **kw)
        x = x + self.residual(drop(self.norm("attention_out", a), self.resid_dropout))
        h = self.feed_forward(self.norm("mlp_in", x))
        return x + self.residual(drop(self.norm("mlp_out", h), self.resid_dropout)), new_cache

    def norm(self, where: str, x):
        """The layer's norm at `where` (attention_in / _out, mlp_in / _out) on x, or x where it has none."""
        name = self.norm_names.get(where)
        return x if name is None else getattr(self, name)(x)

    def feed_forward(self, x):
        return getattr(self, self.ffn_name)(x)

    def residual(self, h):
        return h if self.residual_multiplier == 1.0 else h * self.residual_multiplier


class LlamaModel(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.dtype = p.dtype
        self.embed_tokens = embed(c.vocab_size, c.hidden_size, p, rngs=rngs, scale=c.embed_scale)
        self.layers = nnx.List([DecoderLayer(c, p, rngs, i) for i in range(c.num_layers)])
        self.norm = stack_norm(c, p)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                 prefix_kv=None, prefix_mask=None, cache: KVCache | None = None, drop=None):
        drop = drop or DropoutRng(None)
        x, rope, mask = rope_stack_inputs(self.c, self.embed_tokens, input_ids, attention_mask, position_ids,
                                          inputs_embeds, prefix_kv, cache, self.dtype)
        if self.c.embedding_multiplier != 1.0:
            x = x * jnp.asarray(self.c.embedding_multiplier, x.dtype)
        x = drop(x, self.c.embd_dropout)
        x, cache = run_layers(self.layers, x, mask, rope, cache=cache, prefix_kv=prefix_kv,
                              prefix_mask=prefix_mask, drop=drop)
        return self.norm(x), cache


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
