"""GPT-OSS (openai/gpt-oss-20b / 120b): Llama's decoder (jsoft.models.llama) with attention biases, a learned sink
logit per head in every softmax, sliding-window attention on every other layer, YaRN RoPE, and in every layer a
mixture of experts whose router takes the top k logits and softmaxes over them (jsoft.models.moe.TopKSoftmaxMoE).

Checkpoint names are transformers' (`model.layers.0.self_attn.sinks`, `model.layers.0.mlp.router`); the experts'
weights are single tensors `[experts, in, out]` (`mlp.experts.gate_up_proj`, `..._bias`), or, in OpenAI's released
checkpoints, MXFP4 blocks and scales (`..._blocks`, `..._scales`), which `hub.Checkpoint` dequantizes on read as
transformers does."""

from __future__ import annotations

from jsoft.models import llama
from jsoft.models.base import hf_name

TASKS, BASE_PREFIX, Config, build = llama.TASKS, llama.BASE_PREFIX, llama.Config, llama.build


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    if len(path) >= 2 and str(path[-2]) == "experts":  # stored as jsoft holds them: [experts, in, out]
        return hf_name(path), False
    return llama.checkpoint_key(path)
