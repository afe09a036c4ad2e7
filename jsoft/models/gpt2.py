"""GPT-2 (pre-LayerNorm decoder, learned positions, tied LM head unless `tie_word_embeddings=False`).

Module tree mirrors transformers' (`transformer.h.0.attn.c_attn`, `score`, `classifier`) so
checkpoint names map one to one; GPT-2's Conv1D weights are already `[in, out]`."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from jsoft.models import heads
from jsoft.models.base import TransformerConfig, default_positions, hf_name, is_kernel
from jsoft.models.layers import (
    DropoutRng,
    KVCache,
    LayerNorm,
    Precision,
    activation,
    attention_mask_4d,
    dense,
    dot_product_attention,
    embed,
    merge_heads,
    run_layers,
    self_attention_kv,
    split_heads,
)

TASKS = (None, "causal_lm", "seq_cls", "token_cls")
BASE_PREFIX = "transformer"


@dataclasses.dataclass
class Config(TransformerConfig):
    max_positions: int = 1024
    inner_size: int = 0
    activation: str = "gelu_new"
    layer_norm_eps: float = 1e-5
    resid_dropout: float = 0.1
    embd_dropout: float = 0.1
    attn_dropout: float = 0.1
    classifier_dropout: float = 0.1
    scale_attn_weights: bool = True  # scores / sqrt(head_dim)
    scale_attn_by_inverse_layer_idx: bool = False  # and / (layer + 1)
    tie_word_embeddings: bool = True  # False: a separate `lm_head.weight` in the checkpoint

    @property
    def position_table_size(self) -> int:
        return self.max_positions

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        # reorder_and_upcast_attn needs no option: scores and softmax are always fp32 here (half operands
        # multiply exactly into the fp32 accumulator, as transformers' upcast q.float() @ k.float() does)
        if hf.get("add_cross_attention"):
            raise ValueError("GPT-2 config option add_cross_attention=True is not supported by jsoft")
        d, h = hf["n_embd"], hf["n_head"]
        return cls(
            model_type="gpt2", vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf["n_layer"],
            num_heads=h, num_kv_heads=h, head_dim=d // h, pad_token_id=hf.get("pad_token_id"),
            eos_token_id=hf.get("eos_token_id"), bos_token_id=hf.get("bos_token_id"),
            max_positions=hf.get("n_positions", 1024), inner_size=hf.get("n_inner") or 4 * d,
            activation=hf.get("activation_function", "gelu_new"),
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            resid_dropout=hf.get("resid_pdrop", 0.1), embd_dropout=hf.get("embd_pdrop", 0.1),
            attn_dropout=hf.get("attn_pdrop", 0.1),
            classifier_dropout=heads.classifier_dropout_rate(hf, "hidden_dropout"),
            scale_attn_weights=bool(hf.get("scale_attn_weights", True)),
            scale_attn_by_inverse_layer_idx=bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        )

    def attention_scale(self, layer: int) -> float:
        scale = self.head_dim ** -0.5 if self.scale_attn_weights else 1.0
        return scale / (layer + 1) if self.scale_attn_by_inverse_layer_idx else scale


class Attention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.c_attn = dense(c.hidden_size, 3 * c.hidden_size, ("embed", "joined_kv"), p, rngs=rngs)
        self.c_proj = dense(c.hidden_size, c.hidden_size, ("joined_kv", "embed"), p, rngs=rngs)

    def __call__(self, x, mask, *, layer, cache, prefix_kv, prefix_mask, drop: DropoutRng):
        q, k, v = self.project(x)
        k, v, mask, new_cache = self_attention_kv(k, v, mask, layer=layer, cache=cache,
                                                  prefix_kv=prefix_kv, prefix_mask=prefix_mask)
        out = dot_product_attention(q, k, v, mask, scale=self.c.attention_scale(layer), dropout=drop,
                                    dropout_rate=self.c.attn_dropout)
        return drop(self.c_proj(merge_heads(out)), self.c.resid_dropout), new_cache

    def project(self, x):
        """Queries `[B, T, N, K]`, keys and values `[B, T, G, K]`."""
        return (split_heads(t, self.c.num_heads) for t in jnp.split(self.c_attn(x), 3, axis=-1))


class MLP(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.act = activation(c.activation)
        self.c_fc = dense(c.hidden_size, c.inner_size, ("embed", "mlp"), p, rngs=rngs)
        self.c_proj = dense(c.inner_size, c.hidden_size, ("mlp", "embed"), p, rngs=rngs)

    def __call__(self, x, drop: DropoutRng):
        return drop(self.c_proj(self.act(self.c_fc(x))), self.c.resid_dropout)


class Block(nnx.Module):
    attention_class = Attention  # GPT-Neo's block is this one with its own

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.ln_1 = LayerNorm(c.hidden_size, c.layer_norm_eps, p)
        self.attn = self.attention_class(c, p, rngs)
        self.ln_2 = LayerNorm(c.hidden_size, c.layer_norm_eps, p)
        self.mlp = MLP(c, p, rngs)
        self.dtype = p.dtype

    def __call__(self, x, mask, **kw):
        a, new_cache = self.attn(self.ln_1(x).astype(self.dtype), mask, **kw)
        x = x + a
        return x + self.mlp(self.ln_2(x).astype(self.dtype), kw["drop"]), new_cache


class GPT2Model(nnx.Module):
    block = Block  # the layer class (GPT-Neo's stack is GPT-2's with its own)

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.dtype = p.dtype
        self.wte = embed(c.vocab_size, c.hidden_size, p, rngs=rngs)
        self.wpe = embed(c.max_positions, c.hidden_size, p, rngs=rngs, names=(None, "embed"))
        self.h = nnx.List([self.block(c, p, rngs) for _ in range(c.num_layers)])
        self.ln_f = LayerNorm(c.hidden_size, c.layer_norm_eps, p)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                 prefix_kv=None, prefix_mask=None, cache: KVCache | None = None, drop=None):
        drop = drop or DropoutRng(None)
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        B, T = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = default_positions(B, T, prefix_kv, cache, self.c)
        x = drop((inputs_embeds + self.wpe(position_ids)).astype(self.dtype), self.c.embd_dropout)
        S = T if cache is None else cache.slots
        mask = attention_mask_4d(attention_mask, T, S, causal=True,
                                 q_offset=0 if cache is None else cache.index)
        x, cache = run_layers(self.h, x, mask, cache=cache, prefix_kv=prefix_kv,
                              prefix_mask=prefix_mask, drop=drop)
        return self.ln_f(x).astype(self.dtype), cache


class GPT2(heads.DecoderOnlyLM):
    """GPT-2 (or GPT-Neo, GPT-BigCode: their stack, their config) with the head for `task` (None, causal_lm,
    seq_cls, token_cls)."""

    model_class = GPT2Model

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.transformer = self.model_class(c, p, rngs)
        self.add_heads(c, task, num_labels, p, rngs)

    @property
    def decoder(self) -> GPT2Model:
        return self.transformer

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.transformer.wte


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> GPT2:
    return GPT2(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    # GPT-2's Conv1D weights are already [in, out]; only the heads are torch nn.Linear
    return hf_name(path), is_kernel(path) and str(path[-2]) in ("score", "classifier", "lm_head")
