"""Llama 4's language model (meta-llama/Llama-4-Scout / Maverick): Llama's decoder (jsoft.models.llama) with RoPE
turning pairs (2i, 2i + 1), every `no_rope_layer_interval`-th layer without RoPE (its queries scaled up with the
slot: attention temperature tuning) and attending over every key, the others attending within chunks of
`attention_chunk_size` slots with their queries and keys RMS-normed after RoPE; mixtures of experts on
`moe_layers` whose top-k router sigmoids scale each token into its experts, beside a shared expert
(jsoft.models.moe.ScaledInputMoE).

Checkpoint names are transformers' (`model.layers.0.feed_forward.router`, `...feed_forward.shared_expert`); the
experts' weights are single tensors `[experts, in, out]` (`feed_forward.experts.gate_up_proj`), read as stored.
Multimodal checkpoints (`llama4`) load their language model alone (hub.LANGUAGE_MODELS)."""

from __future__ import annotations

from jsoft.models import gpt_oss, llama

TASKS, BASE_PREFIX, Config, build = llama.TASKS, llama.BASE_PREFIX, llama.Config, llama.build
checkpoint_key = gpt_oss.checkpoint_key  # experts stored stacked [experts, in, out], the rest as Llama's
