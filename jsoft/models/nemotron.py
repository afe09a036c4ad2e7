"""Nemotron (Nemotron-3 / 4, Minitron 4b / 8b, Nemotron-Mini): StableLM's sequential LayerNorm layer with
LayerNorms that scale by `1 + weight` (LayerNorm1P), rotary embeddings on half of each head by default, and an
ungated MLP (`up_proj`, ReLU^2, `down_proj`).

Module tree mirrors transformers' (`model.layers.0.mlp.up_proj`, `lm_head`, `score`)."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jsoft.models import heads, rotary, stablelm
from jsoft.models.layers import Precision

TASKS = stablelm.TASKS
BASE_PREFIX = "model"
checkpoint_key = stablelm.checkpoint_key


@dataclasses.dataclass
class Config(stablelm.Config):
    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        d, h = hf["hidden_size"], hf["num_attention_heads"]
        rope = rotary.from_hf(hf)
        head_dim = hf.get("head_dim") or d // h
        rotary_dims = int(head_dim * float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))))
        bias = bool(hf.get("attention_bias", False))
        return cls(
            model_type="nemotron", vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf["num_hidden_layers"],
            num_heads=h, num_kv_heads=hf.get("num_key_value_heads") or h, head_dim=head_dim,
            pad_token_id=hf.get("pad_token_id"), eos_token_id=hf.get("eos_token_id"),
            bos_token_id=hf.get("bos_token_id"), intermediate_size=hf["intermediate_size"],
            activation=hf.get("hidden_act", "relu2"), max_positions=hf.get("max_position_embeddings", 4096),
            **rotary.config_fields(hf, rope, rotary_dims),
            rotary_dim=None if rotary_dims == head_dim else rotary_dims,
            attention_bias=bias, attention_out_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)), gated_mlp=False,
            attn_dropout=float(hf.get("attention_dropout") or 0.0),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            classifier_dropout=heads.classifier_dropout_rate(hf, "hidden_dropout"),
            layer_norm_eps=hf.get("norm_eps", 1e-5), norm_offset=1.0,
        )


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> stablelm.StableLm:
    return stablelm.StableLm(c, task, num_labels, p, rngs)
