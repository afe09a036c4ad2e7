"""Cohere (Command R / R+, Aya 23, Aya Expanse) and Cohere 2 (Command R7B, Command A): one bias-free LayerNorm
feeding attention and a gated MLP in parallel, GPT-J's interleaved rotary pairs over every dim, optional
query / key LayerNorms with weights per head (`use_qk_norm`), LM logits times `logit_scale`; Cohere 2 without
those norms, with sliding-window layers (`layer_types`, or every layer but each `sliding_window_pattern`-th) and
no RoPE on its full-attention layers.

Module tree mirrors transformers' (`model.layers.0.self_attn.q_norm`, `lm_head`)."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jsoft.models import llama_config, rotary, stablelm
from jsoft.models.base import hf_name, is_kernel
from jsoft.models.layers import Precision

TASKS = (None, "causal_lm")
BASE_PREFIX = "model"


@dataclasses.dataclass
class Config(stablelm.Config):
    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        d, h, n = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
        model_type = hf.get("model_type", "cohere")
        head_dim = hf.get("head_dim") or d // h
        sliding = llama_config.sliding_layers(hf) if model_type == "cohere2" else ()
        bias = bool(hf.get("attention_bias", False))
        return cls(
            model_type=model_type, vocab_size=hf["vocab_size"], hidden_size=d, num_layers=n, num_heads=h,
            num_kv_heads=hf.get("num_key_value_heads") or h, head_dim=head_dim, pad_token_id=hf.get("pad_token_id"),
            eos_token_id=hf.get("eos_token_id"), bos_token_id=hf.get("bos_token_id"),
            intermediate_size=hf["intermediate_size"], activation=hf.get("hidden_act", "silu"),
            max_positions=hf.get("max_position_embeddings", 8192),
            **rotary.config_fields(hf, rotary.from_hf(hf), head_dim), rope_interleaved=True,
            attention_bias=bias, attention_out_bias=bias, attn_dropout=float(hf.get("attention_dropout") or 0.0),
            sliding_window=(hf.get("sliding_window") or None) if any(sliding) else None, sliding_layers=sliding,
            # Cohere 2 rotates queries and keys in its sliding layers only
            nope_layers=tuple(not s for s in sliding or (False,) * n) if model_type == "cohere2" else (),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
            logits_scaling=1.0 / float(hf.get("logit_scale") or 1.0),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-5), parallel_residual=True, norm_bias=False,
            head_layernorm=model_type == "cohere" and bool(hf.get("use_qk_norm")),
        )


class Attention(stablelm.Attention):
    head_norm_names = ("q_norm", "k_norm")


class DecoderLayer(stablelm.DecoderLayer):
    attention_class = Attention


class Model(stablelm.Model):
    layer_class = DecoderLayer


class Cohere(stablelm.StableLm):
    model_class = Model


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> Cohere:
    return Cohere(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]; q_norm: [heads, K]
