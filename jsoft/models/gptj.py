"""GPT-J (EleutherAI's GPT-J-6B and its fine-tunes): one LayerNorm feeding attention and MLP in parallel, rotary
embeddings on the leading `rotary_dim` dims of each head with GPT-J's interleaved pairs (rotate_every_two), bias-free
attention projections, an LM head with a bias.

Module tree mirrors transformers' (`transformer.h.0.attn.q_proj`, `lm_head`, `score`)."""

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

TASKS = (None, "causal_lm", "seq_cls")
BASE_PREFIX = "transformer"


@dataclasses.dataclass
class Config(llama.Config):
    """Llama's config (its RoPE fields and functions serve here) with GPT-J's own fields."""

    layer_norm_eps: float = 1e-5

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        d, h = hf["n_embd"], hf["n_head"]
        if d % h:
            raise ValueError(f"config.json n_embd={d} is not a multiple of n_head={h}")
        if hf.get("tie_word_embeddings"):
            raise ValueError("config.json tie_word_embeddings=True (GPT-J's LM head tied to wte, its bias kept) is "
                             "not supported by jsoft; GPT-J checkpoints have a separate lm_head")
        rotary_dim = hf.get("rotary_dim") or d // h  # transformers: None rotates every dim
        if rotary_dim > d // h or rotary_dim % 2:
            raise ValueError(f"config.json rotary_dim={rotary_dim}: must be even and at most the head size {d // h}")
        return cls(
            model_type="gptj", vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf["n_layer"], num_heads=h,
            num_kv_heads=h, head_dim=d // h, pad_token_id=hf.get("pad_token_id"), eos_token_id=hf.get("eos_token_id"),
            bos_token_id=hf.get("bos_token_id"), intermediate_size=hf.get("n_inner") or 4 * d,
            activation=hf.get("activation_function", "gelu_new"), max_positions=hf.get("n_positions", 2048),
            **rotary.config_fields(hf, rotary.from_hf({}), rotary_dim), rotary_dim=rotary_dim,
            rope_interleaved=True,
            attn_dropout=float(hf.get("attn_pdrop") or 0.0), resid_dropout=float(hf.get("resid_pdrop") or 0.0),
            embd_dropout=float(hf.get("embd_pdrop") or 0.0),
            classifier_dropout=heads.classifier_dropout_rate(hf, "resid_pdrop"),
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        )


class Attention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        d = c.hidden_size
        self.q_proj = dense(d, d, ("embed", "joined_kv"), p, bias=False, rngs=rngs)
        self.k_proj = dense(d, d, ("embed", "joined_kv"), p, bias=False, rngs=rngs)
        self.v_proj = dense(d, d, ("embed", "joined_kv"), p, bias=False, rngs=rngs)
        self.out_proj = dense(d, d, ("joined_kv", "embed"), p, bias=False, rngs=rngs)

    def __call__(self, x, mask, cos_sin, *, layer, cache, prefix_kv, prefix_mask, drop: DropoutRng):
        q, k, v = self.project(x)
        q, k = (rotary.apply(t, *cos_sin, interleaved=self.c.rope_interleaved) for t in (q, k))
        k, v, mask, new_cache = self_attention_kv(k, v, mask, layer=layer, cache=cache, prefix_kv=prefix_kv,
                                                  prefix_mask=prefix_mask)
        out = dot_product_attention(q, k, v, mask, scale=self.c.head_dim ** -0.5, dropout=drop,
                                    dropout_rate=self.c.attn_dropout)
        return drop(self.out_proj(merge_heads(out)), self.c.resid_dropout), new_cache

    def project(self, x):
        """Queries, keys and values `[B, T, N, K]`."""
        return (split_heads(proj(x), self.c.num_heads) for proj in (self.q_proj, self.k_proj, self.v_proj))


class MLP(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.act = activation(c.activation)
        self.fc_in = dense(c.hidden_size, c.intermediate_size, ("embed", "mlp"), p, rngs=rngs)
        self.fc_out = dense(c.intermediate_size, c.hidden_size, ("mlp", "embed"), p, rngs=rngs)

    def __call__(self, x, drop: DropoutRng):
        return drop(self.fc_out(self.act(self.fc_in(x))), self.c.resid_dropout)


class Block(nnx.Module):
    attention_class = Attention  # CodeGen's block is this one with its own

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.ln_1 = LayerNorm(c.hidden_size, c.layer_norm_eps, p)
        self.attn = self.attention_class(c, p, rngs)
        self.mlp = MLP(c, p, rngs)
        self.dtype = p.dtype

    def __call__(self, x, mask, cos_sin, **kw):
        h = self.ln_1(x).astype(self.dtype)
        a, new_cache = self.attn(h, mask, cos_sin, **kw)
        return x + a + self.mlp(h, kw["drop"]), new_cache


class GPTJModel(nnx.Module):
    block = Block

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.dtype = p.dtype
        self.wte = embed(c.vocab_size, c.hidden_size, p, rngs=rngs)
        self.h = nnx.List([self.block(c, p, rngs) for _ in range(c.num_layers)])
        self.ln_f = LayerNorm(c.hidden_size, c.layer_norm_eps, p)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                 prefix_kv=None, prefix_mask=None, cache: KVCache | None = None, drop=None):
        drop = drop or DropoutRng(None)
        x, rope, mask = rotary.stack_inputs(self.c, self.wte, input_ids, attention_mask, position_ids,
                                            inputs_embeds, prefix_kv, cache, self.dtype)
        x = drop(x, self.c.embd_dropout)
        x, cache = run_layers(self.h, x, mask, rope["global"], cache=cache, prefix_kv=prefix_kv,
                              prefix_mask=prefix_mask, drop=drop)
        return self.ln_f(x).astype(self.dtype), cache


class GPTJ(heads.DecoderOnlyLM):
    """GPT-J (or CodeGen: its stack) with the head for `task` (None, causal_lm, seq_cls)."""

    model_class = GPTJModel

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.transformer = self.model_class(c, p, rngs)
        self.add_heads(c, task, num_labels, p, rngs, lm_head_bias=True)

    @property
    def decoder(self) -> GPTJModel:
        return self.transformer

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.transformer.wte


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> GPTJ:
    return GPTJ(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]
