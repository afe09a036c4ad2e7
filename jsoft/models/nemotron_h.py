"""Nemotron-H (nvidia/Nemotron-H-8B / 47B, NVIDIA-Nemotron-Nano-9B-v2 / 12B-v2, Nemotron 3 Nano / Super) and the pure
Mamba-2 stacks (`mamba2`: Mamba-Codestral): Llama's decoder (jsoft.models.llama) with one block a layer
(`Config.layer_blocks`) after its RMS norm: Mamba-2, attention without positions, a ReLU² MLP without a gate, or
DeepSeek-V3's router over ungated experts beside a shared MLP.

Checkpoint names are NVIDIA's, as transformers saves them: `backbone.embeddings` (older Mamba-2 checkpoints:
`backbone.embedding`), `backbone.layers.0.norm`, `backbone.layers.0.mixer.*` whatever the block, `backbone.norm_f`,
`lm_head`; one tensor per expert (`mixer.experts.{e}.up_proj.weight`)."""

from __future__ import annotations

from jsoft.models import llama

TASKS, Config, build = llama.TASKS, llama.Config, llama.build
BASE_PREFIX = "backbone"
# jsoft's module names -> the checkpoints' (every block is its layer's `mixer`)
NAMES = {"model": BASE_PREFIX, "embed_tokens": "embeddings", "self_attn": "mixer", "mamba": "mixer", "mlp": "mixer"}


def checkpoint_key(path: tuple) -> tuple[str | tuple[str, ...], bool]:
    names, transpose = llama.checkpoint_key(tuple(NAMES.get(str(part), part) for part in path))
    if names == f"{BASE_PREFIX}.embeddings.weight":  # and as Mamba2Model's load hook reads older checkpoints
        names = (names, f"{BASE_PREFIX}.embedding.weight")
    return names, transpose
