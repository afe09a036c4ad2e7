"""Mistral Small 4 (`mistral4`, mistralai/Mistral-Small-4-119B-2603): Llama's decoder (jsoft.models.llama) with
DeepSeek-V3's multi-head latent attention, every query scaled by its position (`llama_4_scaling_beta`, as Ministral
3's), and mixtures of experts whose softmax router ranks expert groups by their two best (moe.GroupLimitedMoE).

Checkpoint names are transformers' (`model.layers.0.self_attn.kv_b_proj`, `...mlp.gate`, `...mlp.shared_experts`);
the experts' weights are single tensors as transformers holds them, `[experts, out, in]`
(`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`: moe.StoredExperts), read as stored."""

from __future__ import annotations

from jsoft.models import gpt_oss, llama

TASKS, BASE_PREFIX, Config, build = llama.TASKS, llama.BASE_PREFIX, llama.Config, llama.build
checkpoint_key = gpt_oss.checkpoint_key  # the experts read as stored ([experts, out, in] here), the rest as Llama's
