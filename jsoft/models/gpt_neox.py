"""GPT-NeoX (Pythia): pre-LayerNorm decoder with rotary embeddings on a leading fraction of each head
(`partial_rotary_factor`, Pythia's `rotary_pct` 0.25) and, by default, parallel attention and MLP residuals.

Module tree mirrors transformers' (`gpt_neox.layers.0.attention.query_key_value`, `lm_head` or the older
`embed_out`, `score`, `classifier`). The fused query/key/value projection is interleaved per head, `[H, 3, K]`."""

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
)

TASKS = (None, "causal_lm", "seq_cls", "token_cls")
BASE_PREFIX = "gpt_neox"


@dataclasses.dataclass
class Config(llama.Config):
    """Llama's config (its RoPE fields and functions serve here) with GPT-NeoX's own fields."""

    parallel_residual: bool = True  # x + attn(ln1(x)) + mlp(ln2(x)); else sequential
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.0

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        d, h = hf["hidden_size"], hf["num_attention_heads"]
        if d % h:
            raise ValueError(f"config.json hidden_size={d} is not a multiple of num_attention_heads={h}")
        # older config.json files (Pythia) spell RoPE rotary_emb_base / rotary_pct
        rope = rotary.from_hf({"rope_theta": hf.get("rotary_emb_base", 10000.0), **hf})
        factor = float(rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)))  # transformers default: 0.25
        bias = bool(hf.get("attention_bias", True))
        return cls(
            model_type="gpt_neox", vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf["num_hidden_layers"],
            num_heads=h, num_kv_heads=h, head_dim=d // h, pad_token_id=hf.get("pad_token_id"),
            eos_token_id=hf.get("eos_token_id"), bos_token_id=hf.get("bos_token_id"),
            intermediate_size=hf.get("intermediate_size") or 4 * d, activation=hf.get("hidden_act", "gelu"),
            max_positions=hf.get("max_position_embeddings", 2048),
            **rotary.config_fields(hf, rope, int(d // h * factor)),
            attention_bias=bias, attention_out_bias=bias, attn_dropout=float(hf.get("attention_dropout") or 0.0),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            classifier_dropout=heads.classifier_dropout_rate(hf, "hidden_dropout"),
            rotary_dim=int(d // h * factor), parallel_residual=bool(hf.get("use_parallel_residual", True)),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-5), hidden_dropout=float(hf.get("hidden_dropout") or 0.0),
        )


class Attention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        d = c.hidden_size
        self.query_key_value = dense(d, 3 * d, ("embed", "joined_kv"), p, bias=c.attention_bias, rngs=rngs)
        self.dense = dense(d, d, ("joined_kv", "embed"), p, bias=c.attention_out_bias, rngs=rngs)

    def __call__(self, x, mask, cos_sin, *, layer, cache, prefix_kv, prefix_mask, drop: DropoutRng):
        B, T, _ = x.shape
        qkv = self.query_key_value(x).reshape(B, T, self.c.num_heads, 3, self.c.head_dim)
        q, k, v = rotary.apply(qkv[..., 0, :], *cos_sin), rotary.apply(qkv[..., 1, :], *cos_sin), qkv[..., 2, :]
        k, v, mask, new_cache = self_attention_kv(k, v, mask, layer=layer, cache=cache, prefix_kv=prefix_kv,
                                                  prefix_mask=prefix_mask)
        out = dot_product_attention(q, k, v, mask, scale=self.c.head_dim ** -0.5, dropout=drop,
                                    dropout_rate=self.c.attn_dropout)
        return drop(self.dense(merge_heads(out)), self.c.hidden_dropout), new_cache


class MLP(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.act = activation(c.activation)
        self.dense_h_to_4h = dense(c.hidden_size, c.intermediate_size, ("embed", "mlp"), p, rngs=rngs)
        self.dense_4h_to_h = dense(c.intermediate_size, c.hidden_size, ("mlp", "embed"), p, rngs=rngs)

    def __call__(self, x, drop: DropoutRng):
        return drop(self.dense_4h_to_h(self.act(self.dense_h_to_4h(x))), self.c.hidden_dropout)


class Layer(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.parallel = c.parallel_residual
        self.input_layernorm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)
        self.post_attention_layernorm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)
        self.attention = Attention(c, p, rngs)
        self.mlp = MLP(c, p, rngs)
        self.dtype = p.dtype

    def __call__(self, x, mask, cos_sin, **kw):
        a, new_cache = self.attention(self.input_layernorm(x).astype(self.dtype), mask, cos_sin, **kw)
        if self.parallel:
            return x + a + self.mlp(self.post_attention_layernorm(x).astype(self.dtype), kw["drop"]), new_cache
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x).astype(self.dtype), kw["drop"]), new_cache


class GPTNeoXModel(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.dtype = p.dtype
        self.embed_in = embed(c.vocab_size, c.hidden_size, p, rngs=rngs)
        self.layers = nnx.List([Layer(c, p, rngs) for _ in range(c.num_layers)])
        self.final_layer_norm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                 prefix_kv=None, prefix_mask=None, cache: KVCache | None = None, drop=None):
        drop = drop or DropoutRng(None)
        x, rope, mask = rotary.stack_inputs(self.c, self.embed_in, input_ids, attention_mask, position_ids,
                                            inputs_embeds, prefix_kv, cache, self.dtype)
        x = drop(x, self.c.hidden_dropout)
        x, cache = run_layers(self.layers, x, mask, rope["global"], cache=cache, prefix_kv=prefix_kv,
                              prefix_mask=prefix_mask, drop=drop)
        return self.final_layer_norm(x).astype(self.dtype), cache


class GPTNeoX(heads.DecoderOnlyLM):
    """GPT-NeoX with the head for `task` (None, causal_lm, seq_cls, token_cls)."""

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.gpt_neox = GPTNeoXModel(c, p, rngs)
        self.add_heads(c, task, num_labels, p, rngs)

    @property
    def decoder(self) -> GPTNeoXModel:
        return self.gpt_neox

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.gpt_neox.embed_in


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> GPTNeoX:
    return GPTNeoX(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str | tuple[str, ...], bool]:
    name = hf_name(path)  # every kernel is a torch nn.Linear [out, in]; transformers < 5 saved lm_head as embed_out
    return (name, "embed_out.weight") if name == "lm_head.weight" else name, is_kernel(path)
