"""ELECTRA (the discriminators electra-small / base / large): BERT's encoder under the name `electra`, whose
embeddings may be narrower than the layers (`embedding_size`, projected up by `embeddings_project`), and for
seq_cls RoBERTa's two-layer head with GELU in place of tanh.

Module tree mirrors transformers' (`electra.embeddings_project`, `electra.encoder.layer.0.attention.self.query`,
`classifier.dense`, `classifier.out_proj`) so checkpoint names map one to one. transformers' ELECTRA takes
`past_key_values` as BERT does, so every PEFT method runs on it (a prefix counts as past length)."""

from __future__ import annotations

import dataclasses

from flax import nnx

from jsoft.models import bert, roberta
from jsoft.models.base import hf_name, is_kernel
from jsoft.models.layers import Precision, dense

TASKS = (None, "seq_cls", "token_cls")
BASE_PREFIX = "electra"


@dataclasses.dataclass
class Config(bert.Config):
    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        c = super().from_hf({**hf, "model_type": "bert"})
        c.model_type = "electra"
        c.embedding_size = hf.get("embedding_size") or c.hidden_size
        return c


class ElectraModel(bert.BertModel):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        super().__init__(c, p, rngs, add_pooling_layer=False)
        if c.embedding_size != c.hidden_size:
            self.embeddings_project = dense(c.embedding_size, c.hidden_size, (None, "embed"), p, rngs=rngs)


class Electra(roberta.Roberta):
    """ELECTRA with the head for `task` (None, seq_cls, token_cls)."""

    base_prefix = BASE_PREFIX
    activation = "gelu"  # transformers' ElectraClassificationHead

    @staticmethod
    def build_base(c: Config, p: Precision, rngs: nnx.Rngs) -> nnx.Module:
        return ElectraModel(c, p, rngs)


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> Electra:
    return Electra(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    return hf_name(path), is_kernel(path)  # every kernel is a torch nn.Linear [out, in]
