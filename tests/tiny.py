"""Tiny random Hugging Face models (odd sizes) for parity tests; nothing is downloaded."""

from __future__ import annotations

import torch
import transformers
import transformers as tf
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

VOCAB = 101

QWEN_HYBRID = {  # Qwen3-Next / Qwen3.5's shared shape
    "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 8, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
    "linear_key_head_dim": 8, "linear_value_head_dim": 6, "max_position_embeddings": 128, "initializer_range": 0.1,
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}

CONFIGS = {
    "gpt2": lambda **kw: tf.GPT2Config(**{
        "vocab_size": VOCAB, "n_positions": 64, "n_embd": 48, "n_layer": 3, "n_head": 4, "pad_token_id": 0, **kw}),
    "bert": lambda **kw: tf.BertConfig(**{
        "vocab_size": VOCAB, "hidden_size": 40, "num_hidden_layers": 3, "num_attention_heads": 5,
        "intermediate_size": 72, "max_position_embeddings": 64, "type_vocab_size": 2, "pad_token_id": 0, **kw}),
    "t5": lambda **kw: tf.T5Config(**{
        "vocab_size": VOCAB, "d_model": 32, "d_kv": 8, "d_ff": 56, "num_layers": 3, "num_decoder_layers": 2,
        "num_heads": 4, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 20,
        "feed_forward_proj": "relu", "tie_word_embeddings": True, "pad_token_id": 0, "eos_token_id": 1,
        "decoder_start_token_id": 0, **kw}),
    "umt5": lambda **kw: tf.UMT5Config(**{  # every layer its own bias table; umt5's gated GELU
        "vocab_size": VOCAB, "d_model": 32, "d_kv": 8, "d_ff": 56, "num_layers": 3, "num_decoder_layers": 2,
        "num_heads": 4, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 20,
        "feed_forward_proj": "gated-gelu", "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, **kw}),
    "bart": lambda **kw: tf.BartConfig(**{  # fewer decoder than encoder layers, as in distilbart
        "vocab_size": VOCAB, "d_model": 40, "encoder_layers": 3, "decoder_layers": 2, "encoder_attention_heads": 5,
        "decoder_attention_heads": 5, "encoder_ffn_dim": 56, "decoder_ffn_dim": 72, "max_position_embeddings": 64,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 2,
        "forced_eos_token_id": None, **kw}),
    "mbart": lambda **kw: tf.MBartConfig(**{
        "vocab_size": VOCAB, "d_model": 40, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 56, "decoder_ffn_dim": 64, "max_position_embeddings": 64,
        "scale_embedding": True, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 2,
        "forced_eos_token_id": None, **kw}),
    # NLLB's layout; pad id 0 (NLLB's is 1), so the batches' pads exercise positions counted over non-pad tokens
    "m2m_100": lambda **kw: tf.M2M100Config(**{
        "vocab_size": VOCAB, "d_model": 40, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 56, "decoder_ffn_dim": 64, "max_position_embeddings": 64,
        "scale_embedding": True, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 2,
        **kw}),
    # opus-mt's layout: the last id pads and starts the decoder, 0 ends
    "marian": lambda **kw: tf.MarianConfig(**{
        "vocab_size": VOCAB, "d_model": 40, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 56, "decoder_ffn_dim": 64, "max_position_embeddings": 64,
        "scale_embedding": True, "activation_function": "swish", "pad_token_id": VOCAB - 1, "eos_token_id": 0,
        "decoder_start_token_id": VOCAB - 1, "forced_eos_token_id": None, **kw}),
    "pegasus": lambda **kw: tf.PegasusConfig(**{
        "vocab_size": VOCAB, "d_model": 40, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 56, "decoder_ffn_dim": 64, "max_position_embeddings": 64,
        "scale_embedding": True, "activation_function": "relu", "pad_token_id": 0, "eos_token_id": 1,
        "decoder_start_token_id": 0, "forced_eos_token_id": None, **kw}),
    "xglm": lambda **kw: tf.XGLMConfig(**{
        "vocab_size": VOCAB, "d_model": 40, "num_layers": 2, "attention_heads": 4, "ffn_dim": 56,
        "max_position_embeddings": 64, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, **kw}),
    "biogpt": lambda **kw: tf.BioGptConfig(**{
        "vocab_size": VOCAB, "hidden_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 56, "max_position_embeddings": 64, "pad_token_id": 1, "bos_token_id": 0,
        "eos_token_id": 2, **kw}),
    "opt": lambda **kw: tf.OPTConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4, "ffn_dim": 72,
        "max_position_embeddings": 64, "word_embed_proj_dim": 48, "pad_token_id": 0, "bos_token_id": 1,
        "eos_token_id": 2, **kw}),
    "llama": lambda **kw: tf.LlamaConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 3,
        "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
        "tie_word_embeddings": False, **kw}),
    "roberta": lambda **kw: tf.RobertaConfig(**{  # pad id 0: positions start at row 1
        "vocab_size": VOCAB, "hidden_size": 40, "num_hidden_layers": 3, "num_attention_heads": 5,
        "intermediate_size": 72, "max_position_embeddings": 66, "type_vocab_size": 1, "pad_token_id": 0,
        "bos_token_id": 2, "eos_token_id": 3, **kw}),
    "mistral": lambda **kw: tf.MistralConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 128,
        "sliding_window": 64, "rms_norm_eps": 1e-5, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
        "tie_word_embeddings": False, **kw}),
    "qwen2": lambda **kw: tf.Qwen2Config(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 6, "num_key_value_heads": 3, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6, "rope_theta": 1e6, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
        "tie_word_embeddings": True, **kw}),
    "qwen3": lambda **kw: tf.Qwen3Config(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6, "rope_theta": 1e6, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
        "tie_word_embeddings": True, **kw}),
    "gemma": lambda **kw: tf.GemmaConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "gemma2": lambda **kw: tf.Gemma2Config(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 128,
        "query_pre_attn_scalar": 24, "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0,
        "initializer_range": 0.2,  # scores and logits large enough for the caps to bend them
        "sliding_window": 64, "rms_norm_eps": 1e-6, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # Gemma 3: a window of 5 keys (batches here are longer), sliding layers' own RoPE base, linear scaling on the
    # full layer; attn_logit_softcapping, which transformers' Gemma 3 never applies
    "gemma3_text": lambda **kw: tf.Gemma3TextConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 128,
        "query_pre_attn_scalar": 24, "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0,
        "initializer_range": 0.2, "sliding_window": 5,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "rope_scaling": {"rope_type": "linear", "factor": 4.0}, "rope_local_base_freq": 100.0,
        "rms_norm_eps": 1e-6, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # Phi-3 / Phi-4-mini: fused projections, half the head rotated, LongRoPE past an original length of 8 (the
    # batches here are longer: long factors), every layer sliding over 7 keys
    "phi3": lambda **kw: tf.Phi3Config(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "original_max_position_embeddings": 8, "partial_rotary_factor": 0.5, "sliding_window": 7,
        "rope_scaling": {"rope_type": "longrope", "short_factor": [1.0, 1.5, 2.0], "long_factor": [2.0, 3.0, 5.0]},
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "olmo2": lambda **kw: tf.Olmo2Config(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "olmo3": lambda **kw: tf.Olmo3Config(**{  # sliding layers over 5 keys with their own RoPE base
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "sliding_window": 5,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 300.0}},
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "ministral": lambda **kw: tf.MinistralConfig(**{  # a sliding layer over 6 keys, a full one
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 128,
        "sliding_window": 6, "layer_types": ["sliding_attention", "full_attention"], "pad_token_id": 0,
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False, **kw}),
    "glm": lambda **kw: tf.GlmConfig(**{  # half of each 16-dim head rotated in interleaved pairs
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 128,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "glm4": lambda **kw: tf.Glm4Config(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 128,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "exaone4": lambda **kw: tf.Exaone4Config(**{  # sliding layers over 5 keys with RoPE, a full one without
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "sliding_window": 5,
        "sliding_window_pattern": 2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "seed_oss": lambda **kw: tf.SeedOssConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 128,
        "attention_out_bias": True, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "helium": lambda **kw: tf.HeliumConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12, "max_position_embeddings": 128,
        "attention_bias": True, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "arcee": lambda **kw: tf.ArceeConfig(**{  # an ungated relu^2 MLP
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "ernie4_5": lambda **kw: tf.Ernie4_5Config(**{  # interleaved RoPE, a bias on every projection
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12, "max_position_embeddings": 128,
        "use_bias": True, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "granite": lambda **kw: tf.GraniteConfig(**{  # granite-3's multipliers, smaller
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
        "embedding_multiplier": 3.0, "residual_multiplier": 0.5, "attention_multiplier": 0.2, "logits_scaling": 4.0,
        "tie_word_embeddings": True, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "granitemoe": lambda **kw: tf.GraniteMoeConfig(**{  # granite-3.0-1b-a400m's layout: Granite's multipliers, MoE
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 24, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "num_local_experts": 4,
        "num_experts_per_tok": 2, "embedding_multiplier": 3.0, "residual_multiplier": 0.5, "attention_multiplier": 0.2,
        "logits_scaling": 4.0, "tie_word_embeddings": True, "initializer_range": 0.3,  # experts that matter
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "granitemoeshared": lambda **kw: tf.GraniteMoeSharedConfig(**{  # GraniteMoE with a shared MLP beside the experts
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 24, "shared_intermediate_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "num_local_experts": 4, "num_experts_per_tok": 2, "embedding_multiplier": 3.0, "residual_multiplier": 0.5,
        "attention_multiplier": 0.2, "logits_scaling": 4.0, "tie_word_embeddings": True, "initializer_range": 0.3,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "granitemoehybrid": lambda **kw: tf.GraniteMoeHybridConfig(**{  # Granite 4.0-H's layout: Mamba-2 layers beside
        # attention without RoPE, experts and a shared MLP; Mamba-2 heads 8 x 12, 2 groups of B / C, state 8
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 24, "shared_intermediate_size": 40,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "num_local_experts": 4, "num_experts_per_tok": 2, "layer_types": ["mamba", "attention", "mamba"],
        "position_embedding_type": "nope", "mamba_n_heads": 8, "mamba_n_groups": 2, "mamba_d_state": 8,
        "mamba_d_conv": 4, "mamba_chunk_size": 8, "embedding_multiplier": 3.0, "residual_multiplier": 0.5,
        "attention_multiplier": 0.2, "logits_scaling": 4.0, "tie_word_embeddings": True, "initializer_range": 0.2,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "bamba": lambda **kw: tf.BambaConfig(**{  # Bamba-9B's layout, smaller: Mamba-2 layers and attention (half
        # of each head rotated) at attn_layer_indices, each followed by a gated MLP
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "attn_layer_indices": [1], "max_position_embeddings": 128,
        "mamba_n_heads": 8, "mamba_n_groups": 2, "mamba_d_state": 8, "mamba_d_conv": 4, "mamba_chunk_size": 8,
        "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "nemotron_h": lambda **kw: tf.NemotronHConfig(**{  # Nemotron-H's layout, smaller: one block a layer, Mamba-2 (heads
        # 8 x 12, 2 groups of B / C, state 8), ungated experts in 2 groups beside a shared MLP, attention without
        # positions, a ReLU² MLP
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 40, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 12, "max_position_embeddings": 128,
        "layers_block_type": ["linear_attention", "moe", "full_attention", "mlp", "linear_attention"],
        "mamba_num_heads": 8, "mamba_head_dim": 12, "n_groups": 2, "ssm_state_size": 8, "conv_kernel": 4,
        "chunk_size": 8, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 24,
        "moe_shared_expert_intermediate_size": 32, "n_group": 2, "topk_group": 1, "routed_scaling_factor": 1.5,
        "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "mamba2": lambda **kw: tf.Mamba2Config(**{  # Mamba-Codestral's layout, smaller: Mamba-2 layers only (heads 8 x 12,
        # 2 groups of B / C, state 8)
        "vocab_size": VOCAB, "hidden_size": 48, "num_hidden_layers": 3, "num_heads": 8, "head_dim": 12,
        "state_size": 8, "n_groups": 2, "chunk_size": 8, "initializer_range": 0.2, "pad_token_id": 0,
        "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "mamba": lambda **kw: tf.MambaConfig(**{  # mamba-130m's layout, smaller: Mamba layers only (96 channels, state 8,
        # step rank 3)
        "vocab_size": VOCAB, "hidden_size": 48, "num_hidden_layers": 3, "state_size": 8, "initializer_range": 0.2,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "falcon_mamba": lambda **kw: tf.FalconMambaConfig(**{  # Mamba with RMS-normed steps, B and C
        "vocab_size": VOCAB, "hidden_size": 48, "num_hidden_layers": 3, "state_size": 8, "initializer_range": 0.2,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "jamba": lambda **kw: tf.JambaConfig(**{  # Jamba's layout, smaller: Mamba layers (96 channels, state 8) and
        # attention every second layer, experts (4, 2 a token) every second layer from the first, gated MLPs between
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 40, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2,
        "attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 0,
        "mamba_d_state": 8, "max_position_embeddings": 128, "initializer_range": 0.2, "pad_token_id": 0,
        "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # mixtures of experts: 4 experts, 2 per token (Qwen3-MoE: the second layer dense, top-k weights as they are)
    "mixtral": lambda **kw: tf.MixtralConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 40, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
        "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 6,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "qwen3_moe": lambda **kw: tf.Qwen3MoeConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 64, "moe_intermediate_size": 24,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 128, "num_experts": 4, "num_experts_per_tok": 2, "mlp_only_layers": [1],
        "norm_topk_prob": False, "tie_word_embeddings": True, "pad_token_id": 0, "bos_token_id": 1,
        "eos_token_id": 2, **kw}),
    "qwen2_moe": lambda **kw: tf.Qwen2MoeConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 64, "moe_intermediate_size": 24,
        "shared_expert_intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 128, "num_experts": 4, "num_experts_per_tok": 2,
        "norm_topk_prob": True, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "olmoe": lambda **kw: tf.OlmoeConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 24, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "num_experts": 5,
        "num_experts_per_tok": 3, "clip_qkv": 0.5, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # Mistral Small 3.1 / 3.2's checkpoints: jsoft runs their language model (a tiny Pixtral tower beside it)
    "mistral3": lambda **kw: tf.Mistral3Config(
        text_config={**CONFIGS["mistral"]().to_dict(), **kw},
        vision_config={"model_type": "pixtral", "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 28, "patch_size": 14, "head_dim": 8},
        image_token_index=99, tie_word_embeddings=kw.get("tie_word_embeddings", False)),
    # Gemma 3's multimodal checkpoints (4b .. 27b): jsoft runs their language model (a tiny SigLIP tower beside it)
    "gemma3": lambda **kw: tf.Gemma3Config(
        text_config={**CONFIGS["gemma3_text"]().to_dict(), "num_hidden_layers": 2,
                     "layer_types": ["sliding_attention", "full_attention"], **kw},
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 24,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
        mm_tokens_per_image=4, boi_token_index=97, eoi_token_index=98, image_token_index=99,
        initializer_range=kw.get("initializer_range", 0.02), tie_word_embeddings=kw.get("tie_word_embeddings", True)),
    "gpt_neox": lambda **kw: tf.GPTNeoXConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 72, "num_hidden_layers": 3,
        "num_attention_heads": 4, "max_position_embeddings": 128, "pad_token_id": 0, "bos_token_id": 1,
        "eos_token_id": 2, **kw}),
    "phi": lambda **kw: tf.PhiConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 72, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "qk_layernorm": True,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # v1 (deberta-base .. xlarge): fused in_proj with query / value biases, distances clamped to 12
    "deberta": lambda **kw: tf.DebertaConfig(**{
        "vocab_size": VOCAB, "hidden_size": 40, "num_hidden_layers": 3, "num_attention_heads": 5,
        "intermediate_size": 72, "max_position_embeddings": 64, "relative_attention": True,
        "max_relative_positions": 12, "pos_att_type": "c2p|p2c", "position_biased_input": False, "type_vocab_size": 0,
        "pad_token_id": 0, **kw}),
    # v3's options: log-bucketed relative distances (8 buckets, so distances past 4 are bucketed) read through
    # query_proj / key_proj, a LayerNorm over the relative table, no absolute positions, no token types
    "deberta-v2": lambda **kw: tf.DebertaV2Config(**{
        "vocab_size": VOCAB, "hidden_size": 40, "num_hidden_layers": 3, "num_attention_heads": 5,
        "intermediate_size": 72, "max_position_embeddings": 64, "relative_attention": True, "position_buckets": 8,
        "max_relative_positions": 20, "pos_att_type": "p2c|c2p", "share_att_key": True, "norm_rel_ebd": "layer_norm",
        "position_biased_input": False, "type_vocab_size": 0, "pad_token_id": 0, **kw}),
    "electra": lambda **kw: tf.ElectraConfig(**{  # electra-base's shape (electra-small's: a variant)
        "vocab_size": VOCAB, "embedding_size": 40, "hidden_size": 40, "num_hidden_layers": 3,
        "num_attention_heads": 5, "intermediate_size": 72, "max_position_embeddings": 64, "type_vocab_size": 2,
        "pad_token_id": 0, **kw}),
    "distilbert": lambda **kw: tf.DistilBertConfig(**{
        "vocab_size": VOCAB, "dim": 40, "n_layers": 3, "n_heads": 5, "hidden_dim": 72, "max_position_embeddings": 64,
        "pad_token_id": 0, **kw}),
    # local layers over a window of 3 either side (batches here are longer), a global one every third layer
    "modernbert": lambda **kw: tf.ModernBertConfig(**{
        "vocab_size": VOCAB, "hidden_size": 40, "num_hidden_layers": 4, "num_attention_heads": 5,
        "intermediate_size": 48, "max_position_embeddings": 64, "local_attention": 6, "global_attn_every_n_layers": 3,
        "global_rope_theta": 1000.0, "local_rope_theta": 100.0, "pad_token_id": 0, "bos_token_id": 1,
        "eos_token_id": 2, "cls_token_id": 1, "sep_token_id": 2, **kw}),
    "gptj": lambda **kw: tf.GPTJConfig(**{  # head size 12, 8 of it rotated
        "vocab_size": VOCAB, "n_positions": 64, "n_embd": 48, "n_layer": 2, "n_head": 4, "rotary_dim": 8,
        "n_inner": 72, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "gpt_neo": lambda **kw: tf.GPTNeoConfig(**{  # a window of 4 slots, so local layers differ from global ones
        "vocab_size": VOCAB, "max_position_embeddings": 64, "hidden_size": 48, "num_layers": 3, "num_heads": 4,
        "attention_types": [[["global", "local"], 1], [["local"], 1]], "window_size": 4, "intermediate_size": 72,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "stablelm": lambda **kw: tf.StableLmConfig(**{  # per-head query / key norms, a quarter of each head rotated
        "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "qk_layernorm": True,
        "use_qkv_bias": True, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "starcoder2": lambda **kw: tf.Starcoder2Config(**{  # every layer sliding over 6 keys
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 6, "num_key_value_heads": 2, "max_position_embeddings": 128, "sliding_window": 6,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "smollm3": lambda **kw: tf.SmolLM3Config(**{  # layers 2 and 4 without RoPE; those slide over 5 keys
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "no_rope_layer_interval": 2,
        "use_sliding_window": True, "sliding_window": 5, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
        **kw}),
    "cohere": lambda **kw: tf.CohereConfig(**{  # per-head query / key norms, biases, a logit scale
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "use_qk_norm": True,
        "attention_bias": True, "logit_scale": 0.3, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "cohere2": lambda **kw: tf.Cohere2Config(**{  # sliding layers over 5 keys with RoPE, a full one without
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "sliding_window": 5,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"], "logit_scale": 0.5,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "nemotron": lambda **kw: tf.NemotronConfig(**{  # half of each 16-dim head rotated
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 128,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # the new architecture (falcon-40b, -180b): two key / value groups, ln_attn and ln_mlp; biases
    "falcon": lambda **kw: tf.FalconConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 6, "num_kv_heads": 2,
        "new_decoder_architecture": True, "bias": True, "ffn_hidden_size": 72, "max_position_embeddings": 128,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "gpt_bigcode": lambda **kw: tf.GPTBigCodeConfig(**{  # one key / value head for four query heads
        "vocab_size": VOCAB, "n_positions": 64, "n_embd": 48, "n_layer": 2, "n_head": 4, "n_inner": 72,
        "multi_query": True, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "mpnet": lambda **kw: tf.MPNetConfig(**{  # 32 relative-position buckets, so keys 8+ slots away share some
        "vocab_size": VOCAB, "hidden_size": 36, "num_hidden_layers": 2, "num_attention_heads": 3,
        "intermediate_size": 40, "max_position_embeddings": 64, "pad_token_id": 1, "bos_token_id": 0,
        "eos_token_id": 2, **kw}),
    # Llama 4 Scout / Maverick's checkpoints: jsoft runs their language model (a tiny vision tower beside it)
    "llama4": lambda **kw: tf.Llama4Config(
        text_config={**CONFIGS["llama4_text"]().to_dict(), **kw},
        vision_config={"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 28, "patch_size": 14, "vision_output_dim": 16, "projector_input_dim": 16,
                       "projector_output_dim": 16, "pixel_shuffle_ratio": 0.5},
        boi_token_index=97, eoi_token_index=98, image_token_index=99),
    "olmo": lambda **kw: tf.OlmoConfig(**{  # weightless LayerNorms, queries / keys / values clipped
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "clip_qkv": 0.1,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "xlm-roberta-xl": lambda **kw: tf.XLMRobertaXLConfig(**{
        "vocab_size": VOCAB, "hidden_size": 36, "num_hidden_layers": 2, "num_attention_heads": 3,
        "intermediate_size": 40, "max_position_embeddings": 64, "pad_token_id": 1, "bos_token_id": 0,
        "eos_token_id": 2, **kw}),
    "ernie": lambda **kw: tf.ErnieConfig(**{  # with ERNIE 3.0's task-type table
        "vocab_size": VOCAB, "hidden_size": 36, "num_hidden_layers": 2, "num_attention_heads": 3,
        "intermediate_size": 40, "max_position_embeddings": 64, "use_task_id": True, "task_type_vocab_size": 3,
        **kw}),
    # 4 experts, 2 per token, clamped at 2 (not 7) so the clamp shows; sliding layers of 3 slots; YaRN by default
    "gpt_oss": lambda **kw: tf.GptOssConfig(**{
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 24, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "num_local_experts": 4,
        "num_experts_per_tok": 2, "sliding_window": 3, "max_position_embeddings": 64, "swiglu_limit": 2.0,
        "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # DeepSeek-V3's router: 8 experts in 4 groups, a token's 2 from the best 2 groups, a shared expert, the first
    # layer dense (the correction bias is randomised in `build`, so choosing by it shows)
    "deepseek_v3": lambda **kw: tf.DeepseekV3Config(**{  # multi-head latent attention, queries through a latent too
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "n_routed_experts": 8,
        "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2, "first_k_dense_replace": 1,
        "routed_scaling_factor": 2.5, "q_lora_rank": 16, "kv_lora_rank": 12, "qk_rope_head_dim": 4,
        "qk_nope_head_dim": 8, "v_head_dim": 6, "max_position_embeddings": 128, "initializer_range": 0.2,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "glm4_moe": lambda **kw: tf.Glm4MoeConfig(**{  # GLM-4.5: half of each head rotated, query / key norms
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "first_k_dense_replace": 1,
        "n_shared_experts": 2, "use_qk_norm": True, "attention_bias": True, "max_position_embeddings": 128,
        "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # DeepSeek-V2: 8 experts in 4 groups by softmax score, a token's 3 from the best 2 groups; 2 shared experts with
    # biases (mlp_bias), keys and values through latents
    "deepseek_v2": lambda **kw: tf.DeepseekV2Config(**{
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "n_routed_experts": 8,
        "num_experts_per_tok": 3, "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2,
        "first_k_dense_replace": 1, "n_shared_experts": 2, "routed_scaling_factor": 1.5, "mlp_bias": True,
        "q_lora_rank": 16, "kv_lora_rank": 12, "qk_rope_head_dim": 4, "qk_nope_head_dim": 8, "v_head_dim": 6,
        "max_position_embeddings": 128, "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1,
        "eos_token_id": 2, **kw}),
    # MiniMax-M2: query / key norms over the whole projection, its released checkpoints' `rotary_dim` (half of each
    # head), DeepSeek-V3's corrected sigmoid router over Mixtral-named experts
    "minimax_m2": lambda **kw: tf.MiniMaxM2Config(**{
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "rotary_dim": 4, "num_local_experts": 6,
        "num_experts_per_tok": 2, "max_position_embeddings": 128, "initializer_range": 0.2, "pad_token_id": 0,
        "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # EXAONE-MoE: EXAONE 4's attention (sliding layers with RoPE over 5 keys, a full one without) in pre-norm layers,
    # DeepSeek-V3's router in 2 groups, the second layer dense
    "exaone_moe": lambda **kw: tf.ExaoneMoeConfig(**{
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "num_experts": 8,
        "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "mlp_layer_types": ["sparse", "dense", "sparse"],
        "sliding_window": 5, "sliding_window_pattern": 3, "max_position_embeddings": 128,
        "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # Llama 4: 4 layers, every other one NoPE (full attention, tempered queries every 2 slots), the others chunked
    # in blocks of 4 slots with L2-normed queries / keys; the second and fourth layers' MoE 4 experts, 2 a token
    "llama4_text": lambda **kw: tf.Llama4TextConfig(**{
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 16, "intermediate_size_mlp": 48,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "num_local_experts": 4, "num_experts_per_tok": 2, "interleave_moe_layer_step": 2, "attention_chunk_size": 4,
        "floor_scale": 2, "attn_scale": 0.5, "no_rope_layer_interval": 2, "max_position_embeddings": 128,
        "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # ERNIE 4.5 MoE: biases everywhere but the experts; 6 experts, 2 a token, chosen by softmax plus moe_statics'
    # bias; layers 1 and 3 sparse (start 1, every other), 2 shared experts
    "ernie4_5_moe": lambda **kw: tf.Ernie4_5_MoeConfig(**{
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "moe_num_experts": 6, "moe_k": 2, "moe_num_shared_experts": 2, "moe_layer_start_index": 1,
        "moe_layer_interval": 2, "use_bias": True, "tie_word_embeddings": False, "max_position_embeddings": 128,
        "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # Hunyuan: query / key norms after RoPE; NTK-alpha RoPE (a stretched base)
    "hunyuan_v1_dense": lambda **kw: tf.HunYuanDenseV1Config(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12, "max_position_embeddings": 128,
        "rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "alpha": 50.0, "factor": 1.0},
        "attention_bias": True, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "hunyuan_v1_moe": lambda **kw: tf.HunYuanMoEV1Config(**{  # Hunyuan-A13B's layout: 6 experts, 2 a token
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 24, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "num_experts": 6, "moe_topk": 2,
        "max_position_embeddings": 128, "initializer_range": 0.2,
        "rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "alpha": 50.0, "factor": 1.0},
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # Ministral 3: Mistral with YaRN, every query scaled by 1 + 0.5 * log1p(floor(position / 4)) (it steps every 4
    # tokens here), a window of 6 keys on every layer
    "ministral3": lambda **kw: tf.Ministral3Config(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 128,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                            "original_max_position_embeddings": 4, "beta_fast": 32.0, "beta_slow": 1.0,
                            "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.5},
        "sliding_window": 6, "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # InternLM3 and IQuest-Coder: transformers runs both as Llama (InternLM3 with biases everywhere)
    "internlm3": lambda **kw: tf.InternLM3Config(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 128,
        "attention_bias": True, "mlp_bias": True, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "iquestcoder": lambda **kw: tf.IQuestCoderConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12, "max_position_embeddings": 128,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # VaultGemma: Gemma 2 without the norms on attention's and the MLP's outputs; a window of 5 keys
    "vaultgemma": lambda **kw: tf.VaultGemmaConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 128,
        "query_pre_attn_scalar": 24, "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0,
        "initializer_range": 0.2, "sliding_window": 5, "rms_norm_eps": 1e-6, "pad_token_id": 0, "bos_token_id": 1,
        "eos_token_id": 2, **kw}),
    # Meta's CWM: Llama with every layer but each 4th from the first sliding (a window of 4 keys), llama3 RoPE
    "cwm": lambda **kw: tf.CwmConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 128,
        "sliding_window": 4, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                 "original_max_position_embeddings": 16},
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # Apertus: xIELU MLPs (learned alpha_p / alpha_n, perturbed in `build`), query / key norms, llama3 RoPE
    "apertus": lambda **kw: tf.ApertusConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # Mistral Small 4: DeepSeek-V3's latent attention (values wider than queries / keys), every query scaled by its
    # position (it steps every 4 tokens here), 8 experts in 4 groups ranked by their two best, the first layer dense
    "mistral4": lambda **kw: tf.Mistral4Config(**{
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4, "n_routed_experts": 8,
        "num_experts_per_tok": 3, "n_group": 4, "topk_group": 2, "first_k_dense_replace": 1,
        "routed_scaling_factor": 1.5, "kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8, "v_head_dim": 12, "max_position_embeddings": 128, "initializer_range": 0.2,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                            "original_max_position_embeddings": 4, "beta_fast": 32.0, "beta_slow": 1.0,
                            "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.5,
                            "partial_rotary_factor": 0.5},
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # Youtu-LLM: DeepSeek-V3's latent attention in dense Llama layers, the LM head tied
    "youtu": lambda **kw: tf.YoutuConfig(**{
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "kv_lora_rank": 16, "q_lora_rank": 24,
        "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 12, "max_position_embeddings": 128,
        "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # MiniCPM3: DeepSeek-V2's latent attention with rotate_half RoPE (LongRoPE here), scaled token embeddings,
    # residual branches and LM head input; values of the default width (hidden_size / heads)
    "minicpm3": lambda **kw: tf.MiniCPM3Config(**{
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "kv_lora_rank": 16, "q_lora_rank": 24,
        "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": None, "max_position_embeddings": 128,
        "scale_emb": 3.0, "scale_depth": 1.4, "dim_model_base": 16, "initializer_range": 0.2,
        "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0, 1.5, 2.0, 3.0],
                            "long_factor": [2.0, 3.0, 4.0, 6.0], "original_max_position_embeddings": 8},
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # Jais 2: LayerNorms with weights and biases, a ReLU-squared MLP without a gate, biases everywhere
    "jais2": lambda **kw: tf.Jais2Config(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "layer_norm_eps": 1e-4,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    # NanoChat: weightless RMS norms (the input embeddings' too), RoPE turned the other way, query / key norms after
    # it, fc1 / fc2 ReLU-squared MLPs, a final logit cap
    "nanochat": lambda **kw: tf.NanoChatConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "final_logit_softcapping": 3.0, "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1,
        "eos_token_id": 2, **kw}),
    # Qwen3.5: three Gated DeltaNet layers, then gated attention (partial RoPE, query / key norms); two value heads
    # per key head, values narrower than keys
    "qwen3_5_text": lambda **kw: tf.Qwen3_5TextConfig(**{**QWEN_HYBRID, **kw}),
    # Qwen3-Next: fused projections per key head, the middle layer attention, sparse MLPs but in the last layer
    "qwen3_next": lambda **kw: tf.Qwen3NextConfig(**{
        **QWEN_HYBRID, "num_hidden_layers": 3,
        "layer_types": ["linear_attention", "full_attention", "linear_attention"],
        "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 20,
        "mlp_only_layers": [2], **kw}),
    "qwen3_5_moe_text": lambda **kw: tf.Qwen3_5MoeTextConfig(**{
        **QWEN_HYBRID, "num_hidden_layers": 2, "layer_types": ["linear_attention", "full_attention"],
        "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 20,
        **kw}),
    # the multimodal checkpoints every Qwen3.5 ships as: jsoft runs their language model (a tiny vision tower beside)
    "qwen3_5": lambda **kw: tf.Qwen3_5Config(
        text_config={**QWEN_HYBRID, **kw}, vision_config={
            "depth": 1, "hidden_size": 16, "intermediate_size": 24, "num_heads": 2, "out_hidden_size": 32,
            "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 16},
        image_token_id=99, video_token_id=98, vision_start_token_id=97, vision_end_token_id=96,
        tie_word_embeddings=kw.get("tie_word_embeddings", False)),
    # GLM-4.7-Flash: DeepSeek-V3's latent attention, values wider than queries / keys; the middle layer dense
    "glm4_moe_lite": lambda **kw: tf.Glm4MoeLiteConfig(**{
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4, "n_routed_experts": 8,
        "num_experts_per_tok": 2, "mlp_layer_types": ["sparse", "dense", "sparse"], "q_lora_rank": 16,
        "kv_lora_rank": 12, "qk_rope_head_dim": 4, "qk_nope_head_dim": 6, "v_head_dim": 14,
        "max_position_embeddings": 128, "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1,
        "eos_token_id": 2, **kw}),
    "dots1": lambda **kw: tf.Dots1Config(**{  # Qwen3's attention, the second layer sliding; weights not renormalised
        "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
        "n_routed_experts": 8, "num_experts_per_tok": 3, "n_shared_experts": 1, "first_k_dense_replace": 0,
        "norm_topk_prob": False, "sliding_window": 4, "max_window_layers": 1, "max_position_embeddings": 128,
        "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "albert": lambda **kw: tf.AlbertConfig(**{  # albert-base's shape: one shared layer run 3 times, narrower embeddings
        "vocab_size": VOCAB, "embedding_size": 20, "hidden_size": 36, "num_hidden_layers": 3,
        "num_attention_heads": 3, "intermediate_size": 40, "max_position_embeddings": 64, "pad_token_id": 0,
        "bos_token_id": 2, "eos_token_id": 3, **kw}),
    "codegen": lambda **kw: tf.CodeGenConfig(**{  # 8 heads in 4 shards, 8 of each 12-dim head rotated
        "vocab_size": VOCAB, "n_positions": 64, "n_ctx": 64, "n_embd": 96, "n_layer": 2, "n_head": 8,
        "rotary_dim": 8, "n_inner": 72, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
    "bloom": lambda **kw: tf.BloomConfig(**{
        "vocab_size": VOCAB, "hidden_size": 48, "n_layer": 3, "n_head": 6, "layer_norm_epsilon": 1e-5,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **kw}),
}

CLASSES = {
    ("gpt2", None): tf.GPT2Model, ("gpt2", "causal_lm"): tf.GPT2LMHeadModel,
    ("gpt2", "seq_cls"): tf.GPT2ForSequenceClassification, ("gpt2", "token_cls"): tf.GPT2ForTokenClassification,
    ("bert", None): tf.BertModel, ("bert", "seq_cls"): tf.BertForSequenceClassification,
    ("bert", "token_cls"): tf.BertForTokenClassification,
    ("t5", None): tf.T5Model, ("t5", "seq2seq_lm"): tf.T5ForConditionalGeneration,
    ("umt5", None): tf.UMT5Model, ("umt5", "seq2seq_lm"): tf.UMT5ForConditionalGeneration,
    ("mbart", "seq2seq_lm"): tf.MBartForConditionalGeneration,
    ("opt", None): tf.OPTModel, ("opt", "causal_lm"): tf.OPTForCausalLM,
    ("opt", "seq_cls"): tf.OPTForSequenceClassification,
    ("bart", None): tf.BartModel, ("bart", "seq2seq_lm"): tf.BartForConditionalGeneration,
    ("llama", None): tf.LlamaModel, ("llama", "causal_lm"): tf.LlamaForCausalLM,
    ("llama", "seq_cls"): tf.LlamaForSequenceClassification,
    ("llama", "token_cls"): tf.LlamaForTokenClassification,
    ("roberta", None): tf.RobertaModel, ("roberta", "seq_cls"): tf.RobertaForSequenceClassification,
    ("roberta", "token_cls"): tf.RobertaForTokenClassification,
    ("mistral", "causal_lm"): tf.MistralForCausalLM, ("mistral", "seq_cls"): tf.MistralForSequenceClassification,
    ("qwen3", "causal_lm"): tf.Qwen3ForCausalLM, ("qwen3", "seq_cls"): tf.Qwen3ForSequenceClassification,
    ("gemma", "causal_lm"): tf.GemmaForCausalLM, ("gemma", "seq_cls"): tf.GemmaForSequenceClassification,
    ("gemma2", "causal_lm"): tf.Gemma2ForCausalLM, ("gemma2", "token_cls"): tf.Gemma2ForTokenClassification,
    ("gemma3_text", "causal_lm"): tf.Gemma3ForCausalLM,
    ("gemma3_text", "seq_cls"): tf.Gemma3TextForSequenceClassification,
    ("phi3", "causal_lm"): tf.Phi3ForCausalLM, ("phi3", "seq_cls"): tf.Phi3ForSequenceClassification,
    ("phi3", "token_cls"): tf.Phi3ForTokenClassification,
    ("olmo2", "causal_lm"): tf.Olmo2ForCausalLM, ("olmo2", "seq_cls"): tf.Olmo2ForSequenceClassification,
    ("granite", "causal_lm"): tf.GraniteForCausalLM,
    ("mixtral", "causal_lm"): tf.MixtralForCausalLM, ("mixtral", "seq_cls"): tf.MixtralForSequenceClassification,
    ("qwen3_moe", "causal_lm"): tf.Qwen3MoeForCausalLM, ("qwen3_moe", "seq_cls"): tf.Qwen3MoeForSequenceClassification,
    ("olmoe", "causal_lm"): tf.OlmoeForCausalLM, ("qwen2_moe", "causal_lm"): tf.Qwen2MoeForCausalLM,
    ("qwen2_moe", "seq_cls"): tf.Qwen2MoeForSequenceClassification,
    ("gemma3", "causal_lm"): tf.Gemma3ForConditionalGeneration,
    ("mistral3", "causal_lm"): tf.Mistral3ForConditionalGeneration,
    ("gemma3", "seq_cls"): tf.Gemma3ForSequenceClassification,
    ("gpt_neox", "causal_lm"): tf.GPTNeoXForCausalLM, ("gpt_neox", "seq_cls"): tf.GPTNeoXForSequenceClassification,
    ("gpt_neox", "token_cls"): tf.GPTNeoXForTokenClassification,
    ("phi", "causal_lm"): tf.PhiForCausalLM, ("phi", "seq_cls"): tf.PhiForSequenceClassification,
    ("bloom", None): tf.BloomModel, ("bloom", "causal_lm"): tf.BloomForCausalLM,
    ("bloom", "seq_cls"): tf.BloomForSequenceClassification, ("bloom", "token_cls"): tf.BloomForTokenClassification,
    ("deberta", None): tf.DebertaModel, ("deberta", "seq_cls"): tf.DebertaForSequenceClassification,
    ("deberta", "token_cls"): tf.DebertaForTokenClassification,
    ("deberta-v2", None): tf.DebertaV2Model, ("deberta-v2", "seq_cls"): tf.DebertaV2ForSequenceClassification,
    ("deberta-v2", "token_cls"): tf.DebertaV2ForTokenClassification,
    ("electra", None): tf.ElectraModel, ("electra", "seq_cls"): tf.ElectraForSequenceClassification,
    ("electra", "token_cls"): tf.ElectraForTokenClassification,
    ("distilbert", None): tf.DistilBertModel, ("distilbert", "seq_cls"): tf.DistilBertForSequenceClassification,
    ("distilbert", "token_cls"): tf.DistilBertForTokenClassification,
    ("modernbert", None): tf.ModernBertModel, ("modernbert", "seq_cls"): tf.ModernBertForSequenceClassification,
    ("modernbert", "token_cls"): tf.ModernBertForTokenClassification,
    ("gptj", "causal_lm"): tf.GPTJForCausalLM, ("gptj", "seq_cls"): tf.GPTJForSequenceClassification,
    ("gpt_neo", "causal_lm"): tf.GPTNeoForCausalLM, ("gpt_neo", "seq_cls"): tf.GPTNeoForSequenceClassification,
    ("gpt_neo", "token_cls"): tf.GPTNeoForTokenClassification,
    ("stablelm", "causal_lm"): tf.StableLmForCausalLM, ("stablelm", "seq_cls"): tf.StableLmForSequenceClassification,
    ("stablelm", "token_cls"): tf.StableLmForTokenClassification,
    ("starcoder2", "causal_lm"): tf.Starcoder2ForCausalLM,
    ("starcoder2", "seq_cls"): tf.Starcoder2ForSequenceClassification,
    ("smollm3", "causal_lm"): tf.SmolLM3ForCausalLM, ("smollm3", "seq_cls"): tf.SmolLM3ForSequenceClassification,
    ("cohere", "causal_lm"): tf.CohereForCausalLM, ("cohere2", "causal_lm"): tf.Cohere2ForCausalLM,
    ("olmo3", "causal_lm"): tf.Olmo3ForCausalLM, ("olmo3", "seq_cls"): tf.Olmo3ForSequenceClassification,
    ("ministral", "causal_lm"): tf.MinistralForCausalLM,
    ("ministral", "seq_cls"): tf.MinistralForSequenceClassification,
    ("glm", "causal_lm"): tf.GlmForCausalLM, ("glm", "token_cls"): tf.GlmForTokenClassification,
    ("glm4", "causal_lm"): tf.Glm4ForCausalLM, ("glm4", "seq_cls"): tf.Glm4ForSequenceClassification,
    ("exaone4", "causal_lm"): tf.Exaone4ForCausalLM, ("exaone4", "seq_cls"): tf.Exaone4ForSequenceClassification,
    ("seed_oss", "causal_lm"): tf.SeedOssForCausalLM, ("seed_oss", "token_cls"): tf.SeedOssForTokenClassification,
    ("helium", "causal_lm"): tf.HeliumForCausalLM, ("helium", "seq_cls"): tf.HeliumForSequenceClassification,
    ("arcee", "causal_lm"): tf.ArceeForCausalLM, ("arcee", "token_cls"): tf.ArceeForTokenClassification,
    ("nemotron", "causal_lm"): tf.NemotronForCausalLM, ("nemotron", "seq_cls"): tf.NemotronForSequenceClassification,
    ("nemotron", "token_cls"): tf.NemotronForTokenClassification,
    ("ernie4_5", "causal_lm"): tf.Ernie4_5ForCausalLM,
    ("falcon", "causal_lm"): tf.FalconForCausalLM, ("falcon", "seq_cls"): tf.FalconForSequenceClassification,
    ("falcon", "token_cls"): tf.FalconForTokenClassification,
    ("gpt_bigcode", "causal_lm"): tf.GPTBigCodeForCausalLM,
    ("gpt_bigcode", "seq_cls"): tf.GPTBigCodeForSequenceClassification,
    ("gpt_bigcode", "token_cls"): tf.GPTBigCodeForTokenClassification,
    ("mpnet", None): tf.MPNetModel, ("mpnet", "seq_cls"): tf.MPNetForSequenceClassification,
    ("mpnet", "token_cls"): tf.MPNetForTokenClassification,
    ("xlm-roberta-xl", None): tf.XLMRobertaXLModel,
    ("xlm-roberta-xl", "seq_cls"): tf.XLMRobertaXLForSequenceClassification,
    ("xlm-roberta-xl", "token_cls"): tf.XLMRobertaXLForTokenClassification,
    ("ernie", None): tf.ErnieModel, ("ernie", "seq_cls"): tf.ErnieForSequenceClassification,
    ("ernie", "token_cls"): tf.ErnieForTokenClassification,
    ("codegen", "causal_lm"): tf.CodeGenForCausalLM,
    ("gpt_oss", "causal_lm"): tf.GptOssForCausalLM, ("gpt_oss", "seq_cls"): tf.GptOssForSequenceClassification,
    ("gpt_oss", "token_cls"): tf.GptOssForTokenClassification,
    ("m2m_100", None): tf.M2M100Model, ("m2m_100", "seq2seq_lm"): tf.M2M100ForConditionalGeneration,
    ("marian", None): tf.MarianModel, ("marian", "seq2seq_lm"): tf.MarianMTModel,
    ("pegasus", None): tf.PegasusModel, ("pegasus", "seq2seq_lm"): tf.PegasusForConditionalGeneration,
    ("xglm", "causal_lm"): tf.XGLMForCausalLM, ("granitemoe", "causal_lm"): tf.GraniteMoeForCausalLM,
    ("granitemoeshared", "causal_lm"): tf.GraniteMoeSharedForCausalLM,
    ("granitemoehybrid", "causal_lm"): tf.GraniteMoeHybridForCausalLM, ("bamba", "causal_lm"): tf.BambaForCausalLM,
    ("nemotron_h", "causal_lm"): tf.NemotronHForCausalLM, ("mamba2", "causal_lm"): tf.Mamba2ForCausalLM,
    ("mamba", "causal_lm"): tf.MambaForCausalLM, ("falcon_mamba", "causal_lm"): tf.FalconMambaForCausalLM,
    ("jamba", "causal_lm"): tf.JambaForCausalLM, ("jamba", "seq_cls"): tf.JambaForSequenceClassification,
    ("deepseek_v3", "causal_lm"): tf.DeepseekV3ForCausalLM,
    ("deepseek_v3", "seq_cls"): tf.DeepseekV3ForSequenceClassification,
    ("deepseek_v3", "token_cls"): tf.DeepseekV3ForTokenClassification,
    ("glm4_moe", "causal_lm"): tf.Glm4MoeForCausalLM, ("dots1", "causal_lm"): tf.Dots1ForCausalLM,
    ("glm4_moe_lite", "causal_lm"): tf.Glm4MoeLiteForCausalLM,
    ("minimax_m2", "causal_lm"): tf.MiniMaxM2ForCausalLM,
    ("exaone_moe", "causal_lm"): tf.ExaoneMoeForCausalLM,
    ("llama4_text", "causal_lm"): tf.Llama4ForCausalLM,
    ("llama4", "causal_lm"): tf.Llama4ForConditionalGeneration,
    ("ernie4_5_moe", "causal_lm"): tf.Ernie4_5_MoeForCausalLM,
    ("hunyuan_v1_dense", "causal_lm"): tf.HunYuanDenseV1ForCausalLM,
    ("hunyuan_v1_dense", "seq_cls"): tf.HunYuanDenseV1ForSequenceClassification,
    ("hunyuan_v1_moe", "causal_lm"): tf.HunYuanMoEV1ForCausalLM,
    ("deepseek_v2", "causal_lm"): tf.DeepseekV2ForCausalLM,
    ("deepseek_v2", "seq_cls"): tf.DeepseekV2ForSequenceClassification,
    ("biogpt", "causal_lm"): tf.BioGptForCausalLM,
    ("biogpt", "seq_cls"): tf.BioGptForSequenceClassification, ("biogpt", "token_cls"): tf.BioGptForTokenClassification,
    ("albert", None): tf.AlbertModel, ("albert", "seq_cls"): tf.AlbertForSequenceClassification,
    ("albert", "token_cls"): tf.AlbertForTokenClassification,
    ("olmo", "causal_lm"): tf.OlmoForCausalLM, ("olmo", "seq_cls"): tf.OlmoForSequenceClassification,
    ("qwen2", "causal_lm"): tf.Qwen2ForCausalLM, ("qwen2", "token_cls"): tf.Qwen2ForTokenClassification,
    ("ministral3", "causal_lm"): tf.Ministral3ForCausalLM,
    ("ministral3", "seq_cls"): tf.Ministral3ForSequenceClassification,
    ("ministral3", "token_cls"): tf.Ministral3ForTokenClassification,
    ("internlm3", "causal_lm"): tf.LlamaForCausalLM, ("internlm3", "seq_cls"): tf.LlamaForSequenceClassification,
    ("iquestcoder", "causal_lm"): tf.LlamaForCausalLM, ("vaultgemma", "causal_lm"): tf.VaultGemmaForCausalLM,
    ("cwm", "causal_lm"): tf.CwmForCausalLM,
    ("apertus", "causal_lm"): tf.ApertusForCausalLM, ("apertus", "token_cls"): tf.ApertusForTokenClassification,
    ("mistral4", "causal_lm"): tf.Mistral4ForCausalLM, ("mistral4", "seq_cls"): tf.Mistral4ForSequenceClassification,
    ("youtu", "causal_lm"): tf.YoutuForCausalLM,
    ("minicpm3", "causal_lm"): tf.MiniCPM3ForCausalLM, ("minicpm3", "seq_cls"): tf.MiniCPM3ForSequenceClassification,
    ("jais2", "causal_lm"): tf.Jais2ForCausalLM, ("nanochat", "causal_lm"): tf.NanoChatForCausalLM,
    ("qwen3_5_text", "causal_lm"): tf.Qwen3_5ForCausalLM, ("qwen3_next", "causal_lm"): tf.Qwen3NextForCausalLM,
    ("qwen3_next", "seq_cls"): tf.Qwen3NextForSequenceClassification,
    ("qwen3_next", "token_cls"): tf.Qwen3NextForTokenClassification,
    ("qwen3_5_moe_text", "causal_lm"): tf.Qwen3_5MoeForCausalLM,
    ("qwen3_5", "causal_lm"): tf.Qwen3_5ForConditionalGeneration,
    ("qwen3_5", "seq_cls"): tf.Qwen3_5ForSequenceClassification,
    ("qwen3_5", "token_cls"): tf.Qwen3_5ForTokenClassification,
}

TASK_MATRIX = sorted(CLASSES, key=str)
ENCODER_DECODER = ("t5", "umt5", "bart", "mbart", "m2m_100", "marian", "pegasus")


def build(kind: str, task: str | None = None, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    num_labels = overrides.pop("num_labels", 3)
    config = CONFIGS[kind](**overrides)
    if task in ("seq_cls", "token_cls"):
        config.num_labels = num_labels
    model = CLASSES[(kind, task)](config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name or "norm" in name.lower():
                p.add_(0.1 * torch.randn_like(p))
            if "act_fn.alpha" in name:  # Apertus' xIELU: learned per layer
                p.add_(0.5 * torch.randn_like(p))
            if "embed_positions" in name and kind not in ("marian", "pegasus"):  # learned (BART): positions as
                # strong as tokens, so a position off by one shows (Marian's and Pegasus's are fixed sinusoids)
                p.mul_(10.0)
        for name, b in [*model.named_buffers(), *model.named_parameters()]:  # DeepSeek's, ERNIE's routers: a bias
            if name.endswith("e_score_correction_bias"):  # that changes which experts are chosen
                b.add_(0.3 * torch.randn_like(b))
    return model


def save(kind: str, task: str | None, path, **overrides):
    build(kind, task, **overrides).save_pretrained(path)


WORDS = ("the a movie film plot was is not very good great bad awful i loved hated it and but this "
         "review sentiment positive negative eu rejects german call to boycott british lamb").split()


def tokenizer(post: str = "bert", pad: bool = True, padding_side: str = "right"):
    """A tiny offline WordPiece tokenizer: BERT-like ("bert"), decoder-like ("gpt"), or T5-like ("t5")."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + list(WORDS) + ["##s", "##z", "##x", "z", "x", ":", "."])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    kwargs = {}
    if post == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        kwargs = dict(cls_token="[CLS]", sep_token="[SEP]",
                      model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    elif post == "t5":
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
        kwargs = dict(eos_token="</s>", model_input_names=["input_ids", "attention_mask"])
    else:
        kwargs = dict(eos_token="</s>", model_input_names=["input_ids", "attention_mask"])
    if pad:
        kwargs["pad_token"] = "[PAD]"
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                                padding_side=padding_side, **kwargs)
