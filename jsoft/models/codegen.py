"""CodeGen (Salesforce codegen-350M .. 16B, mono / multi / nl): GPT-J's parallel block, interleaved rotary
embeddings and LM head bias, with one fused `qkv_proj` laid out as transformers' four model-parallel shards: each
holds a quarter of the heads' queries, then values, then keys.

Module tree mirrors transformers' (`transformer.h.0.attn.qkv_proj`, `lm_head`)."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jsoft.models import gptj
from jsoft.models.layers import Precision, dense

TASKS = (None, "causal_lm")  # transformers has no CodeGen classifier
BASE_PREFIX = gptj.BASE_PREFIX
checkpoint_key = gptj.checkpoint_key
SHARDS = 4  # transformers' mp_num, fixed in its code


@dataclasses.dataclass
class Config(gptj.Config):
    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        if not hf.get("rotary_dim"):
            raise ValueError("config.json rotary_dim is required for CodeGen (transformers' attention fails without "
                             "it)")
        if hf["n_head"] % SHARDS:
            raise ValueError(f"config.json n_head={hf['n_head']} must be a multiple of {SHARDS}: CodeGen's qkv_proj "
                             f"is laid out in {SHARDS} shards of heads")
        return dataclasses.replace(super().from_hf(hf), model_type="codegen")


class Attention(gptj.Attention):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        d = c.hidden_size
        self.qkv_proj = dense(d, 3 * d, ("embed", "joined_kv"), p, bias=False, rngs=rngs)
        self.out_proj = dense(d, d, ("joined_kv", "embed"), p, bias=False, rngs=rngs)

    def project(self, x):
        B, T, _ = x.shape
        N, K = self.c.num_heads, self.c.head_dim
        qvk = self.qkv_proj(x).reshape(B, T, SHARDS, 3, N // SHARDS, K)
        q, v, k = (qvk[:, :, :, i].reshape(B, T, N, K) for i in range(3))
        return q, k, v


class Block(gptj.Block):
    attention_class = Attention


class CodeGenModel(gptj.GPTJModel):
    block = Block


class CodeGen(gptj.GPTJ):
    model_class = CodeGenModel


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> CodeGen:
    return CodeGen(c, task, num_labels, p, rngs)
