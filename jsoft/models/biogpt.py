"""BioGPT (microsoft/biogpt, BioGPT-Large): XGLM's decoder (jsoft.models.xglm: OPT's pre-LayerNorm layers over token
lookups scaled by sqrt(hidden_size), a final LayerNorm) with learned positions (table rows offset by 2), under
transformers' names: `biogpt.embed_tokens`, `biogpt.layers.0.self_attn.q_proj`, `output_projection` (the LM head,
tied to the token embeddings), `score` (seq_cls, on the last non-pad token) and `classifier` (token_cls)."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jsoft.models import heads, xglm
from jsoft.models.base import hf_name, is_kernel
from jsoft.models.layers import Precision, activation

TASKS = (None, "causal_lm", "seq_cls", "token_cls")
BASE_PREFIX = "biogpt"


@dataclasses.dataclass
class Config(xglm.Config):
    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        d, h = hf.get("hidden_size", 1024), hf.get("num_attention_heads", 16)
        if d % h:
            raise ValueError(f"config.json hidden_size={d} is not a multiple of num_attention_heads={h}")
        act = hf.get("hidden_act", "gelu")
        activation(act)  # fail early on an unsupported activation
        return cls(
            model_type="biogpt", vocab_size=hf.get("vocab_size", 42384), hidden_size=d,
            num_layers=hf.get("num_hidden_layers", 24), num_heads=h, num_kv_heads=h, head_dim=d // h,
            pad_token_id=hf.get("pad_token_id", 1), eos_token_id=hf.get("eos_token_id", 2),
            bos_token_id=hf.get("bos_token_id", 0), ffn_dim=hf.get("intermediate_size", 4096), word_embed_proj_dim=d,
            max_position_embeddings=hf.get("max_position_embeddings", 1024), activation_function=act,
            dropout=hf.get("hidden_dropout_prob", 0.1), attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            tie_word_embeddings=hf.get("tie_word_embeddings", True) is not False,
            scale_embedding=hf.get("scale_embedding", True) is not False, learned_positions=True,
            classifier_dropout=heads.classifier_dropout_rate(hf, "hidden_dropout_prob"),
        )


class BioGpt(heads.DecoderOnlyLM):
    """BioGPT with the head for `task` (None, causal_lm, seq_cls, token_cls)."""

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.biogpt = xglm.XGLMModel(c, p, rngs)
        self.add_heads(c, task, num_labels, p, rngs)

    @property
    def decoder(self) -> xglm.XGLMModel:
        return self.biogpt

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.biogpt.embed_tokens


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> BioGpt:
    return BioGpt(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    if str(path[0]) == "lm_head":  # an untied LM head: transformers' `output_projection`
        path = ("output_projection", *path[1:])
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]
