"""ALBERT (albert-base / large / xlarge / xxlarge v1 and v2; the backbone of P-Tuning v1's few-shot SuperGLUE runs):
BERT's post-LayerNorm encoder with two savings. Embeddings are narrower than the layers (`embedding_size`, 128),
mapped up by `encoder.embedding_hidden_mapping_in`; and the layers share weights: `num_hidden_groups` groups of
`inner_group_num` layers, each group run for `num_hidden_layers / num_hidden_groups` consecutive steps (every
released checkpoint: one group of one layer, run `num_hidden_layers` times).

Module tree mirrors transformers' (`albert.encoder.albert_layer_groups.0.albert_layers.0.attention.query`,
`...ffn`, `...full_layer_layer_norm`, `albert.pooler`, `classifier`). A prefix (P-Tuning v2) is per layer call,
`num_hidden_layers * inner_group_num` of them, though the weights are shared; transformers' ALBERT takes no
`past_key_values`, so prefixes are jsoft's and PEFT runs only Prompt Tuning and P-Tuning on it (given `token_dim`,
the embedding width: PEFT derives the hidden size; jsoft derives the width and writes it into the adapters it
exports)."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jsoft.models import bert, heads
from jsoft.models.base import hf_name, is_kernel
from jsoft.models.layers import LayerNorm, Precision, activation, dense

TASKS = bert.TASKS
BASE_PREFIX = "albert"
# AlbertConfig's defaults where they differ from BertConfig's
HF_DEFAULTS = {"embedding_size": 128, "hidden_act": "gelu_new", "hidden_dropout_prob": 0.0,
               "attention_probs_dropout_prob": 0.0, "intermediate_size": 16384, "num_hidden_layers": 12,
               "num_attention_heads": 64, "hidden_size": 4096, "vocab_size": 30000, "pad_token_id": 0,
               "bos_token_id": 2, "eos_token_id": 3}


@dataclasses.dataclass
class Config(bert.Config):
    num_hidden_layers: int = 12  # layer steps; num_layers (attention calls, one prefix each) counts inner layers too
    num_hidden_groups: int = 1
    inner_group_num: int = 1

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        hf = {**HF_DEFAULTS, **hf}
        steps, groups, inner = hf["num_hidden_layers"], hf.get("num_hidden_groups", 1), hf.get("inner_group_num", 1)
        if not 1 <= groups <= steps:
            raise ValueError(f"ALBERT config num_hidden_groups={groups} must be between 1 and "
                             f"num_hidden_layers={steps}")
        c = bert.Config.from_hf({**hf, "model_type": "bert"})
        return cls(**{**dataclasses.asdict(c), "model_type": "albert", "embedding_size": hf["embedding_size"],
                      "num_layers": steps * inner, "num_hidden_layers": steps, "num_hidden_groups": groups,
                      "inner_group_num": inner,
                      "classifier_dropout": heads.classifier_dropout_rate(
                          {**hf, "classifier_dropout": hf.get("classifier_dropout_prob", 0.1)}, "hidden_dropout_prob")})

    def group_of(self, step: int) -> int:
        """transformers' AlbertTransformer: the group that runs layer step `step`."""
        return int(step / (self.num_hidden_layers / self.num_hidden_groups))


class Attention(bert.SelfAttention):
    """transformers' AlbertAttention: query, key, value, then LayerNorm(dropout(dense(out)) + residual)."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        super().__init__(c, p, rngs)
        self.dtype = p.dtype
        self.dense = dense(c.hidden_size, c.hidden_size, ("joined_kv", "embed"), p, rngs=rngs)
        self.LayerNorm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)

    def __call__(self, x, mask, **kw):
        rows = kw.get("rows")
        out = self.dense(super().__call__(x, mask, **kw))
        residual = x if rows is None else bert.take_rows(x, rows)
        return self.LayerNorm(kw["drop"](out, self.c.hidden_dropout) + residual).astype(self.dtype)


class Layer(nnx.Module):
    """transformers' AlbertLayer: attention, then LayerNorm(ffn_output(act(ffn(a))) + a), no dropout on the FFN."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.dtype = p.dtype
        self.act = activation(c.activation)
        self.attention = Attention(c, p, rngs)
        self.ffn = dense(c.hidden_size, c.inner_size, ("embed", "mlp"), p, rngs=rngs)
        self.ffn_output = dense(c.inner_size, c.hidden_size, ("mlp", "embed"), p, rngs=rngs)
        self.full_layer_layer_norm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)

    def __call__(self, x, mask, **kw):
        a = self.attention(x, mask, **kw)
        return self.full_layer_layer_norm(self.ffn_output(self.act(self.ffn(a))) + a).astype(self.dtype)


class LayerGroup(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.albert_layers = nnx.List([Layer(c, p, rngs) for _ in range(c.inner_group_num)])

    def __call__(self, x, mask, *, layer: int, rows=None, **kw):
        """Layer step `layer`: its inner layers take prefixes `layer * inner_group_num + j`; `rows` reach the
        last inner layer only."""
        last = len(self.albert_layers) - 1
        for j, inner in enumerate(self.albert_layers):
            x = inner(x, mask, layer=layer * len(self.albert_layers) + j,
                      **({"rows": rows} if j == last and rows is not None else {}), **kw)
        return x


class Transformer(nnx.Module):
    """transformers' AlbertTransformer: the embeddings mapped to the hidden size, then `num_hidden_layers` steps
    through the shared groups."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.embedding_hidden_mapping_in = dense(c.embedding_size, c.hidden_size, (None, "embed"), p, rngs=rngs)
        self.albert_layer_groups = nnx.List([LayerGroup(c, p, rngs) for _ in range(c.num_hidden_groups)])

    def __call__(self, x, mask, rows=None, **kw):
        """`rows [B, K]`: the last layer computes only those tokens' outputs (`[B, K, D]`)."""
        x = self.embedding_hidden_mapping_in(x)
        last = self.c.num_hidden_layers - 1
        for step in range(self.c.num_hidden_layers):
            x = self.albert_layer_groups[self.c.group_of(step)](
                x, mask, layer=step, **({"rows": rows} if step == last and rows is not None else {}), **kw)
        return x


class AlbertModel(bert.BertModel):
    encoder_class = Transformer  # the pooler's dense is transformers' `albert.pooler` (checkpoint_key)


class Albert(bert.Bert):
    base_prefix, model_class = BASE_PREFIX, AlbertModel
    peft_runs_prefix = False  # transformers' ALBERT takes no past_key_values


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> Albert:
    return Albert(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    name = hf_name(path)
    if name.startswith("albert.pooler.dense."):  # transformers' AlbertModel.pooler is the nn.Linear itself
        name = "albert.pooler." + name.removeprefix("albert.pooler.dense.")
    return name, is_kernel(path)
