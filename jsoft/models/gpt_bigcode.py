"""GPT-BigCode (StarCoder / StarCoderBase, SantaCoder, WizardCoder, OctoCoder): GPT-2's stack with torch nn.Linear
weights and one key / value head for every query head (`multi_query`, the default), or GPT-2's one per head.

The fused `c_attn` is laid out in key / value groups (`layers.split_grouped_qkv`): all queries, then the one key and
value (multi-query), or each head's query, key and value. A prefix has as many key / value heads as the model's cache:
one under multi-query (PEFT derives one per head, which does not fit that cache; it runs the adapter jsoft saves).

Module tree mirrors transformers' (`transformer.h.0.attn.c_attn`, `score`, `classifier`)."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jsoft.models import gpt2
from jsoft.models.base import hf_name, is_kernel
from jsoft.models.layers import Precision, dense, split_grouped_qkv

TASKS = gpt2.TASKS
BASE_PREFIX = "transformer"


@dataclasses.dataclass
class Config(gpt2.Config):
    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        c = super().from_hf(hf)
        return dataclasses.replace(c, model_type="gpt_bigcode",
                                   num_kv_heads=1 if hf.get("multi_query", True) else c.num_heads)


class Attention(gpt2.Attention):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.c_attn = dense(c.hidden_size, c.hidden_size + 2 * c.kv_width, ("embed", "joined_kv"), p, rngs=rngs)
        self.c_proj = dense(c.hidden_size, c.hidden_size, ("joined_kv", "embed"), p, rngs=rngs)

    def project(self, x):
        return split_grouped_qkv(self.c_attn(x), self.c.num_kv_heads, self.c.head_dim)


class Block(gpt2.Block):
    attention_class = Attention


class GPTBigCodeModel(gpt2.GPT2Model):
    block = Block


class GPTBigCode(gpt2.GPT2):
    model_class = GPTBigCodeModel


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> GPTBigCode:
    return GPTBigCode(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]
