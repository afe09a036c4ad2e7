"""Phi (phi-1, phi-1.5, phi-2): one LayerNorm feeding attention and MLP in parallel, rotary embeddings on a
leading fraction of each head (`partial_rotary_factor`), biases everywhere, an LM head with a bias.

Module tree mirrors transformers' (`model.layers.0.self_attn.q_proj`, `lm_head`, `score`)."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jsoft.models import heads, llama, rotary
from jsoft.models.base import hf_name, is_kernel
from jsoft.models.layers import (
    DropoutRng,
    KVCache,
    LayerNorm,
    Precision,
    activation,
    dense,
    dot_product_attention,
    embed,
    merge_heads,
    run_layers,
    self_attention_kv,
    split_heads,
)

TASKS = (None, "causal_lm", "seq_cls", "token_cls")
BASE_PREFIX = "model"


@dataclasses.dataclass
class Config(llama.Config):
    """Llama's config (its RoPE fields and functions serve here) with Phi's own fields."""

    qk_layernorm: bool = False  # LayerNorms over each query and key head
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        d, h = hf["hidden_size"], hf["num_attention_heads"]
        rope = rotary.from_hf(hf)
        head_dim = hf.get("head_dim") or d // h
        factor = float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5)))
        return cls(
            model_type="phi", vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf["num_hidden_layers"],
            num_heads=h, num_kv_heads=hf.get("num_key_value_heads") or h, head_dim=head_dim,
            pad_token_id=hf.get("pad_token_id"), eos_token_id=hf.get("eos_token_id"),
            bos_token_id=hf.get("bos_token_id"), intermediate_size=hf["intermediate_size"],
            activation=hf.get("hidden_act", "gelu_new"), max_positions=hf.get("max_position_embeddings", 2048),
            **rotary.config_fields(hf, rope, int(head_dim * factor)),
            attn_dropout=float(hf.get("attention_dropout") or 0.0),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            classifier_dropout=heads.classifier_dropout_rate(hf, "resid_pdrop"),
            rotary_dim=int(head_dim * factor), qk_layernorm=bool(hf.get("qk_layernorm", False)),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-5), resid_dropout=float(hf.get("resid_pdrop") or 0.0),
            embd_dropout=float(hf.get("embd_pdrop") or 0.0),
        )


class Attention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        d, q_width = c.hidden_size, c.num_heads * c.head_dim
        self.q_proj = dense(d, q_width, ("embed", "joined_kv"), p, rngs=rngs)
        self.k_proj = dense(d, c.kv_width, ("embed", "joined_kv"), p, rngs=rngs)
        self.v_proj = dense(d, c.kv_width, ("embed", "joined_kv"), p, rngs=rngs)
        self.dense = dense(q_width, d, ("joined_kv", "embed"), p, rngs=rngs)
        if c.qk_layernorm:
            self.q_layernorm = LayerNorm(c.head_dim, c.layer_norm_eps, p, names=(None,))
            self.k_layernorm = LayerNorm(c.head_dim, c.layer_norm_eps, p, names=(None,))

    def __call__(self, x, mask, cos_sin, *, layer, cache, prefix_kv, prefix_mask, drop: DropoutRng):
        q, k = split_heads(self.q_proj(x), self.c.num_heads), split_heads(self.k_proj(x), self.c.num_kv_heads)
        if self.c.qk_layernorm:
            q, k = self.q_layernorm(q).astype(x.dtype), self.k_layernorm(k).astype(x.dtype)
        q, k = rotary.apply(q, *cos_sin), rotary.apply(k, *cos_sin)
        v = split_heads(self.v_proj(x), self.c.num_kv_heads)
        k, v, mask, new_cache = self_attention_kv(k, v, mask, layer=layer, cache=cache, prefix_kv=prefix_kv,
                                                  prefix_mask=prefix_mask)
        out = dot_product_attention(q, k, v, mask, scale=self.c.head_dim ** -0.5, dropout=drop,
                                    dropout_rate=self.c.attn_dropout)
        return self.dense(merge_heads(out)), new_cache


class MLP(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.act = activation(c.activation)
        self.fc1 = dense(c.hidden_size, c.intermediate_size, ("embed", "mlp"), p, rngs=rngs)
        self.fc2 = dense(c.intermediate_size, c.hidden_size, ("mlp", "embed"), p, rngs=rngs)

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DecoderLayer(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.input_layernorm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)
        self.self_attn = Attention(c, p, rngs)
        self.mlp = MLP(c, p, rngs)
        self.dtype = p.dtype

    def __call__(self, x, mask, cos_sin, **kw):
        h = self.input_layernorm(x).astype(self.dtype)
        a, new_cache = self.self_attn(h, mask, cos_sin, **kw)
        drop = kw["drop"]
        return x + drop(a, self.c.resid_dropout) + drop(self.mlp(h), self.c.resid_dropout), new_cache


class PhiModel(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.dtype = p.dtype
        self.embed_tokens = embed(c.vocab_size, c.hidden_size, p, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(c, p, rngs) for _ in range(c.num_layers)])
        self.final_layernorm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                 prefix_kv=None, prefix_mask=None, cache: KVCache | None = None, drop=None):
        drop = drop or DropoutRng(None)
        x, rope, mask = rotary.stack_inputs(self.c, self.embed_tokens, input_ids, attention_mask, position_ids,
                                            inputs_embeds, prefix_kv, cache, self.dtype)
        x = drop(x, self.c.embd_dropout)
        x, cache = run_layers(self.layers, x, mask, rope["global"], cache=cache, prefix_kv=prefix_kv,
                              prefix_mask=prefix_mask, drop=drop)
        return self.final_layernorm(x).astype(self.dtype), cache


class Phi(heads.DecoderOnlyLM):
    """Phi with the head for `task` (None, causal_lm, seq_cls, token_cls)."""

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.model = PhiModel(c, p, rngs)
        self.add_heads(c, task, num_labels, p, rngs, token_cls_name="score", lm_head_bias=True)

    @property
    def decoder(self) -> PhiModel:
        return self.model

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.model.embed_tokens


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> Phi:
    return Phi(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]


