"""NanoChat (karpathy/nanochat): Llama's decoder (jsoft.models.llama) with RMS norms without a weight, the final one
on the input embeddings too, RoPE turning each pair the other way, queries and keys RMS-normed after it, a
ReLU-squared MLP without a gate (`mlp.fc1`, `mlp.fc2`) and Gemma 2's final logit cap."""

from __future__ import annotations

from jsoft.models import llama

TASKS, BASE_PREFIX, Config, build = llama.TASKS, llama.BASE_PREFIX, llama.Config, llama.build
MLP_NAMES = {"up_proj": "fc1", "down_proj": "fc2"}  # jsoft's ungated MLP -> NanoChat's checkpoint names


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    path = tuple(MLP_NAMES.get(str(part), part) if i and str(path[i - 1]) == "mlp" else part
                 for i, part in enumerate(path))
    return llama.checkpoint_key(path)
