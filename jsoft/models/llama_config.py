"""What each Llama-like family's config.json says, as `jsoft.models.llama.Config` fields: the families'
fixed choices (`FAMILIES`), their biases, sliding and NoPE layers, mixtures of experts, latent attention and
multipliers, each read as that family's transformers code reads it."""

from __future__ import annotations

import math

from jsoft.models import heads, rotary

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2", "granite",
               "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "smollm3", "olmo3", "ministral", "glm", "glm4", "exaone4",
               "seed_oss", "helium", "arcee", "ernie4_5", "olmo", "gpt_oss", "granitemoe", "glm4_moe", "dots1",
               "deepseek_v3", "glm4_moe_lite", "deepseek_v2", "minimax_m2", "exaone_moe", "llama4_text", "ernie4_5_moe",
               "hunyuan_v1_dense", "hunyuan_v1_moe", "ministral3", "internlm3", "iquestcoder", "vaultgemma", "cwm",
               "apertus", "mistral4", "youtu", "minicpm3", "jais2",
               "nanochat", "qwen3_next", "qwen3_5_text", "qwen3_5_moe_text", "granitemoeshared", "granitemoehybrid",
               "bamba", "nemotron_h", "mamba2", "mamba", "falcon_mamba", "jamba")


def fields_from_hf(hf: dict) -> dict:
    """`llama.Config`'s fields from a Llama-like config.json."""
    model_type = hf.get("model_type", "llama")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r} is not Llama-like; jsoft.models.llama reads {MODEL_TYPES}")
    if model_type in SINGLE_BLOCKS:
        hf = _nemotron_h_as_llama(_mamba2_stack_as_nemotron_h(hf) if model_type == "mamba2"
                                  else _mamba_stack_as_nemotron_h(hf) if model_type in MAMBA_STACKS else hf)
    d, h = hf["hidden_size"], hf["num_attention_heads"]
    rope, local_rope, sliding = rotary.from_hf(hf), _local_rope_theta(hf), sliding_layers(hf)
    gemma = model_type in ("gemma", *GEMMA2S, "gemma3_text")
    gemma2_style = model_type in (*GEMMA2S, "gemma3_text")  # query_pre_attn_scalar, the final cap
    if model_type == "gpt_oss" and not (hf.get("rope_parameters") or hf.get("rope_scaling")):
        hf = {**hf, "rope_parameters": GPT_OSS_ROPE}  # GptOssConfig's default: YaRN
        rope = rotary.from_hf(hf)
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
    half_by_default = 0.5 if model_type in GLMS else 1.0
    rotary_fraction = float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", half_by_default)))
    if model_type == "bamba":  # BambaConfig fixes it
        rotary_fraction = 0.5
    if model_type == "minimax_m2" and "partial_rotary_factor" not in rope and hf.get("rotary_dim"):
        rotary_fraction = hf["rotary_dim"] / head_dim  # its released checkpoints' spelling
    rotary_dims = int(head_dim * rotary_fraction)  # as transformers truncates it
    latent = _latent_attention_fields(hf, rope)
    if latent:  # a head's query / key width; the cache holds latents (llama.Config.cache_layout)
        head_dim, rotary_dims = latent.pop("head_dim"), hf["qk_rope_head_dim"]
    latent_scale = latent.pop("query_scale", None)
    return dict(
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
        rms_norm_eps=hf.get("layer_norm_eps", 1e-5) if model_type == "jais2" else hf.get("rms_norm_eps", 1e-6),
        max_positions=hf.get("max_position_embeddings", 2048),
        **rotary.config_fields(hf, rope, rotary_dims), rotary_dim=None if rotary_dims == head_dim else rotary_dims,
        **_bias_fields(hf),
        sliding_window=(hf.get("sliding_window") or None) if any(sliding) else None, sliding_layers=sliding,
        local_rope_theta=local_rope, nope_layers=nope_layers(hf),
        attn_dropout=float(hf.get("attention_dropout") or 0.0),
        resid_dropout=float(hf.get("resid_pdrop") or hf.get("residual_dropout") or 0.0),
        embd_dropout=float(hf.get("embd_pdrop") or 0.0),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", model_type in ("ernie4_5_moe", "youtu", "minicpm3"))),
        lm_head_bias=model_type == "ernie4_5_moe" and bool(hf.get("use_bias", False)),
        classifier_dropout=heads.classifier_dropout_rate(hf, "resid_pdrop" if model_type == "phi3"
                                                         else "hidden_dropout"),
        token_cls_bias=bool(hf.get("token_classification_bias", True)),
        embed_scale=d ** 0.5 if gemma else float(hf.get("scale_emb", 12)) if model_type == "minicpm3" else 1.0,
        query_scale=(float(hf.get("query_pre_attn_scalar", 256)) ** -0.5 if gemma2_style
                     else float(hf.get("attention_multiplier", 1.0)) if model_type in GRANITES
                     else latent_scale),
        # transformers' Gemma 3 attention never applies attn_logit_softcapping (its config still has one), nor
        # its multimodal model final_logit_softcapping
        attn_softcap=hf.get("attn_logit_softcapping") if model_type in GEMMA2S else None,
        final_softcap=hf.get("final_logit_softcapping") if (gemma2_style and not hf.get("multimodal_type"))
        or model_type == "nanochat" else None,
        clip_qkv=hf.get("clip_qkv"),
        **family, **(_granite_multipliers(hf) if model_type in GRANITES else {}), **_moe_fields(hf), **latent,
        **(_llama4_fields(hf) if model_type == "llama4_text" else {}),
        **(_minicpm3_multipliers(hf) if model_type == "minicpm3" else {}),
        **(_position_query_scaling(rope, model_type) if model_type in ("ministral3", "mistral4") else {}),
        **(_linear_attention_fields(hf) if model_type in QWEN_HYBRIDS else {}),
        **(_mamba2_fields(hf) if model_type in MAMBA2_HYBRIDS else {}),
        **(_nemotron_h_fields(hf) if model_type in SINGLE_BLOCKS else {}),
        **(_jamba_fields(hf) if model_type == "jamba" else {}),
    )


QWEN_MOES = ("qwen2_moe", "qwen3_moe", "qwen3_next")  # sparse layers: `mlp_only_layers`, `decoder_sparse_step`
QWEN_HYBRIDS = ("qwen3_next", "qwen3_5_text", "qwen3_5_moe_text")  # Gated DeltaNet beside attention
MAMBA2_HYBRIDS = ("granitemoehybrid", "bamba")  # Mamba-2 beside attention


# what each family fixes in its modelling code rather than in config.json (the rest: Config's defaults)
FAMILIES: dict[str, dict] = {
    "gemma": dict(norm_offset=1.0),
    "gemma2": dict(norm_offset=1.0, norm_placement="sandwich"),
    "vaultgemma": dict(norm_offset=1.0, norm_placement="vaultgemma"),
    "apertus": dict(qk_norm="head", gated_mlp=False, norm_placement="apertus"),  # and xIELU: llama.XIELU
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
    "olmo": dict(norm_type="weightless"),
    "jais2": dict(norm_type="layer", gated_mlp=False),  # LayerNorms (eps: layer_norm_eps), biases by default
    # weightless RMS norms, on the input embeddings too, on queries and keys after RoPE turned the other way; fc1 / fc2
    # MLPs (jsoft.models.nanochat), Gemma 2's final cap
    "nanochat": dict(norm_type="weightless_rms", embedding_norm=True, qk_l2_norm=True, rope_reversed=True,
                     gated_mlp=False),
    "gpt_oss": dict(attention_sinks=True, moe_kind="clamped_swiglu"),
    # Mamba-2 (`mamba`) or attention, then `feed_forward`
    "bamba": dict(norm_placement="bamba", ffn_name="feed_forward", final_norm_name="final_layernorm"),
    # one block a layer (`mixer`), after its `norm`
    **dict.fromkeys(("nemotron_h", "mamba2", "mamba", "falcon_mamba"), dict(norm_placement="single", gated_mlp=False,
                                                                            final_norm_name="norm_f")),
    "mixtral": dict(ffn_name="block_sparse_moe"),
    # Mamba or attention, then `feed_forward` (an MLP or experts), Bamba's names
    "jamba": dict(norm_placement="bamba", ffn_name="feed_forward", final_norm_name="final_layernorm"),
    **dict.fromkeys(("granitemoe", "granitemoeshared", "granitemoehybrid"), dict(moe_kind="granite",
                                                                                 ffn_name="block_sparse_moe")),
    "glm4_moe": dict(moe_kind="grouped_sigmoid"),  # use_qk_norm: qk_norm="head"
    "dots1": dict(qk_norm="head", moe_kind="grouped_sigmoid"),
    "deepseek_v3": dict(moe_kind="grouped_sigmoid"),
    "glm4_moe_lite": dict(moe_kind="grouped_sigmoid"),  # DeepSeek-V3's latent attention, GLM-4.5's router
    "deepseek_v2": dict(moe_kind="grouped_softmax", moe_group_rank=1),
    # DeepSeek-V3's latent attention, softmax scores in groups ranked by their two best, experts stored stacked
    "mistral4": dict(moe_kind="grouped_softmax", stored_experts=True),
    # Gated DeltaNet layers beside gated attention with query / key norms; norms scale by 1 + weight
    **dict.fromkeys(QWEN_HYBRIDS, dict(qk_norm="head", norm_offset=1.0, attention_output_gate=True)),
    # one group: the corrected top k, renormalised
    "minimax_m2": dict(qk_norm="width", moe_kind="grouped_sigmoid", ffn_name="block_sparse_moe"),
    "exaone_moe": dict(qk_norm="head", moe_kind="grouped_sigmoid"),  # EXAONE 4's attention in pre-norm layers
    "llama4_text": dict(rope_interleaved=True, moe_kind="llama4", ffn_name="feed_forward"),
    # one group, moe_statics' correction
    "ernie4_5_moe": dict(rope_interleaved=True, moe_kind="grouped_softmax", moe_group_rank=1),
    "hunyuan_v1_dense": dict(qk_norm="rotated_head"),
    "hunyuan_v1_moe": dict(qk_norm="rotated_head", moe_kind="hunyuan"),
}
HUNYUANS = ("hunyuan_v1_dense", "hunyuan_v1_moe")
EXAONES = ("exaone4", "exaone_moe")  # sliding_window_pattern; with a sliding window, full layers without RoPE
GEMMA2S = ("gemma2", "vaultgemma")  # VaultGemma: Gemma 2 without the norms on attention's and the MLP's outputs
GLMS = ("glm", "glm4", "glm4_moe")  # half of each head rotated by default
GRANITE_MOES = ("granitemoe", "granitemoeshared", "granitemoehybrid")  # block_sparse_moe; the last two a shared_mlp
GRANITES = ("granite", *GRANITE_MOES)  # Granite's multipliers (Config.embedding_multiplier ...)
GPT_OSS_ROPE = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                "original_max_position_embeddings": 4096, "rope_theta": 150000.0}


def _bias_fields(hf: dict) -> dict:
    """Which projections have biases, as each family's code reads config.json: `attention_bias` on the query / key /
    value and output projections (Qwen2: `qkv_bias`, default on, none on the output; GLM: on by default (GLM-4.5:
    off), none on the output; Helium: none on the output; Seed-OSS: `attention_out_bias` for the output; GPT-OSS,
    Jais 2: on by default), `mlp_bias` (Jais 2: on by default; ERNIE 4.5: one `use_bias` for every projection;
    InternLM3: `qkv_bias`, `bias`)."""
    model_type = hf.get("model_type", "llama")
    if model_type in ("ernie4_5", "ernie4_5_moe"):
        bias = bool(hf.get("use_bias", False))
        return dict(attention_bias=bias, attention_out_bias=bias, mlp_bias=bias)
    if model_type == "internlm3":  # its released config.json says `qkv_bias` and `bias` (InternLM3Config's aliases)
        qkv, mlp = (bool(hf[ours] if ours in hf else hf.get(theirs, False))
                    for ours, theirs in (("attention_bias", "qkv_bias"), ("mlp_bias", "bias")))
        if qkv != mlp:  # transformers runs it as Llama, one setting for every projection, and refuses this too
            raise ValueError(f"config.json of an internlm3 model: qkv_bias / attention_bias ({qkv}) must equal bias "
                             f"/ mlp_bias ({mlp}); transformers' Llama implementation of it has one bias setting")
        return dict(attention_bias=qkv, attention_out_bias=qkv, mlp_bias=mlp)
    qwen2, glm = model_type in ("qwen2", "qwen2_moe"), model_type in GLMS
    on_by_default = model_type in ("glm", "glm4", "gpt_oss", "jais2")  # unless config.json says otherwise
    qkv = bool(hf.get("qkv_bias", True)) if qwen2 else bool(hf.get("attention_bias", on_by_default))
    if model_type == "seed_oss":
        out = bool(hf.get("attention_out_bias", False))
    else:
        out = qkv and not (qwen2 or glm or model_type == "helium")
    return dict(attention_bias=qkv, attention_out_bias=out, mlp_bias=bool(hf.get("mlp_bias", model_type == "jais2")))


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
    if model_type == "qwen3_5_moe_text":  # every layer sparse, top-k renormalised, a sigmoid-gated shared expert
        return dict(num_experts=hf.get("num_experts", 256), experts_per_token=hf.get("num_experts_per_tok", 8),
                    moe_layers=(True,) * n, moe_intermediate_size=hf.get("moe_intermediate_size", 512),
                    shared_expert_intermediate_size=hf.get("shared_expert_intermediate_size", 512),
                    norm_topk_prob=True)
    if model_type not in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss", *GRANITE_MOES, "qwen3_next"):
        return {}
    experts = hf.get("num_local_experts") or hf.get("num_experts") or 0
    if model_type in QWEN_MOES:
        dense_layers, step = set(hf.get("mlp_only_layers") or []), hf.get("decoder_sparse_step", 1)
        sparse = tuple(i not in dense_layers and experts > 0 and (i + 1) % step == 0 for i in range(n))
    else:
        sparse = (experts > 0,) * n
    if model_type in GRANITE_MOES:  # GraniteMoeShared / Granite 4: a shared MLP too (Granite 4: maybe no experts)
        shared = hf.get("shared_intermediate_size", 1024 if model_type == "granitemoehybrid" else 0)
        if model_type == "granitemoehybrid" and not shared:
            raise ValueError("config.json shared_intermediate_size=0: a granitemoehybrid layer always runs its "
                             "shared_mlp; give its width")
        return dict(num_experts=experts, experts_per_token=hf.get("num_experts_per_tok", 2), moe_layers=sparse,
                    moe_intermediate_size=hf["intermediate_size"], shared_mlp_intermediate_size=shared)
    if model_type == "gpt_oss":
        return dict(num_experts=experts or 128, experts_per_token=hf.get("num_experts_per_tok", 4),
                    moe_layers=(True,) * n, moe_intermediate_size=hf["intermediate_size"],
                    swiglu_alpha=float(hf.get("swiglu_alpha", 1.702)), swiglu_limit=float(hf.get("swiglu_limit", 7.0)))
    return dict(num_experts=experts, experts_per_token=hf.get("num_experts_per_tok", 2), moe_layers=sparse,
                moe_intermediate_size=hf.get("moe_intermediate_size") if model_type in QWEN_MOES
                else hf["intermediate_size"],
                shared_expert_intermediate_size=hf.get("shared_expert_intermediate_size") or 0,
                norm_topk_prob=True if model_type == "mixtral" else bool(hf.get("norm_topk_prob", False)))


def _linear_attention_fields(hf: dict) -> dict:
    """Qwen3-Next's and Qwen3.5's Gated DeltaNet layers: `layer_types`' "linear_attention" ones (default: all but
    every `full_attention_interval`-th), their heads and convolution."""
    n = hf["num_hidden_layers"]
    interval = hf.get("full_attention_interval", 4)
    kinds = hf.get("layer_types") or ["full_attention" if (i + 1) % interval == 0 else "linear_attention"
                                      for i in range(n)]
    unknown = sorted(set(kinds) - {"full_attention", "linear_attention"})
    if unknown:
        raise ValueError(f"config.json layer_types has {unknown}; {hf.get('model_type')} layers are "
                         "'full_attention' or 'linear_attention'")
    key_heads, value_heads = hf.get("linear_num_key_heads", 16), hf.get("linear_num_value_heads", 32)
    if value_heads % key_heads:
        raise ValueError(f"config.json linear_num_value_heads={value_heads} is not a multiple of "
                         f"linear_num_key_heads={key_heads}")
    return dict(linear_layers=tuple(k == "linear_attention" for k in kinds), linear_key_heads=key_heads,
                linear_value_heads=value_heads, linear_key_head_dim=hf.get("linear_key_head_dim", 128),
                linear_value_head_dim=hf.get("linear_value_head_dim", 128),
                linear_conv_kernel=hf.get("linear_conv_kernel_dim", 4),
                linear_fused_projections=hf.get("model_type") == "qwen3_next")


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
    "mistral4": dict(n_routed_experts=128, num_experts_per_tok=4, first_k_dense_replace=0, n_shared_experts=1,
                     norm_topk_prob=True, n_group=1, topk_group=1, routed_scaling_factor=1.0),
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
    """Multi-head latent attention's fields (DeepSeek-V3; {} for other attention), with a head's query / key width
    (`head_dim`) and the scores' scale: `(qk_nope_head_dim + qk_rope_head_dim) ** -0.5`, times YaRN's
    mscale(factor, mscale_all_dim) squared under any RoPE scaling that sets `mscale_all_dim` (transformers'
    yarn_apply_mscale)."""
    if not hf.get("kv_lora_rank"):
        return {}
    nope, rot = hf["qk_nope_head_dim"], hf["qk_rope_head_dim"]
    # MiniCPM3's default value width: hidden_size / num_attention_heads
    v = hf.get("v_head_dim") or (hf["hidden_size"] // hf["num_attention_heads"] if hf["model_type"] == "minicpm3"
                                 else nope)
    scale = (nope + rot) ** -0.5
    if rope["rope_type"] != "default" and rope.get("mscale_all_dim"):
        factor = float(rope["factor"])
        mscale = 1.0 if factor <= 1 else 0.1 * float(rope["mscale_all_dim"]) * math.log(factor) + 1.0
        scale *= mscale * mscale
    return dict(kv_lora_rank=hf["kv_lora_rank"], q_lora_rank=hf.get("q_lora_rank"), qk_nope_head_dim=nope,
                v_head_dim=v, head_dim=nope + rot, query_scale=scale,
                # DeepSeek-V2 always rotates pairs (2i, 2i + 1), as complex numbers; MiniCPM3 never (rotate_half)
                rope_interleaved=hf["model_type"] == "deepseek_v2" or (hf["model_type"] != "minicpm3"
                                                                      and bool(hf.get("rope_interleave", True))))


def _llama4_fields(hf: dict) -> dict:
    """Llama 4's fields as transformers reads config.json: sparse layers `moe_layers` (default every
    `interleave_moe_layer_step`-th), their experts and shared expert `intermediate_size` wide, dense layers
    `intermediate_size_mlp`; chunked layers by `layer_types` (default: the RoPE layers)."""
    n, step = hf["num_hidden_layers"], hf.get("interleave_moe_layer_step", 1)
    sparse_at = hf.get("moe_layers")
    sparse_at = set(range(step - 1, n, step) if sparse_at is None else sparse_at)
    kinds = hf.get("layer_types") or ["full_attention" if nope else "chunked_attention"
                                      for nope in nope_layers(hf) or (False,) * n]
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


def _position_query_scaling(rope: dict, model_type: str) -> dict:
    """Ministral 3's and Mistral 4's queries, every layer's, times 1 + beta * log1p(floor(position / original
    length)): the rope dict's `llama_4_scaling_beta` and `original_max_position_embeddings`, which transformers
    requires."""
    for key in ("llama_4_scaling_beta", "original_max_position_embeddings"):
        if rope.get(key) is None:
            raise ValueError(f"config.json rope_parameters of a {model_type} model needs {key!r} (it scales every "
                             "query by its position)")
    return dict(temperature_floor=float(rope["original_max_position_embeddings"]),
                temperature_scale=float(rope["llama_4_scaling_beta"]), temperature_offset=0.0,
                temperature_nope_only=False)


def _minicpm3_multipliers(hf: dict) -> dict:
    """MiniCPM3's residual branches times `scale_depth / sqrt(num_hidden_layers)` and its LM head's input divided by
    `hidden_size / dim_model_base` (its token embeddings times `scale_emb`: Config.embed_scale)."""
    n, d = hf["num_hidden_layers"], hf["hidden_size"]
    depth = hf.get("scale_depth", 1.4)
    return dict(residual_multiplier=1.0 if depth is None else float(depth) / math.sqrt(n),
                logits_scaling=d / float(hf.get("dim_model_base", 256) or d))


def _granite_multipliers(hf: dict) -> dict:
    """Granite's scalars on the embeddings, each residual branch and the LM logits (its attention_multiplier is
    the score scale, `query_scale`)."""
    return dict(embedding_multiplier=float(hf.get("embedding_multiplier", 1.0)),
                residual_multiplier=float(hf.get("residual_multiplier", 1.0)),
                logits_scaling=float(hf.get("logits_scaling", 1.0)))


def sliding_layers(hf: dict) -> tuple[bool, ...]:
    """Which layers are sliding-window ones, as transformers reads config.json: every Mistral, Ministral 3, Phi-3 and
    Mixtral layer when `sliding_window` is set (Qwen3-MoE: and `use_sliding_window`; Ministral: without `layer_types`);
    otherwise those `layer_types` marks "sliding_attention", or, in configs without it, the defaults of transformers'
    configs (Qwen2 / Qwen3: layers from `max_window_layers` on when `use_sliding_window`; Qwen2-MoE: every other layer
    from the first, below `max_window_layers`; Gemma 2 and VaultGemma: every other layer from the first; Gemma 3, Cohere
    2, OLMo 3 and EXAONE 4: all but each `sliding_window_pattern`-th (OLMo 3: 4th); SmolLM3: its NoPE layers when
    `use_sliding_window`; GPT-OSS: every other layer from the first; dots.llm1: layers from `max_window_layers` on when
    `sliding_window` is set; CWM: all but every 4th from the first). () where none is."""
    model_type, n, window = hf.get("model_type"), hf["num_hidden_layers"], hf.get("sliding_window")
    every_layer = model_type in ("mistral", "phi3", "mixtral", "qwen3_moe", "ministral3")
    if every_layer or (model_type == "ministral" and "layer_types" not in hf):
        on = bool(window) and (model_type != "qwen3_moe" or bool(hf.get("use_sliding_window")))
        return (True,) * n if on else ()
    if model_type not in ("qwen2", "qwen3", "qwen2_moe", *GEMMA2S, "gemma3_text", "smollm3", "cohere2", "olmo3",
                          "ministral", *EXAONES, "gpt_oss", "dots1", "cwm") or (model_type in EXAONES and not window):
        return ()
    kinds = hf.get("layer_types")
    if not kinds and model_type == "smollm3":  # its NoPE layers slide, when any does
        on = bool(hf.get("use_sliding_window")) and bool(window)
        kinds = ["sliding_attention" if on and nope else "full_attention" for nope in nope_layers(hf) or [False] * n]
    if not kinds:
        on = bool(hf.get("use_sliding_window")) and bool(window)
        windowed = hf.get("max_window_layers", 28)
        sliding = {"qwen2": lambda i: on and i >= windowed, "qwen3": lambda i: on and i >= windowed,
                   "qwen2_moe": lambda i: on and i % 2 == 0 and i < windowed, "gemma2": lambda i: i % 2 == 0,
                   "vaultgemma": lambda i: i % 2 == 0,
                   "gemma3_text": lambda i: (i + 1) % hf.get("sliding_window_pattern", 6) != 0,
                   "cohere2": lambda i: (i + 1) % hf.get("sliding_window_pattern", 4) != 0,
                   "olmo3": lambda i: (i + 1) % 4 != 0, "exaone4": lambda i: _exaone4_sliding(hf, i),
                   "exaone_moe": lambda i: _exaone4_sliding(hf, i),
                   "gpt_oss": lambda i: i % 2 == 0,
                   "dots1": lambda i: bool(window) and i >= hf.get("max_window_layers", 62),
                   "cwm": lambda i: bool(window) and i % 4 != 0}[model_type]
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


def nope_layers(hf: dict) -> tuple[bool, ...]:
    """The layers without RoPE: SmolLM3's and Llama 4's `no_rope_layers` zeros (1 where a layer rotates; by default
    every `no_rope_layer_interval`-th layer), EXAONE 4's full-attention layers when it has sliding ones. () where
    none is."""
    if hf.get("model_type") in EXAONES:  # with a sliding_window, its full layers skip RoPE
        nope = tuple(not s for s in sliding_layers(hf) or (False,) * hf["num_hidden_layers"])
        return nope if hf.get("sliding_window") and any(nope) else ()
    if hf.get("model_type") == "granitemoehybrid":  # RoPE only with position_embedding_type "rope"
        return () if hf.get("position_embedding_type") == "rope" else (True,) * hf["num_hidden_layers"]
    if hf.get("model_type") in (*SINGLE_BLOCKS, "jamba"):  # Nemotron-H's and Jamba's attention has no positions
        return (True,) * hf["num_hidden_layers"]
    if hf.get("model_type") not in ("smollm3", "llama4_text"):
        return ()
    n, interval = hf["num_hidden_layers"], hf.get("no_rope_layer_interval", 4)
    rotates = hf.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
    if len(rotates) != n:
        raise ValueError(f"config.json no_rope_layers has {len(rotates)} entries; expected {n} (num_hidden_layers)")
    nope = tuple(not r for r in rotates)
    return nope if any(nope) else ()


def _mamba2_fields(hf: dict) -> dict:
    """Granite 4's and Bamba's layers: Granite's `layer_types` "mamba" / "linear_attention" ones Mamba-2, "attention"
    / "full_attention" ones attention (transformers' default: all Mamba-2); Bamba's attention at
    `attn_layer_indices`. And the Mamba-2 shape in Config's linear-layer fields."""
    n, d = hf["num_hidden_layers"], hf["hidden_size"]
    if hf["model_type"] == "bamba":
        kinds = ["attention" if i in (hf.get("attn_layer_indices") or ()) else "mamba" for i in range(n)]
    else:
        kinds = hf.get("layer_types") or hf.get("layers_block_type") or ["mamba"] * n
    linear, attention = {"mamba", "linear_attention"}, {"attention", "full_attention"}
    if len(kinds) != n or not set(kinds) <= linear | attention:
        raise ValueError(f"config.json layer_types={kinds!r}: expected {n} entries (num_hidden_layers), each "
                         "'mamba' / 'linear_attention' or 'attention' / 'full_attention'")
    heads = hf.get("mamba_n_heads", 128)
    width = hf.get("mamba_expand", 2) * d
    head_dim = hf.get("mamba_d_head", "auto")
    head_dim = width // heads if head_dim in (None, "auto") else head_dim
    if head_dim * heads != width:
        raise ValueError(f"config.json mamba_n_heads={heads} x mamba_d_head={head_dim} must equal mamba_expand x "
                         f"hidden_size={width}")
    low, high = map(_json_float, hf.get("time_step_limit") or (0.0, math.inf))
    return dict(linear_layers=tuple(k in linear for k in kinds),
                **_mamba2_shape(heads, head_dim, hf.get("mamba_n_groups", 1), hf.get("mamba_d_state", 256),
                                hf.get("mamba_d_conv", 4), hf.get("mamba_conv_bias", True),
                                hf.get("mamba_proj_bias", False), (low, high), ("mamba_n_heads", "mamba_n_groups")))


def _mamba2_shape(heads: int, head_dim: int, groups: int, state: int, conv: int, conv_bias: bool, proj_bias: bool,
                  dt_limit: tuple[float, float], keys: tuple[str, str]) -> dict:
    """A Mamba-2 layer's shape in Config's linear-layer fields; an error names config.json's `keys` for the heads and
    the groups."""
    if heads % groups:
        raise ValueError(f"config.json {keys[1]}={groups} must divide {keys[0]}={heads}")
    return dict(linear_kind="mamba2", linear_value_heads=heads, linear_value_head_dim=head_dim,
                linear_key_heads=groups, linear_key_head_dim=state, linear_conv_kernel=conv,
                linear_conv_bias=bool(conv_bias), linear_proj_bias=bool(proj_bias), linear_dt_limit=dt_limit)


MAMBA_STACKS = ("mamba", "falcon_mamba")  # Mamba (-1) layers only
SINGLE_BLOCKS = ("nemotron_h", "mamba2", *MAMBA_STACKS)  # one block a layer (Config.layer_blocks), NVIDIA's names
# Nemotron-H's layer kinds: `layers_block_type` (older names "mamba", "attention"), or `hybrid_override_pattern`
NEMOTRON_H_PATTERN = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
NEMOTRON_H_LEGACY = {"mamba": "linear_attention", "attention": "full_attention"}
# NemotronHConfig's defaults for the keys the other families' defaults differ on
NEMOTRON_H_DEFAULTS = dict(vocab_size=131072, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                           head_dim=128, intermediate_size=21504, max_position_embeddings=4096, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2)


def _mamba2_stack_as_nemotron_h(hf: dict) -> dict:
    """A Mamba-2 stack's config.json (`mamba2`: Mamba-Codestral) as a Nemotron-H one of Mamba-2 layers only, with
    Mamba2Config's defaults (its `num_heads`, `head_dim` and `state_size` are the Mamba-2 layers'); it has no attention,
    whose fields then merely mirror them."""
    heads, head_dim, d = hf.get("num_heads", 128), hf.get("head_dim", 64), hf.get("hidden_size", 4096)
    if heads * head_dim != hf.get("expand", 2) * d:
        raise ValueError(f"config.json num_heads={heads} x head_dim={head_dim} must equal expand x hidden_size="
                         f"{hf.get('expand', 2) * d}")
    return {"vocab_size": 32768, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "n_groups": 8,
            "tie_word_embeddings": False, **hf, "hidden_size": d, "intermediate_size": 0,
            "layers_block_type": ["linear_attention"] * hf.get("num_hidden_layers", 64),
            "mamba_num_heads": heads, "mamba_head_dim": head_dim, "ssm_state_size": hf.get("state_size", 128),
            "mamba_hidden_act": hf.get("hidden_act", "silu"), "num_attention_heads": heads,
            "num_key_value_heads": heads, "head_dim": head_dim}


def _mamba_stack_as_nemotron_h(hf: dict) -> dict:
    """A Mamba or FalconMamba stack's config.json as a Nemotron-H one of recurrent layers only, with MambaConfig's
    defaults (its `intermediate_size`, default expand x hidden_size, is the layers' channels); it has no attention,
    whose fields are then placeholders."""
    d = hf.get("hidden_size", 768)
    return {"vocab_size": 50280, "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": True,
            **hf, "hidden_size": d, "intermediate_size": hf.get("intermediate_size") or hf.get("expand", 2) * d,
            "layers_block_type": ["linear_attention"] * hf.get("num_hidden_layers", 32),
            "mamba_hidden_act": hf.get("hidden_act", "silu"), "num_attention_heads": 1, "num_key_value_heads": 1,
            "head_dim": d}


def _mamba_shape(channels: int, state: int, rank: int | str, hidden: int, conv: int, conv_bias: bool,
                 proj_bias: bool, norm_eps: float | None = None, norm_weights: bool = False) -> dict:
    """A Mamba layer's shape in Config's linear-layer fields (jsoft.models.mamba.Mamba); a step `rank` "auto" is
    ceil(hidden / 16)."""
    return dict(linear_kind="mamba", linear_value_heads=channels, linear_value_head_dim=1, linear_key_heads=0,
                linear_key_head_dim=state, linear_dt_rank=math.ceil(hidden / 16) if rank == "auto" else int(rank),
                linear_conv_kernel=conv, linear_conv_bias=bool(conv_bias), linear_proj_bias=bool(proj_bias),
                linear_bcdt_norm_eps=norm_eps, linear_bcdt_norm_weights=norm_weights)


def _jamba_fields(hf: dict) -> dict:
    """Jamba's layers: attention where i % `attn_layer_period` == `attn_layer_offset`, Mamba elsewhere (its steps, B
    and C RMS-normed with weights); experts (softmax top-k, not renormalised) where i % `expert_layer_period` ==
    `expert_layer_offset` with more than one expert, a gated MLP elsewhere."""
    n, d = hf["num_hidden_layers"], hf["hidden_size"]
    periods = {k: hf.get(k, default) for k, default in (("attn_layer_period", 8), ("attn_layer_offset", 4),
                                                         ("expert_layer_period", 2), ("expert_layer_offset", 1))}
    for kind in ("attn", "expert"):
        if not 0 <= periods[f"{kind}_layer_offset"] < periods[f"{kind}_layer_period"]:
            raise ValueError(f"config.json {kind}_layer_offset={periods[f'{kind}_layer_offset']} must be below "
                             f"{kind}_layer_period={periods[f'{kind}_layer_period']}")
    experts = hf.get("num_experts", hf.get("num_local_experts", 16))
    attention = tuple(i % periods["attn_layer_period"] == periods["attn_layer_offset"] for i in range(n))
    sparse = tuple(experts > 1 and i % periods["expert_layer_period"] == periods["expert_layer_offset"]
                   for i in range(n))
    return dict(linear_layers=tuple(not a for a in attention),
                **_mamba_shape(hf.get("mamba_expand", 2) * d, hf.get("mamba_d_state", 16),
                               hf.get("mamba_dt_rank", "auto"), d, hf.get("mamba_d_conv", 4),
                               hf.get("mamba_conv_bias", True), hf.get("mamba_proj_bias", False),
                               hf.get("rms_norm_eps", 1e-6), norm_weights=True),
                num_experts=experts if any(sparse) else 0, experts_per_token=hf.get("num_experts_per_tok", 2),
                moe_layers=sparse if any(sparse) else (), moe_intermediate_size=hf["intermediate_size"],
                norm_topk_prob=False)


def _nemotron_h_as_llama(hf: dict) -> dict:
    """Nemotron-H's config.json under the keys the other families' say the same things with: its layer count from
    its layer kinds, the MLPs' `mlp_hidden_act`, the norms' `layer_norm_epsilon`; attention never has biases (its
    code ignores `attention_bias`)."""
    pattern = hf.get("hybrid_override_pattern")
    kinds = hf.get("layers_block_type") or hf.get("layer_types")
    if not kinds and pattern:
        if not set(pattern) <= set(NEMOTRON_H_PATTERN):
            raise ValueError(f"config.json hybrid_override_pattern={pattern!r}: each character must be one of "
                             f"{list(NEMOTRON_H_PATTERN)} ({', '.join(NEMOTRON_H_PATTERN.values())})")
        kinds = [NEMOTRON_H_PATTERN[ch] for ch in pattern]
    kinds = [NEMOTRON_H_LEGACY.get(k, k) for k in kinds or ["linear_attention", "moe", "full_attention", "mlp"]]
    if not set(kinds) <= set(NEMOTRON_H_PATTERN.values()):
        raise ValueError(f"config.json layers_block_type={kinds!r}: each entry must be one of "
                         f"{list(NEMOTRON_H_PATTERN.values())}")
    if "num_key_value_heads" in hf and hf["num_key_value_heads"] is None:  # None: one per query head
        hf = {**hf, "num_key_value_heads": hf.get("num_attention_heads", NEMOTRON_H_DEFAULTS["num_attention_heads"])}
    hf = {**NEMOTRON_H_DEFAULTS, **{k: v for k, v in hf.items() if v is not None or k not in NEMOTRON_H_DEFAULTS}}
    return {**hf, "layers_block_type": kinds, "num_hidden_layers": len(kinds),
            "hidden_act": hf.get("mlp_hidden_act", "relu2"), "rms_norm_eps": hf.get("layer_norm_epsilon", 1e-5),
            "attention_bias": False}


def _nemotron_h_fields(hf: dict) -> dict:
    """Nemotron-H's layers, each one block (Config.layer_blocks): Mamba-2 ("linear_attention"; its chunked scan's
    steps clamped below at `time_step_min`, as transformers' NemotronHMamba2Mixer fixes its limit), attention
    without positions ("full_attention"), a ReLU² MLP ("mlp") or DeepSeek-V3's router over ungated experts beside
    a shared MLP ("moe"; the experts in `moe_latent_size` wide where it is set). A Mamba-2 stack's: Mamba-2 layers;
    a Mamba or FalconMamba stack's: Mamba layers (`_single_block_mixer_shape`)."""
    kinds = hf["layers_block_type"]
    return dict(layer_blocks=tuple("mixer" if k.endswith("attention") else "ffn" for k in kinds),
                linear_activation=hf.get("mamba_hidden_act", "silu"),
                linear_layers=tuple(k == "linear_attention" for k in kinds),
                **_single_block_mixer_shape(hf),
                moe_kind="grouped_sigmoid", num_experts=hf.get("n_routed_experts", 8),
                experts_per_token=hf.get("num_experts_per_tok", 2), moe_layers=tuple(k == "moe" for k in kinds),
                moe_intermediate_size=hf.get("moe_intermediate_size", 7688),
                shared_expert_intermediate_size=hf.get("moe_shared_expert_intermediate_size", 7688),
                moe_groups=hf.get("n_group", 1), moe_topk_groups=hf.get("topk_group", 1),
                norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
                routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
                moe_latent_size=hf.get("moe_latent_size") or 0)


def _single_block_mixer_shape(hf: dict) -> dict:
    """The recurrent layers' shape in a one-block-a-layer stack: Mamba's (Mamba, FalconMamba) or Mamba-2's, whose
    chunked steps Mamba2Config clamps to `time_step_limit` and NemotronHMamba2Mixer to (`time_step_min`, inf)."""
    if hf["model_type"] in MAMBA_STACKS:
        return _mamba_shape(hf["intermediate_size"], hf.get("state_size", 16), hf.get("time_step_rank", "auto"),
                            hf["hidden_size"], hf.get("conv_kernel", 4), hf.get("use_conv_bias", True),
                            hf.get("use_bias", False),
                            hf.get("mixer_rms_eps", 1e-6) if hf["model_type"] == "falcon_mamba" else None)
    if hf["model_type"] == "mamba2":
        dt_limit = tuple(map(_json_float, hf.get("time_step_limit") or (0.0, math.inf)))
    else:
        dt_limit = _json_float(hf.get("time_step_min", hf.get("mamba_dt_min", 0.001))), math.inf
    return _mamba2_shape(hf.get("mamba_num_heads", 128), hf.get("mamba_head_dim", 64),
                         hf.get("n_groups", hf.get("mamba_n_groups", 8)), hf.get("ssm_state_size", 128),
                         hf.get("conv_kernel", hf.get("mamba_d_conv", 4)),
                         hf.get("use_conv_bias", hf.get("mamba_conv_bias", True)), hf.get("use_bias", False),
                         dt_limit, ("mamba_num_heads", "n_groups"))


def _json_float(value) -> float:
    """A float from config.json, where transformers writes infinities as {"__float__": "Infinity"}."""
    return float(value["__float__"] if isinstance(value, dict) else value)


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
