"""StarCoder2 (3b / 7b / 15b): StableLM's sequential LayerNorm layer with Llama's attention (biases everywhere by
default, `use_bias`; every layer sliding when `sliding_window` is set) and a two-matrix MLP (`c_fc`, `c_proj`).

Module tree mirrors transformers' (`model.layers.0.mlp.c_fc`, `lm_head`, `score`)."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jsoft.models import heads, rotary, stablelm
from jsoft.models.layers import Precision, activation, dense

TASKS = stablelm.TASKS
BASE_PREFIX = "model"
checkpoint_key = stablelm.checkpoint_key


@dataclasses.dataclass
class Config(stablelm.Config):
    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        d, h, n = hf["hidden_size"], hf["num_attention_heads"], hf["num_hidden_layers"]
        bias, window = bool(hf.get("use_bias", True)), hf.get("sliding_window") or None
        residual_dropout = float(hf.get("residual_dropout") or 0.0)
        return cls(
            model_type="starcoder2", vocab_size=hf["vocab_size"], hidden_size=d, num_layers=n, num_heads=h,
            num_kv_heads=hf.get("num_key_value_heads") or h, head_dim=d // h, pad_token_id=hf.get("pad_token_id"),
            eos_token_id=hf.get("eos_token_id"), bos_token_id=hf.get("bos_token_id"),
            intermediate_size=hf["intermediate_size"], activation=hf.get("hidden_act", "gelu_pytorch_tanh"),
            max_positions=hf.get("max_position_embeddings", 4096),
            **rotary.config_fields(hf, rotary.from_hf(hf), d // h),
            attention_bias=bias, attention_out_bias=bias, mlp_bias=bias,
            sliding_window=window, sliding_layers=(True,) * n if window else (),
            attn_dropout=float(hf.get("attention_dropout") or 0.0), resid_dropout=residual_dropout,
            hidden_dropout=residual_dropout, embd_dropout=float(hf.get("embedding_dropout") or 0.0),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
            classifier_dropout=heads.classifier_dropout_rate(hf, "hidden_dropout"),
            layer_norm_eps=hf.get("norm_epsilon", 1e-5),
        )


class MLP(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.act = activation(c.activation)
        self.c_fc = dense(c.hidden_size, c.intermediate_size, ("embed", "mlp"), p, bias=c.mlp_bias, rngs=rngs)
        self.c_proj = dense(c.intermediate_size, c.hidden_size, ("mlp", "embed"), p, bias=c.mlp_bias, rngs=rngs)

    def __call__(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class DecoderLayer(stablelm.DecoderLayer):
    mlp_class = MLP


class Model(stablelm.Model):
    layer_class = DecoderLayer


class Starcoder2(stablelm.StableLm):
    model_class = Model


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> Starcoder2:
    return Starcoder2(c, task, num_labels, p, rngs)
