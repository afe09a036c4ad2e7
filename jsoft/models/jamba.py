"""Jamba (ai21labs/Jamba-v0.1, AI21-Jamba-Mini / Large 1.5 - 1.7): Llama's decoder (jsoft.models.llama) whose layers
are Mamba (jsoft.models.mamba, its steps, B and C RMS-normed with weights) or attention without positions, each followed
by a gated MLP or a mixture of experts (softmax top-k, not renormalised). Checkpoint names are transformers':
`model.layers.0.mamba.*` / `self_attn`, `input_layernorm`, `pre_ff_layernorm`, `feed_forward` (its experts' router
`feed_forward.router`, one tensor per expert `feed_forward.experts.{e}.gate_proj.weight`), `model.final_layernorm`."""

from __future__ import annotations

from jsoft.models import llama

TASKS, BASE_PREFIX, Config, build = llama.TASKS, llama.BASE_PREFIX, llama.Config, llama.build


def checkpoint_key(path: tuple) -> tuple[str | tuple[str, ...], bool]:
    path = tuple("router" if str(part) == "gate" and str(path[i - 1]) == "feed_forward" else part
                 for i, part in enumerate(path))
    return llama.checkpoint_key(path)
