"""BioGPT (microsoft/biogpt, BioGPT-Large): XGLM's decoder (jsoft.models.xglm: OPT's pre-LayerNorm layers over token
lookups scaled by sqrt(hidden_size), a final LayerNorm) with learned positions (table rows offset by 2), under
transformers' names: `biogpt.embed_tokens`, `biogpt.layers.0.self_attn.q_proj`, `output_projection` (the LM head,
tied to the token embeddings), `score` (seq_cls, on the last non-pad token) and `classifier` (token_cls)."""

from __future__ import annotations

from flax import nnx

from jsoft.models import xglm
from jsoft.models.base import hf_name, is_kernel
from jsoft.models.layers import Precision

TASKS = (None, "causal_lm", "seq_cls", "token_cls")
BASE_PREFIX = "biogpt"
Config = xglm.Config  # read with BioGPT's config.json names (xglm.HF_KEYS)


class BioGpt(xglm.XGLM):
    stack_name = BASE_PREFIX


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> BioGpt:
    return BioGpt(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    if str(path[0]) == "lm_head":  # an untied LM head: transformers' `output_projection`
        path = ("output_projection", *path[1:])
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]
