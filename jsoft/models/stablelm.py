"""StableLM (stablelm-3b-4e1t, StableLM 2 1.6b / 12b, stable-code): Llama's attention and gated MLP between
LayerNorms (with biases), rotary embeddings on a leading fraction of each head (`partial_rotary_factor`), optional
query / key / value biases, per-head query and key LayerNorms (`qk_layernorm`, each head its own weights) and
parallel residuals (`use_parallel_residual`). StarCoder2, Cohere and Nemotron (jsoft.models.starcoder2, .cohere,
.nemotron) are this layer with their own MLP, attention or norms.

Module tree mirrors transformers' (`model.layers.0.self_attn.q_layernorm.norms.3`, `lm_head`, `score`)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from jsoft.models import heads, llama, ops, rotary
from jsoft.models.base import hf_name, is_kernel
from jsoft.models.layers import DropoutRng, KVCache, LayerNorm, Precision, axes, embed, run_layers

TASKS = (None, "causal_lm", "seq_cls", "token_cls")
BASE_PREFIX = "model"


@dataclasses.dataclass
class Config(llama.Config):
    """Llama's config (RoPE, attention and MLP fields) with the LayerNorm decoders' own."""

    layer_norm_eps: float = 1e-5
    parallel_residual: bool = False  # x + attn(ln(x)) + mlp(ln(x)); else sequential with a second LayerNorm
    hidden_dropout: float = 0.0  # on the MLP's output (Llama's resid_dropout: on the attention's)
    head_layernorm: bool = False  # StableLM's qk_layernorm: a LayerNorm per query and key head
    norm_bias: bool = True  # the layers' and the final LayerNorm's (Cohere's have none)

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        d, h = hf["hidden_size"], hf["num_attention_heads"]
        rope = rotary.from_hf(hf)
        head_dim = d // h
        rotary_dims = int(head_dim * float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.25))))
        qkv_bias = bool(hf.get("use_qkv_bias", False))
        return cls(
            model_type="stablelm", vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf["num_hidden_layers"],
            num_heads=h, num_kv_heads=hf.get("num_key_value_heads") or h, head_dim=head_dim,
            pad_token_id=hf.get("pad_token_id"), eos_token_id=hf.get("eos_token_id"),
            bos_token_id=hf.get("bos_token_id"), intermediate_size=hf["intermediate_size"],
            activation=hf.get("hidden_act", "silu"), max_positions=hf.get("max_position_embeddings", 4096),
            **rotary.config_fields(hf, rope, rotary_dims),
            rotary_dim=None if rotary_dims == head_dim else rotary_dims,
            attention_bias=qkv_bias, attn_dropout=float(hf.get("attention_dropout") or 0.0),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            classifier_dropout=heads.classifier_dropout_rate(hf, "hidden_dropout"),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-5), parallel_residual=bool(hf.get("use_parallel_residual")),
            hidden_dropout=float(hf.get("hidden_dropout") or 0.0), head_layernorm=bool(hf.get("qk_layernorm")),
        )


def layer_norm(c: Config, p: Precision) -> LayerNorm:
    """A layer's (or the final) LayerNorm over the hidden size, as the config has it."""
    return LayerNorm(c.hidden_size, c.layer_norm_eps, p, bias=c.norm_bias, offset=c.norm_offset)


class HeadLayerNorms(nnx.Module):
    """A bias-free LayerNorm per head (`norms.{h}.weight`, loaded stacked into `scale [heads, K]`)."""

    def __init__(self, heads_: int, head_dim: int, eps: float, p: Precision):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((heads_, head_dim), p.param_dtype), **axes(None, None))

    def __call__(self, x):
        return ops.layer_norm(x, self.scale[...], jnp.zeros((), jnp.float32), self.eps).astype(x.dtype)


class Attention(llama.Attention):
    head_norm_names = ("q_layernorm", "k_layernorm")  # the per-head norms' checkpoint names

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        super().__init__(c, p, rngs)
        if c.head_layernorm:
            q_name, k_name = self.head_norm_names
            setattr(self, q_name, HeadLayerNorms(c.num_heads, c.head_dim, c.layer_norm_eps, p))
            setattr(self, k_name, HeadLayerNorms(c.num_kv_heads, c.head_dim, c.layer_norm_eps, p))

    def norm_heads(self, q, k):
        if not self.c.head_layernorm:
            return q, k
        q_norm, k_norm = (getattr(self, name) for name in self.head_norm_names)
        return q_norm(q), k_norm(k)


class DecoderLayer(nnx.Module):
    mlp_class, attention_class = llama.MLP, Attention

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.dtype = p.dtype
        self.input_layernorm = layer_norm(c, p)
        self.self_attn = self.attention_class(c, p, rngs)
        self.mlp = self.mlp_class(c, p, rngs)
        if not c.parallel_residual:
            self.post_attention_layernorm = layer_norm(c, p)

    def __call__(self, x, mask, rope, **kw):
        drop = kw["drop"]
        h = self.input_layernorm(x).astype(self.dtype)
        a, new_cache = self.self_attn(h, mask, rope, **kw)
        a = drop(a, self.c.resid_dropout)
        if self.c.parallel_residual:
            return x + a + drop(self.mlp(h), self.c.hidden_dropout), new_cache
        x = x + a
        return x + drop(self.mlp(self.post_attention_layernorm(x).astype(self.dtype)), self.c.hidden_dropout), new_cache


class Model(nnx.Module):
    layer_class = DecoderLayer

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.dtype = p.dtype
        self.embed_tokens = embed(c.vocab_size, c.hidden_size, p, rngs=rngs)
        self.layers = nnx.List([self.layer_class(c, p, rngs) for _ in range(c.num_layers)])
        self.norm = layer_norm(c, p)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                 prefix_kv=None, prefix_mask=None, cache: KVCache | None = None, drop=None):
        drop = drop or DropoutRng(None)
        x, rope, mask = rotary.stack_inputs(self.c, self.embed_tokens, input_ids, attention_mask, position_ids,
                                            inputs_embeds, prefix_kv, cache, self.dtype)
        x, cache = run_layers(self.layers, drop(x, self.c.embd_dropout), mask, rope, cache=cache,
                              prefix_kv=prefix_kv, prefix_mask=prefix_mask, drop=drop)
        return self.norm(x).astype(self.dtype), cache


class StableLm(heads.DecoderOnlyLM):
    """StableLM (or StarCoder2, Cohere, Nemotron: their `Model`, their config) with the head for `task` (None,
    causal_lm, seq_cls, token_cls)."""

    model_class = Model

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.model = self.model_class(c, p, rngs)
        self.logits_scaling = c.logits_scaling
        self.add_heads(c, task, num_labels, p, rngs, token_cls_name="score")

    @property
    def decoder(self) -> Model:
        return self.model

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.model.embed_tokens


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> StableLm:
    return StableLm(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    """Every kernel is a torch nn.Linear `[out, in]`; a per-head norm's weights are `norms.{h}.weight`."""
    if len(path) >= 2 and str(path[-2]) in ("q_layernorm", "k_layernorm"):
        return hf_name((*path[:-1], "norms", "{}", path[-1])), False
    return hf_name(path), is_kernel(path)
