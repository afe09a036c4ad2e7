"""GPT-Neo (EleutherAI's 125M .. 2.7B): GPT-2's pre-LayerNorm decoder with learned positions and a tied LM head,
separate bias-free query / key / value projections, unscaled attention scores, and layers that alternate global
attention with local attention over the last `window_size` slots (`attention_types`).

Module tree mirrors transformers' (`transformer.h.0.attn.attention.q_proj`, `score`, `classifier`)."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jsoft.models import gpt2, heads
from jsoft.models.base import hf_name, is_kernel
from jsoft.models.layers import (
    DropoutRng,
    Precision,
    dense,
    dot_product_attention,
    merge_heads,
    query_slot,
    self_attention_kv,
    sliding_window,
    split_heads,
)

TASKS = (None, "causal_lm", "seq_cls", "token_cls")
BASE_PREFIX = "transformer"
ATTENTION_TYPES = ("global", "local")


@dataclasses.dataclass
class Config(gpt2.Config):
    """GPT-2's config with GPT-Neo's local layers."""

    window_size: int = 256  # how many key slots a local layer's query sees, its own included
    local_layers: tuple[bool, ...] = ()

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        d, h, n = hf["hidden_size"], hf["num_heads"], hf["num_layers"]
        if d % h:
            raise ValueError(f"config.json hidden_size={d} is not a multiple of num_heads={h}")
        kinds = hf.get("attention_layers") or _expand(hf.get("attention_types") or [[["global", "local"], 12]])
        if len(kinds) != n or not set(kinds) <= set(ATTENTION_TYPES):
            raise ValueError(f"config.json attention_types={hf.get('attention_types')!r} expands to {kinds!r}: "
                             f"expected {n} entries (num_layers), each one of {ATTENTION_TYPES}")
        return cls(
            model_type="gpt_neo", vocab_size=hf["vocab_size"], hidden_size=d, num_layers=n, num_heads=h,
            num_kv_heads=h, head_dim=d // h, pad_token_id=hf.get("pad_token_id"), eos_token_id=hf.get("eos_token_id"),
            bos_token_id=hf.get("bos_token_id"), max_positions=hf.get("max_position_embeddings", 2048),
            inner_size=hf.get("intermediate_size") or 4 * d, activation=hf.get("activation_function", "gelu_new"),
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5), resid_dropout=float(hf.get("resid_dropout") or 0.0),
            embd_dropout=float(hf.get("embed_dropout") or 0.0), attn_dropout=float(hf.get("attention_dropout") or 0.0),
            classifier_dropout=heads.classifier_dropout_rate(hf, "resid_dropout"), scale_attn_weights=False,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)), window_size=int(hf.get("window_size", 256)),
            local_layers=tuple(kind == "local" for kind in kinds),
        )


def _expand(attention_types) -> list[str]:
    """`[[["global", "local"], 12]]` -> 24 layer kinds, as transformers' GPTNeoConfig expands them."""
    try:
        return [kind for kinds, repeat in attention_types for _ in range(repeat) for kind in kinds]
    except (TypeError, ValueError):
        raise ValueError(f"config.json attention_types={attention_types!r}: expected [[kinds, repeat], ...], "
                         f"e.g. [[['global', 'local'], 12]]") from None


class SelfAttention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        d = c.hidden_size
        self.q_proj = dense(d, d, ("embed", "joined_kv"), p, bias=False, rngs=rngs)
        self.k_proj = dense(d, d, ("embed", "joined_kv"), p, bias=False, rngs=rngs)
        self.v_proj = dense(d, d, ("embed", "joined_kv"), p, bias=False, rngs=rngs)
        self.out_proj = dense(d, d, ("joined_kv", "embed"), p, rngs=rngs)

    def __call__(self, x, mask, *, layer, cache, prefix_kv, prefix_mask, drop: DropoutRng):
        q, k, v = (split_heads(proj(x), self.c.num_heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        k, v, mask, new_cache = self_attention_kv(k, v, mask, layer=layer, cache=cache, prefix_kv=prefix_kv,
                                                  prefix_mask=prefix_mask)
        if self.c.local_layers[layer]:
            mask = sliding_window(mask, self.c.window_size, query_slot(mask, x.shape[1], cache))
        out = dot_product_attention(q, k, v, mask, scale=self.c.attention_scale(layer), dropout=drop,
                                    dropout_rate=self.c.attn_dropout)
        return drop(self.out_proj(merge_heads(out)), self.c.resid_dropout), new_cache


class Attention(nnx.Module):
    """transformers' wrapper around the global or local self-attention (`attn.attention.*`)."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.attention = SelfAttention(c, p, rngs)

    def __call__(self, x, mask, **kw):
        return self.attention(x, mask, **kw)


class Block(gpt2.Block):
    attention_class = Attention


class GPTNeoModel(gpt2.GPT2Model):
    block = Block


class GPTNeo(gpt2.GPT2):
    model_class = GPTNeoModel


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> GPTNeo:
    return GPTNeo(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]
