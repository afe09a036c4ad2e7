"""XGLM (facebook/xglm-564M .. 7.5B, multilingual): OPT's pre-LayerNorm decoder layers (jsoft.models.opt.Layer: the
same names, biases and residuals) over token lookups scaled by sqrt(d_model) plus M2M100's fixed sinusoids (table
rows from 2, jsoft.models.bart.sinusoid_rows), a final LayerNorm and an LM head tied to the token embeddings.

Module tree mirrors transformers' (`model.embed_tokens`, `model.layers.0.self_attn.q_proj`, `model.layer_norm`). A
prefix counts as past length (PEFT's): real tokens take positions V..V+T-1. BioGPT (jsoft.models.biogpt) is the same
stack with learned positions."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jsoft.models import bart, heads, opt
from jsoft.models.base import default_positions, hf_name, is_kernel
from jsoft.models.layers import (
    DropoutRng,
    KVCache,
    LayerNorm,
    Precision,
    activation,
    attention_mask_4d,
    embed,
    run_layers,
)

TASKS = (None, "causal_lm")
BASE_PREFIX = "model"
FIRST_ROW = 2  # XGLM's sinusoids and BioGPT's learned table: position p reads row p + 2


# each family's config.json names for: width, heads, layers, MLP width, activation, dropout, attention dropout
HF_KEYS = {"xglm": ("d_model", "attention_heads", "num_layers", "ffn_dim", "activation_function", "dropout",
                    "attention_dropout"),
           "biogpt": ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "hidden_act",
                      "hidden_dropout_prob", "attention_probs_dropout_prob")}


@dataclasses.dataclass
class Config(opt.Config):
    scale_embedding: bool = True
    learned_positions: bool = False  # BioGPT: a learned table (`embed_positions`), not XGLM's sinusoids
    classifier_dropout: float = 0.1  # on a token classifier's input

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        model_type = hf.get("model_type", "xglm")
        if model_type not in HF_KEYS:
            raise ValueError(f"model_type={model_type!r} is not XGLM-like; jsoft.models.xglm reads {list(HF_KEYS)}")
        width, heads_key, layers, ffn, act_key, dropout, attn_dropout = HF_KEYS[model_type]
        d, h = hf[width], hf[heads_key]
        if d % h:
            raise ValueError(f"config.json {width}={d} is not a multiple of {heads_key}={h}")
        act = hf.get(act_key, "gelu")
        activation(act)  # fail early on an unsupported activation
        return cls(
            model_type=model_type, vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf[layers], num_heads=h,
            num_kv_heads=h, head_dim=d // h, pad_token_id=hf.get("pad_token_id", 1),
            eos_token_id=hf.get("eos_token_id", 2), bos_token_id=hf.get("bos_token_id", 0), ffn_dim=hf[ffn],
            word_embed_proj_dim=d, max_position_embeddings=hf.get("max_position_embeddings", 2048),
            activation_function=act, dropout=hf.get(dropout, 0.1), attention_dropout=hf.get(attn_dropout, 0.1),
            tie_word_embeddings=hf.get("tie_word_embeddings", True) is not False,
            scale_embedding=hf.get("scale_embedding", True) is not False, learned_positions=model_type == "biogpt",
            classifier_dropout=heads.classifier_dropout_rate(hf, dropout),
        )


class XGLMModel(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c, self.dtype = c, p.dtype
        self.embed_tokens = embed(c.vocab_size, c.hidden_size, p, rngs=rngs,
                                  scale=c.hidden_size ** 0.5 if c.scale_embedding else 1.0)
        if c.learned_positions:
            self.embed_positions = embed(c.max_position_embeddings + FIRST_ROW, c.hidden_size, p, rngs=rngs,
                                         names=(None, "embed"))
        self.layers = nnx.List([opt.Layer(c, p, rngs) for _ in range(c.num_layers)])
        self.layer_norm = LayerNorm(c.hidden_size, 1e-5, p)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                 prefix_kv=None, prefix_mask=None, cache: KVCache | None = None, drop=None):
        c, drop = self.c, drop or DropoutRng(None)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        B, T = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = default_positions(B, T, prefix_kv, cache, c)
        if c.learned_positions:
            positions = self.embed_positions(position_ids + FIRST_ROW)
        else:
            positions = bart.sinusoid_rows(position_ids + FIRST_ROW, c.hidden_size, zero_row=c.pad_token_id)
        x = drop((inputs_embeds + positions.astype(inputs_embeds.dtype)).astype(self.dtype), c.dropout)
        S = T if cache is None else cache.slots
        mask = attention_mask_4d(attention_mask, T, S, causal=True, q_offset=0 if cache is None else cache.index)
        x, cache = run_layers(self.layers, x, mask, cache=cache, prefix_kv=prefix_kv, prefix_mask=prefix_mask,
                              drop=drop)
        return self.layer_norm(x).astype(self.dtype), cache


class XGLM(heads.DecoderOnlyLM):
    """XGLM (or BioGPT: its stack under `biogpt`) with the head for `task` (None, causal_lm; BioGPT: seq_cls and
    token_cls too)."""

    stack_name = "model"  # transformers' attribute for the stack

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        setattr(self, self.stack_name, XGLMModel(c, p, rngs))
        self.add_heads(c, task, num_labels, p, rngs)

    @property
    def decoder(self) -> XGLMModel:
        return getattr(self, self.stack_name)

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.decoder.embed_tokens


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> XGLM:
    return XGLM(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]
